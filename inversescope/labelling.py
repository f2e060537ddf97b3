"""Feature labels of a run's texts, cached per feature: one implementation, called by stage
``label`` and by the Python API (``Run.score``), so a feature labelled in a notebook lands in
the same cache the pipeline reads, and the reverse.

A feature's labels over every text (the samples' and the references') are keyed by (its name,
what identifies its code, the keys of the prior, target and sample artifacts, and this
module's source) and kept under ``<workdir>/label/features/``. What identifies the code: for a
function named in the run config, its module file's content; for a function handed to the API
(a notebook cell), its own source text, so redefining it relabels.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import marshal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from inversescope.errors import FeatureError
from inversescope.storage import layout
from inversescope.storage.files import Where
from inversescope.storage.keys import code_hash, file_fingerprint, source_fingerprint, stage_key
from inversescope.storage.tables import read_parquet, write_parquet_atomic
from inversescope.tasks.features import (
    FeatureSpec,
    apply_feature,
    canonical_label,
    describe_error,
    first_failure,
)

if TYPE_CHECKING:
    from inversescope.config import RunConfig
    from inversescope.storage.artifacts import Artifact
    from inversescope.tasks.features import FeatureContext

log = logging.getLogger(__name__)

LABEL_INPUTS: tuple[str, ...] = ("prior", "target", "sample")
"""The artifacts whose keys a feature's labels are keyed by."""


@dataclass(frozen=True)
class Feature:
    """A feature ready to label: its name, its function, what identifies it in the cache key,
    and whether it is a batch feature ``fn(texts, context)``."""

    name: str
    fn: Callable
    identity: dict[str, Any]
    batched: bool = False

    @property
    def entry(self) -> str:
        return self.identity["entry"]


def spec_feature(spec: FeatureSpec, run: RunConfig) -> Feature:
    """A feature named in the run config (built-in or the user's module), loaded."""
    identity: dict[str, Any] = {"entry": spec.entry, "source": file_fingerprint(spec.source_file())}
    if spec.batched:
        lab = run.labeller
        identity["labeller"] = None if lab is None else lab.model_dump(mode="json")
        if lab is not None and lab.source == "local":
            identity["labeller"]["content"] = source_fingerprint(lab)["content"]
    return Feature(spec.name, spec.load(), identity, spec.batched)


def function_feature(fn: Callable, name: str | None = None) -> Feature:
    """A plain function of one text (defined anywhere, a notebook cell included), identified by
    its source text (or, without one, its compiled code)."""
    if not callable(fn):
        raise TypeError(f"a feature is a function of one text, got {type(fn).__name__}")
    try:
        body = inspect.getsource(fn).encode()
    except (OSError, TypeError):  # no source file (exec, some REPLs): the compiled code
        code = getattr(fn, "__code__", None)
        body = marshal.dumps(code) if code is not None else repr(fn).encode()
    qualname = getattr(fn, "__qualname__", type(fn).__name__)
    identity = {
        "entry": f"{getattr(fn, '__module__', None)}:{qualname}",
        "source": hashlib.sha256(body).hexdigest(),
    }
    return Feature(name or getattr(fn, "__name__", qualname), fn, identity)


def feature_key(feature: Feature, input_keys: dict[str, str]) -> str:
    return stage_key(
        "label-feature", {"name": feature.name, **feature.identity}, input_keys,
        code_hash((__name__,)),
    )  # fmt: skip


def cache_path(workdir: Where, feature: Feature, input_keys: dict[str, str]) -> Where:
    key = feature_key(feature, input_keys)
    return layout.feature_cache_dir(workdir) / f"{feature.name}-{key}.parquet"


def cached(workdir: Where, feature: Feature, input_keys: dict[str, str]) -> bool:
    return cache_path(workdir, feature, input_keys).exists()


def label_texts(
    workdir: Where,
    feature: Feature,
    texts: list[str],
    input_keys: dict[str, str],
    max_error_share: float,
    context: Callable[[], FeatureContext] | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """(text, label) for every text, from the cache or computed and cached; and what happened
    (``reused``, ``errors``). ``FeatureError`` (one line, the traceback in the log) when the
    feature fails on more than ``max_error_share`` of the texts; nothing is cached then."""
    path = cache_path(workdir, feature, input_keys)
    if path.exists():
        labels = read_parquet(path)
        return labels.select("text", "label"), {
            "reused": True,
            **labels.select(pl.col("errors").first()).row(0, named=True),
        }
    if feature.batched:
        assert context is not None, "a batch feature needs the run's context"
        values, errors = _apply_batch(feature, texts, context()), 0
    else:
        values, errors, first = apply_feature(feature.fn, texts)
        share = errors / len(texts) if texts else 0.0
        if errors:
            assert first is not None
            log.warning(
                "label: feature %s failed on %d of %d inputs; first, on %r:\n%s",
                feature.name, errors, len(texts), first[0], first[2],
            )  # fmt: skip
        if share > max_error_share:
            assert first is not None
            raise FeatureError(
                f"feature {feature.name!r} ({feature.entry}) failed on {errors} of {len(texts)} "
                f"inputs ({share:.1%} > label.max_error_share={max_error_share}); "
                f"{first_failure(first)}; labels computed so far are kept"
            )
    labels = pl.DataFrame(
        {"text": texts, "label": values, "errors": [errors] * len(texts)},
        schema={"text": pl.String, "label": pl.String, "errors": pl.Int64},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(labels, path)
    return labels.select("text", "label"), {"reused": False, "errors": errors}


def _apply_batch(feature: Feature, texts: list[str], context) -> list[str | None]:
    try:
        values = feature.fn(texts, context)
        if len(values) != len(texts):
            raise ValueError(f"returned {len(values)} labels for {len(texts)} inputs")
        return [canonical_label(v) for v in values]
    except Exception as e:
        log.error("label: feature %s failed:\n%s", feature.name, traceback.format_exc())
        raise FeatureError(
            f"feature {feature.name!r} ({feature.entry}) {describe_error(e)}; labels computed so "
            "far are kept (traceback in the log above)"
        ) from e


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


def feature_context(run: RunConfig, prior: Artifact, target: Artifact, workdir: Where):
    """What a batch feature sees: the prior's rows, the task's data files, the labeller."""
    from inversescope.tasks import resolve_data_file
    from inversescope.tasks.features import FeatureContext

    rows = pl.concat([layout.read_split(prior, s) for s in layout.SPLITS], how="diagonal")
    return FeatureContext(
        files=tuple(resolve_data_file(f) for f in run.prior.files),
        prior={r["text"]: r for r in rows.iter_rows(named=True)},
        labeller=labeller_factory(run, target, layout.labeller_cache_path(workdir)),
    )


def feature_context_once(
    run: RunConfig, prior: Artifact, target: Artifact, workdir: Where
) -> Callable[[], FeatureContext]:
    """``feature_context``, built on the first call (the first batch feature that needs it)."""
    built: list[FeatureContext] = []

    def get() -> FeatureContext:
        if not built:
            built.append(feature_context(run, prior, target, workdir))
        return built[0]

    return get


def run_texts(samples: pl.DataFrame, references: pl.DataFrame) -> list[str]:
    """Every distinct text a run labels (samples and references), in the order the cache keeps."""
    return sorted(set(samples["text"].to_list()) | set(references["text"].to_list()))


def label_table(
    samples: pl.DataFrame,
    references: pl.DataFrame,
    texts: list[str],
    per_feature: dict[str, pl.DataFrame],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(sample labels keyed by site, example_id, sample_idx; reference labels keyed by id),
    one column per feature, from each feature's (text, label) table over ``texts``."""
    table = pl.DataFrame({"text": texts}, schema={"text": pl.String})
    for name, labels in sorted(per_feature.items()):
        table = table.join(
            labels.select("text", pl.col("label").alias(name)), on="text", how="left"
        )
    return (
        samples.join(table, on="text", how="left", maintain_order="left").drop("text"),
        references.join(table, on="text", how="left", maintain_order="left").drop("text"),
    )
