"""Stage ``hypotheses``: every candidate feature (``tasks.candidates``: tokens around the read
position and at the start, the length, the task's prompt slots, the run's own features) scored
on every site and ranked against chance with Benjamini-Hochberg q-values
(``core.hypotheses``). Samples are weighted as the fcr stage weighs them, so a run feature's
FCR is the fcr stage's. ``hypotheses.parquet`` has one row per (site, candidate); its schema is
documented in README.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from inversescope.core import hypotheses
from inversescope.core.fcr import kernel_weights
from inversescope.core.sites import parse_site
from inversescope.storage import layout
from inversescope.storage.queries import top_hypotheses
from inversescope.tasks import candidates, resolve_data_file, task_renderer
from inversescope.tasks.features import FeatureContext

if TYPE_CHECKING:
    from pathlib import Path

    from inversescope.config import RunConfig
    from inversescope.flows.stage import StageContext
    from inversescope.storage.artifacts import Artifact

log = logging.getLogger(__name__)

NAME = "hypotheses"
INPUTS: tuple[str, ...] = ("prior", "target", "sample", "label", "fcr")
RESUMABLE = False
CODE: tuple[str, ...] = ("inversescope.core.models",)  # layout.load_target_tokenizer runs it


def config_of(run: RunConfig) -> dict[str, Any]:
    return {
        "preset": run.preset,
        "task": run.task,
        "method": run.controls.method,
        "seed": run.seed,
        "epsilon": run.kernel.epsilon,
        "fcr": run.fcr.model_dump(mode="json"),
        "hypotheses": run.hypotheses.model_dump(mode="json"),
        "candidates": candidates.definitions(run.task),
    }


def extra_code(run: RunConfig) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    """The task's slot declaration, imported by name: its source is part of the key."""
    return (candidates.slots_module_name(run.task),), ()


def _context(run: RunConfig, prior: Artifact) -> FeatureContext:
    files = tuple(resolve_data_file(f) for f in run.prior.files)
    if not candidates.needs_prior(run.task):
        return FeatureContext(files=files)
    rows = pl.concat([layout.read_split(prior, s) for s in layout.SPLITS])
    return FeatureContext(files=files, prior={r["text"]: r for r in rows.iter_rows(named=True)})


@dataclass(frozen=True)
class Prepared:
    """What the scoring reads: each site's samples, the label codes of every distinct text
    (candidates x texts), the candidates and the pool's texts (the prior's test prompts)."""

    sites: dict[str, hypotheses.SiteSamples]
    codes: np.ndarray
    candidates: list[candidates.Candidate]
    pool: np.ndarray


def prepare(run: RunConfig, inputs: dict[str, Artifact]) -> Prepared:
    """Read the inputs and label every distinct text (samples and references) once."""
    features = inputs["label"].manifest["metrics"]["feature_names"]
    labels, reference = layout.read_labels(inputs["label"])
    keys = ["site", "example_id", "sample_idx"]
    samples = layout.read_samples(inputs["sample"]).select(*keys, "text", "distance")
    rows = samples.join(labels, on=keys, how="left").sort(keys)  # the fcr stage's order
    refs = layout.read_split(inputs["prior"], "test").select("id", "text")
    refs = refs.join(reference, on="id", how="left", maintain_order="left")
    # every distinct text once, with the run's features (a label is a function of the text)
    texts = pl.concat([rows.select("text", *features), refs.select("text", *features)])
    texts = texts.unique("text").sort("text")
    text_list = texts["text"].to_list()
    tokenizer = layout.load_target_tokenizer(inputs["target"])
    render = task_renderer(run.task, tokenizer, layout.target_prefix(inputs["target"]))
    labels_of = {f: texts[f].to_list() for f in features}
    labels_of |= candidates.slot_labels(run.task, text_list, _context(run, inputs["prior"]))
    labels_of |= candidates.token_labels(text_list, tokenizer, render)
    cands = candidates.candidates(run.task, features)
    row_of = {t: i for i, t in enumerate(text_list)}
    reference_of = {e: row_of[t] for e, t in refs.select("id", "text").iter_rows()}
    kept = pl.lit(True)  # fcr.references restricts the references, as in the fcr stage
    for feature, label in run.fcr.references.items():
        kept = kept & (pl.col(feature) == label)
    rows = rows.filter(pl.col("example_id").is_in(refs.filter(kept)["id"].implode()))
    sites = {}
    for site in sorted(rows["site"].unique(), key=lambda s: parse_site(s).sort_key):
        part = rows.filter(pl.col("site") == site)
        example = part["example_id"].to_list()
        sites[site] = hypotheses.SiteSamples(
            np.array(example, dtype=np.int64),
            kernel_weights(part["distance"].to_numpy(), run.kernel.epsilon, run.fcr.weighting),
            np.array([row_of[t] for t in part["text"]], dtype=np.int64),
            np.array([reference_of[e] for e in example], dtype=np.int64),
        )
    codes = hypotheses.encode_labels([labels_of[c.name] for c in cands])
    pool = np.array(list(reference_of.values()), dtype=np.int64)
    return Prepared(sites, codes, cands, pool)


def score(run: RunConfig, p: Prepared, sites=None) -> list[hypotheses.Hypothesis]:
    """Every candidate on every site (``sites``: other samples, e.g. the shuffled control)."""
    return hypotheses.score_run(
        p.sites if sites is None else sites,
        p.codes,
        [c.name for c in p.candidates],
        p.pool,
        run.hypotheses,
        run.fcr.n_bootstrap,
        run.fcr.ci_level,
        run.seed,
    )


def build(ctx: StageContext) -> dict[str, Any]:
    run = ctx.run
    prepared = prepare(run, ctx.inputs)
    family = {c.name: c.family for c in prepared.candidates}
    common = {"preset": run.preset, "task": run.task, "method": run.controls.method}
    common |= {"run_key": ctx.key, "weighting": run.fcr.weighting, "epsilon": run.kernel.epsilon}
    table = layout.write_hypotheses(
        ctx.out,
        [{**common, **h.to_row(), "family": family[h.candidate]} for h in score(run, prepared)],
    )
    passing = table.group_by("site", maintain_order=True).agg(pl.col("rank").count())
    log.info("hypotheses: %d pairs pass q < %s", table["rank"].count(), run.hypotheses.alpha)
    top = top_hypotheses(table, 3).select("site", "rank", "candidate", "fcr", "chance", "q_value")
    return {
        "candidates": len(prepared.candidates),
        "pairs": table.height,
        "passing_per_site": dict(passing.iter_rows()),
        "top": top.to_dicts(),
    }
