"""Stage ``label``: every feature function on every sample and every test prompt.

Cached per feature (``inversescope.labelling``, the cache the Python API shares): a feature's
labels are keyed by its name, its code (the content of its module file) and the sample and
prior keys, and kept under ``<workdir>/label/features/``, so editing one feature's file
relabels that feature only; the stage's own artifact then reassembles them. A function that
raises gives a null label; the stage fails only when a feature errs on more than
``label.max_error_share`` of its inputs, showing the first traceback. A task's batch features
(``fn(texts, context)``) see the prior's rows, the task's data files and the configured labeller;
the labeller's answers persist in ``<workdir>/label/labeller.sqlite``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from inversescope import labelling
from inversescope.storage import layout
from inversescope.tasks.features import FeatureSpec, resolve_features

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext

log = logging.getLogger(__name__)

NAME = "label"
INPUTS: tuple[str, ...] = labelling.LABEL_INPUTS
RESUMABLE = False
# the labeller (batch features with a labeller model) loads these when it is first asked
CODE: tuple[str, ...] = ("inversescope.core.labeller", "inversescope.storage.label_cache")


def _specs(run: RunConfig) -> dict[str, FeatureSpec]:
    return resolve_features(run.task, run.features, has_labeller=run.labeller is not None)


def config_of(run: RunConfig) -> dict[str, Any]:
    features = {n: labelling.spec_feature(s, run) for n, s in sorted(_specs(run).items())}
    return {
        "features": {n: f.identity for n, f in features.items()},
        **run.label.model_dump(mode="json"),
    }


def build(ctx: StageContext) -> dict[str, Any]:
    run, inputs = ctx.run, ctx.inputs
    samples = layout.read_samples(inputs["sample"])
    samples = samples.select("site", "example_id", "sample_idx", "text")
    references = layout.read_split(inputs["prior"], "test").select("id", "text")
    texts = labelling.run_texts(samples, references)
    input_keys = {k: inputs[k].key for k in INPUTS}
    get_context = labelling.feature_context_once(
        run, inputs["prior"], inputs["target"], ctx.workdir
    )
    per_feature, tables = {}, {}
    for name, spec in sorted(_specs(run).items()):
        feature = labelling.spec_feature(spec, run)
        labels, info = labelling.label_texts(
            ctx.workdir, feature, texts, input_keys, run.label.max_error_share, get_context
        )
        tables[name] = labels
        info["defined_share"] = float(labels["label"].is_not_null().mean())
        per_feature[name] = info
        log.info(
            "label: %s %s (errors %d)",
            name,
            "reused" if info["reused"] else "computed",
            info["errors"],
        )
    layout.write_labels(ctx.out, *labelling.label_table(samples, references, texts, tables))
    return {"features": per_feature, "feature_names": sorted(tables)}
