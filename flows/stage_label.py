"""Stage ``label``: every feature function on every sample and every test prompt.

Cached per feature: a feature's labels are keyed by (its name, function, the content of its
module file, the sample and prior keys) and kept under ``<workdir>/label/features/``, so editing
one feature's file relabels that feature only; the stage's own artifact then reassembles them.
A function that raises gives a null label; the stage fails only when a feature errs on more than
``label.max_error_share`` of its inputs, showing the first traceback.
"""

from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from inversescope.flows.errors import StageError
from inversescope.flows.stage_prior import read_split
from inversescope.flows.stage_sample import read_samples
from inversescope.storage.artifacts import Artifact
from inversescope.storage.keys import code_hash, file_fingerprint, stage_key
from inversescope.storage.tables import write_parquet_atomic
from inversescope.tasks.features import FeatureSpec, canonical_label, resolve_features

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

log = logging.getLogger(__name__)

NAME = "label"
INPUTS: tuple[str, ...] = ("prior", "sample")
RESUMABLE = False
FEATURE_CACHE = "features"


def _feature_config(spec: FeatureSpec) -> dict[str, str]:
    return {"ref": spec.ref, "source": file_fingerprint(spec.source_file())}


def config_of(run: RunConfig) -> dict[str, Any]:
    specs = resolve_features(run.task, run.features)
    return {
        "features": {n: _feature_config(s) for n, s in sorted(specs.items())},
        **run.label.model_dump(mode="json"),
    }


def apply_feature(fn, texts: list[str]) -> tuple[list[str | None], int, str | None]:
    """(labels, number of inputs that raised, first traceback)."""
    labels: list[str | None] = []
    errors, first = 0, None
    for text in texts:
        try:
            labels.append(canonical_label(fn(text)))
        except Exception:  # a user's function may raise anything: count it, keep going
            errors += 1
            first = first or traceback.format_exc()
            labels.append(None)
    return labels, errors, first


def build(run: RunConfig, inputs: dict[str, Artifact], out: Path) -> dict[str, Any]:
    specs = resolve_features(run.task, run.features)
    samples = read_samples(inputs["sample"]).select("site", "example_id", "sample_idx", "text")
    refs = read_split(inputs["prior"], "test").select("id", "text")
    texts = sorted(set(samples["text"].to_list()) | set(refs["text"].to_list()))
    cache_dir = inputs["sample"].path.parents[1] / NAME / FEATURE_CACHE
    cache_dir.mkdir(parents=True, exist_ok=True)
    input_keys = {"sample": inputs["sample"].key, "prior": inputs["prior"].key}
    per_feature: dict[str, dict[str, Any]] = {}
    table = pl.DataFrame({"text": texts})
    for name, spec in sorted(specs.items()):
        fkey = stage_key(
            "label-feature",
            {"name": name, **_feature_config(spec)},
            input_keys,
            code_hash((__name__,)),
        )
        path = cache_dir / f"{name}-{fkey}.parquet"
        if path.exists():
            labels = pl.read_parquet(path)
            info = {"reused": True, **labels.select(pl.col("errors").first()).row(0, named=True)}
        else:
            values, errors, first = apply_feature(spec.load(), texts)
            share = errors / len(texts) if texts else 0.0
            if share > run.label.max_error_share:
                raise StageError(
                    f"feature {name!r} ({spec.ref}) raised on {errors} of {len(texts)} inputs "
                    f"({share:.1%} > label.max_error_share={run.label.max_error_share}); "
                    f"first error:\n{first}"
                )
            if errors:
                log.warning(
                    "label: feature %s raised on %d of %d inputs; first error:\n%s",
                    name,
                    errors,
                    len(texts),
                    first,
                )
            labels = pl.DataFrame(
                {"text": texts, "label": values, "errors": [errors] * len(texts)},
                schema={"text": pl.String, "label": pl.String, "errors": pl.Int64},
            )
            write_parquet_atomic(labels, path)
            info = {"reused": False, "errors": errors}
        labels = labels.select("text", pl.col("label").alias(name))
        table = table.join(labels, on="text", how="left")
        info["defined_share"] = float(labels[name].is_not_null().mean())
        per_feature[name] = info
        log.info(
            "label: %s %s (errors %d)",
            name,
            "reused" if info["reused"] else "computed",
            info["errors"],
        )
    features = sorted(specs)
    write_parquet_atomic(
        samples.join(table, on="text", how="left", maintain_order="left").drop("text"),
        out / "labels.parquet",
    )
    write_parquet_atomic(
        refs.join(table, on="text", how="left", maintain_order="left").drop("text"),
        out / "reference.parquet",
    )
    return {"features": per_feature, "feature_names": features}


def read_labels(artifact: Artifact) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(sample labels keyed by site, example_id, sample_idx; reference labels keyed by id)."""
    return (
        pl.read_parquet(artifact.path / "labels.parquet"),
        pl.read_parquet(artifact.path / "reference.parquet"),
    )
