"""Stage ``label``: every feature function on every sample and every test prompt.

Cached per feature: a feature's labels are keyed by (its name, function, the content of its
module file, the sample and prior keys) and kept under ``<workdir>/label/features/``, so editing
one feature's file relabels that feature only; the stage's own artifact then reassembles them.
A function that raises gives a null label; the stage fails only when a feature errs on more than
``label.max_error_share`` of its inputs, showing the first traceback. A task's batch features
(``fn(texts, context)``) see the prior's rows, the task's data files and the configured labeller;
the labeller's answers persist in ``<workdir>/label/labeller.sqlite``.
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
from inversescope.tasks.features import (
    FeatureContext,
    FeatureSpec,
    canonical_label,
    resolve_features,
)

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig

log = logging.getLogger(__name__)

NAME = "label"
INPUTS: tuple[str, ...] = ("prior", "target", "sample")
RESUMABLE = False
FEATURE_CACHE = "features"
LABELLER_CACHE = "labeller.sqlite"


def _feature_config(spec: FeatureSpec, run: RunConfig) -> dict[str, Any]:
    cfg: dict[str, Any] = {"ref": spec.ref, "source": file_fingerprint(spec.source_file())}
    if spec.batched:
        lab = run.labeller
        cfg["labeller"] = None if lab is None else lab.model_dump(mode="json")
        if lab is not None and lab.source == "local":
            assert lab.path is not None
            cfg["labeller"]["content"] = file_fingerprint(lab.path)
    return cfg


def _specs(run: RunConfig) -> dict[str, FeatureSpec]:
    return resolve_features(run.task, run.features, has_labeller=run.labeller is not None)


def config_of(run: RunConfig) -> dict[str, Any]:
    return {
        "features": {n: _feature_config(s, run) for n, s in sorted(_specs(run).items())},
        **run.label.model_dump(mode="json"),
    }


def labeller_factory(run: RunConfig, target: Artifact, cache_path: Path):
    """``(template, labels) -> texts -> labels`` over the configured labeller model (loaded on
    first use, answers memoised in SQLite), or None without a labeller."""
    lab = run.labeller
    if lab is None:
        return None
    from inversescope.core.labeller import LikelihoodLabeller
    from inversescope.core.models import load_model, load_tokenizer, pick_device, pick_dtype
    from inversescope.core.progress import Progress
    from inversescope.flows.stage_target import load_target
    from inversescope.storage.label_cache import SqliteCache

    device = pick_device(run.device)
    loaded: dict[str, Any] = {}

    def model():
        if not loaded:
            dtype = pick_dtype(run.dtype, device)
            if lab.source == "target":
                m, tok = load_target(target, device, dtype)
                loaded["id"] = f"target:{target.key}"
            elif lab.source == "local":
                assert lab.path is not None
                m, tok = load_model(lab.path, device=device, dtype=dtype), load_tokenizer(lab.path)
                loaded["id"] = f"local:{file_fingerprint(lab.path)}"
            else:
                assert lab.name is not None
                m = load_model(lab.name, lab.revision, device=device, dtype=dtype)
                tok = load_tokenizer(lab.name, lab.revision)
                loaded["id"] = f"hub:{lab.name}@{lab.revision}"
            loaded["model"], loaded["tok"] = m, tok
            loaded["cache"] = SqliteCache(cache_path)
        return loaded

    def factory(template: str, labels: list[str]):
        def label_many(texts: list[str]) -> list[str]:
            m = model()
            labeller = LikelihoodLabeller(
                m["model"], m["tok"], template, labels, m["id"], lab.batch_size, m["cache"]
            )
            todo = len({t for t in texts if labeller.key(t) not in labeller.cache})
            progress = Progress("label[labeller]", todo, "texts")
            return labeller.label_many(texts, on_progress=progress.update)

        return label_many

    return factory


def feature_context(run: RunConfig, inputs: dict[str, Artifact], cache_dir: Path):
    from inversescope.tasks import resolve_data_file

    rows = pl.concat([read_split(inputs["prior"], s) for s in ("train", "test")], how="diagonal")
    return FeatureContext(
        files=tuple(resolve_data_file(f) for f in run.prior.files),
        prior={r["text"]: r for r in rows.iter_rows(named=True)},
        labeller=labeller_factory(run, inputs["target"], cache_dir.parent / LABELLER_CACHE),
    )


def apply_batch_feature(spec: FeatureSpec, fn, texts: list[str], context) -> list[str | None]:
    try:
        values = fn(texts, context)
    except Exception as e:
        raise StageError(
            f"feature {spec.name!r} ({spec.ref}) raised; labels computed so far are kept:\n"
            f"{traceback.format_exc()}"
        ) from e
    if len(values) != len(texts):
        raise StageError(
            f"feature {spec.name!r} ({spec.ref}) returned {len(values)} labels for "
            f"{len(texts)} inputs"
        )
    return [canonical_label(v) for v in values]


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
    specs = _specs(run)
    samples = read_samples(inputs["sample"]).select("site", "example_id", "sample_idx", "text")
    refs = read_split(inputs["prior"], "test").select("id", "text")
    texts = sorted(set(samples["text"].to_list()) | set(refs["text"].to_list()))
    cache_dir = inputs["sample"].path.parents[1] / NAME / FEATURE_CACHE
    cache_dir.mkdir(parents=True, exist_ok=True)
    input_keys = {k: inputs[k].key for k in INPUTS}
    context = None
    per_feature: dict[str, dict[str, Any]] = {}
    table = pl.DataFrame({"text": texts})
    for name, spec in sorted(specs.items()):
        fkey = stage_key(
            "label-feature",
            {"name": name, **_feature_config(spec, run)},
            input_keys,
            code_hash((__name__,)),
        )
        path = cache_dir / f"{name}-{fkey}.parquet"
        if path.exists():
            labels = pl.read_parquet(path)
            info = {"reused": True, **labels.select(pl.col("errors").first()).row(0, named=True)}
        else:
            if spec.batched:
                context = context or feature_context(run, inputs, cache_dir)
                values, errors = apply_batch_feature(spec, spec.load(), texts, context), 0
            else:
                values, errors, first = apply_feature(spec.load(), texts)
                share = errors / len(texts) if texts else 0.0
                if share > run.label.max_error_share:
                    raise StageError(
                        f"feature {name!r} ({spec.ref}) raised on {errors} of {len(texts)} "
                        f"inputs ({share:.1%} > label.max_error_share="
                        f"{run.label.max_error_share}); first error:\n{first}"
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
