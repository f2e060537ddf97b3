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

from inversescope.flows.errors import FeatureError
from inversescope.storage import layout
from inversescope.storage.keys import code_hash, file_fingerprint, source_fingerprint, stage_key
from inversescope.storage.tables import write_parquet_atomic
from inversescope.tasks import resolve_data_file
from inversescope.tasks.features import (
    FeatureContext,
    FeatureSpec,
    apply_feature,
    canonical_label,
    describe_error,
    first_failure,
    resolve_features,
)

if TYPE_CHECKING:
    from inversescope.flows.config import RunConfig
    from inversescope.flows.stage import StageContext
    from inversescope.storage.artifacts import Artifact

log = logging.getLogger(__name__)

NAME = "label"
INPUTS: tuple[str, ...] = ("prior", "target", "sample")
RESUMABLE = False


def _feature_config(spec: FeatureSpec, run: RunConfig) -> dict[str, Any]:
    cfg: dict[str, Any] = {"entry": spec.entry, "source": file_fingerprint(spec.source_file())}
    if spec.batched:
        lab = run.labeller
        cfg["labeller"] = None if lab is None else lab.model_dump(mode="json")
        if lab is not None and lab.source == "local":
            cfg["labeller"]["content"] = source_fingerprint(lab)["content"]
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
    # torch and transformers deferred: runs without a labeller never import them here
    from inversescope.core.labeller import LikelihoodLabeller
    from inversescope.core.models import pick_device, pick_dtype
    from inversescope.core.progress import Progress
    from inversescope.storage.label_cache import SqliteCache

    device = pick_device(run.device)
    loaded: dict[str, Any] = {}

    def model():
        if not loaded:
            dtype = pick_dtype(run.dtype, device)
            if lab.source == "target":
                m, tok = layout.load_target(target, device, dtype)
                loaded["id"] = f"target:{target.key}"
            else:
                m, tok = lab.load(device, dtype)
                where = source_fingerprint(lab)
                loaded["id"] = (
                    f"local:{where['content']}"
                    if lab.source == "local"
                    else f"hub:{lab.name}@{lab.revision}"
                )
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


def feature_context(ctx: StageContext) -> FeatureContext:
    prior = ctx.inputs["prior"]
    rows = pl.concat([layout.read_split(prior, s) for s in layout.SPLITS], how="diagonal")
    return FeatureContext(
        files=tuple(resolve_data_file(f) for f in ctx.run.prior.files),
        prior={r["text"]: r for r in rows.iter_rows(named=True)},
        labeller=labeller_factory(
            ctx.run, ctx.inputs["target"], layout.labeller_cache_path(ctx.workdir)
        ),
    )


def apply_batch_feature(spec: FeatureSpec, fn, texts: list[str], context) -> list[str | None]:
    try:
        values = fn(texts, context)
        if len(values) != len(texts):
            raise ValueError(f"returned {len(values)} labels for {len(texts)} inputs")
        return [canonical_label(v) for v in values]
    except Exception as e:
        log.error("label: feature %s failed:\n%s", spec.name, traceback.format_exc())
        raise FeatureError(
            f"feature {spec.name!r} ({spec.entry}) {describe_error(e)}; labels computed so far are "
            "kept (traceback in the log above)"
        ) from e


def build(ctx: StageContext) -> dict[str, Any]:
    run, inputs = ctx.run, ctx.inputs
    specs = _specs(run)
    samples = layout.read_samples(inputs["sample"])
    samples = samples.select("site", "example_id", "sample_idx", "text")
    references = layout.read_split(inputs["prior"], "test").select("id", "text")
    texts = sorted(set(samples["text"].to_list()) | set(references["text"].to_list()))
    cache_dir = layout.feature_cache_dir(ctx.workdir)
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
                context = context or feature_context(ctx)
                values, errors = apply_batch_feature(spec, spec.load(), texts, context), 0
            else:
                values, errors, first = apply_feature(spec.load(), texts)
                share = errors / len(texts) if texts else 0.0
                if errors:
                    assert first is not None
                    log.warning(
                        "label: feature %s failed on %d of %d inputs; first, on %r:\n%s",
                        name,
                        errors,
                        len(texts),
                        first[0],
                        first[2],
                    )
                if share > run.label.max_error_share:
                    assert first is not None
                    raise FeatureError(
                        f"feature {name!r} ({spec.entry}) failed on {errors} of {len(texts)} "
                        f"inputs ({share:.1%} > label.max_error_share="
                        f"{run.label.max_error_share}); {first_failure(first)}; labels computed "
                        "so far are kept"
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
    layout.write_labels(
        ctx.out,
        samples.join(table, on="text", how="left", maintain_order="left").drop("text"),
        references.join(table, on="text", how="left", maintain_order="left").drop("text"),
    )
    return {"features": per_feature, "feature_names": sorted(specs)}
