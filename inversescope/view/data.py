"""What the view reads of one run, lazily: a page reads the samples of one site (the Parquet
parts the sample manifest lists for it), filtered to the references it shows, and the labels of
those samples only. Nothing here loads every sample of a run; the small tables (results,
references) are read once and kept (a committed artifact never changes)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl

from inversescope.api import Run
from inversescope.core.sites import parse_site
from inversescope.scoring import KEY, with_accepted
from inversescope.storage import layout, tables
from inversescope.storage.files import Where
from inversescope.view.errors import Missing, Unreadable, first_line

T = TypeVar("T")


def guarded(what: str, workdir: Where, read: Callable[[], T]) -> T:
    """``read()``, with a file that cannot be read (corrupt, truncated, removed) said as one
    line naming ``what`` instead of a traceback."""
    try:
        return read()
    except (pl.exceptions.PolarsError, OSError) as e:
        raise Unreadable(
            f"Cannot read {what}",
            first_line(e),
            f"`inversescope verify {workdir}` names every corrupt file",
        ) from e


class RunData:
    """One complete run as the pages read it."""

    def __init__(self, run: Run):
        self.run = run
        self.key = run.key
        self.workdir = run.workdir
        self.config = run.config
        self.sites = run.sites
        self.epsilon = run.epsilon
        self.n_examples = run.config.sample.n_examples
        self.model_lock = threading.Lock()  # one sampling at a time on the run's models
        self.memo: dict[str, object] = {}  # drawn plots: they depend on committed files only
        self._sample_root = run.artifacts["sample"].path
        self._parts = layout.sample_parts(run.artifacts["sample"])

    @cached_property
    def features(self) -> list[str]:
        return self.run.features

    @cached_property
    def summary(self) -> dict:
        """When the run was made and its mean and worst refusal rate (the fcr manifest)."""
        manifest = self.run.artifacts["fcr"].manifest
        metrics = manifest.get("metrics", {})
        worst = metrics.get("refusal_rate_worst_site") or [None, None]
        return {
            "created": manifest.get("created", ""),
            "refusal_mean": metrics.get("refusal_rate_mean"),
            "worst_site": worst[0],
            "refusal_worst": worst[1],
        }

    # --- names in a URL ------------------------------------------------------------------
    def site(self, name: str) -> str:
        try:
            site = parse_site(name).name
        except ValueError as e:
            raise Missing("Unknown site", first_line(e)) from e
        if site not in self.sites:
            raise Missing(
                "Unknown site",
                f"site {name!r} was not sampled in this run; sampled: {_span(self.sites)}",
            )
        return site

    def feature(self, name: str) -> str:
        if name not in self.features:
            raise Missing(
                "Unknown feature",
                f"feature {name!r} is not a feature of this run; accepted: "
                + ", ".join(self.features),
            )
        return name

    def example(self, example: int) -> int:
        if not 0 <= example < self.n_examples:
            raise Missing(
                "Unknown example",
                f"example {example} was not sampled; this run's references are the test prompts "
                f"0 to {self.n_examples - 1}",
            )
        return example

    # --- small tables, read once ---------------------------------------------------------
    @cached_property
    def results(self) -> pl.DataFrame:
        path = layout.results_path(self.run.artifacts["fcr"])
        return guarded(f"the FCR table {path}", self.workdir, lambda: tables.read_parquet(path))

    @cached_property
    def references(self) -> pl.DataFrame:
        """The sampled references (example_id, text, one column per feature: their labels)."""
        prior = self.run.artifacts["prior"].path / "test.parquet"
        label = self.run.artifacts["label"].path / layout.REFERENCE

        def read() -> pl.DataFrame:
            texts = (
                tables.scan_parquet([prior])
                .select("id", "text")
                .filter(pl.col("id") < self.n_examples)
                .collect()
            )
            labels = tables.read_parquet(label).select("id", *self.features)
            joined = texts.join(labels, on="id", how="left")
            return joined.rename({"id": "example_id"}).sort("example_id")

        return guarded(f"the references ({prior}, {label})", self.workdir, read)

    def reference(self, example: int) -> dict:
        return self.references.row(self.example(example), named=True)

    def refusal(self, site: str) -> float | None:
        rows = self.results.filter(pl.col("site") == site)
        return float(rows["refusal_rate"][0]) if rows.height else None

    # --- samples, lazily -----------------------------------------------------------------
    def site_parts(self, site: str) -> list[Where]:
        return site_parts(self._sample_root, self._parts, site)

    def scan_samples(self, sites: Sequence[str] | None = None) -> pl.LazyFrame:
        """The samples (site, example_id, sample_idx, text, distance) of ``sites`` (default:
        every site), reading only those sites' parts."""
        if sites is None:
            paths = [self._sample_root / p for p in self._parts]
        else:
            paths = [p for s in sites for p in self.site_parts(s)]
        return tables.scan_parquet(paths)

    def scan_labels(self) -> pl.LazyFrame:
        return tables.scan_parquet([self.run.artifacts["label"].path / layout.LABELS])

    def distances(self, site: str) -> np.ndarray:
        """Every sample distance at ``site`` (NaN: an empty sample)."""
        lf = self.scan_samples([site]).select("distance")
        df = guarded(f"the samples of {site}", self.workdir, lf.collect)
        return df["distance"].cast(pl.Float64).fill_null(np.nan).to_numpy()

    def samples(self, site: str, examples: Sequence[int]) -> pl.DataFrame:
        """The samples of ``examples`` at ``site``, nearest first per reference, with labels,
        the reference's labels (``<feature>_ref``) and ``accepted``."""
        keep = pl.col("example_id").is_in(list(examples))
        lf = self.scan_samples([site]).filter(keep)
        df = guarded(f"the samples of {site}", self.workdir, lf.collect)
        df = self.with_labels(df)
        return df.sort("example_id", "distance", nulls_last=True)

    def with_labels(self, df: pl.DataFrame) -> pl.DataFrame:
        """``df`` (samples) with their labels, their references' labels and ``accepted``."""
        return attach_labels(
            df, self.scan_labels(), self.references, self.features, self.epsilon, self.workdir
        )

    # --- the reference as the target read it ---------------------------------------------
    @cached_property
    def rendered(self) -> bool:
        """Whether the target reads a rendering of the text (refusal: a chat template), so the
        read token lies after the text."""
        from inversescope.tasks import load_task

        return getattr(load_task(self.config.task), "render", None) is not None

    @cached_property
    def _tokenizer(self):
        from tokenizers import Tokenizer  # the fast tokenizer alone: no transformers import

        record = layout.target_record(self.run.artifacts["target"])
        root = {
            "train": self.run.artifacts["target"].path / layout.TOKENIZER_DIR,
            "local": Path(record.get("path") or "."),
        }.get(record["source"])
        try:
            if root is None:
                return None
            return Tokenizer.from_str((root / "tokenizer.json").read_text(encoding="utf-8"))
        except Exception:  # any tokenizer that does not load: mark the last word instead
            return None

    def read_token(self, text: str) -> tuple[str, str, str]:
        """``text`` cut around the token the site was read at (the last one): (before, token,
        after). The target's tokenizer splits it where it can be loaded here; else the last
        word stands in. A rendered task reads after the text: (text, '', '')."""
        if self.rendered or not text:
            return text, "", ""
        tok = self._tokenizer
        if tok is not None:
            offsets = [o for o in tok.encode(text, add_special_tokens=False).offsets if o[1] > o[0]]
            if offsets:
                start, end = offsets[-1]
                while start < end and text[start].isspace():
                    start += 1
                return text[:start], text[start:end], text[end:]
        cut = len(text.rstrip()) - len(text.rstrip().split()[-1]) if text.strip() else 0
        return text[:cut], text[cut:].rstrip(), text[len(text.rstrip()) :]

    def plain_features(self, texts: list[str]) -> dict[str, list[str | None]]:
        """The run's single-text features on ``texts`` (batch features need the labeller)."""
        from inversescope.tasks.features import apply_feature, resolve_features

        specs = resolve_features(self.config.task, self.config.features)
        return {n: apply_feature(s.load(), texts)[0] for n, s in specs.items() if not s.batched}


def attach_labels(
    df: pl.DataFrame,
    labels: pl.LazyFrame | None,
    references: pl.DataFrame,
    features: list[str],
    epsilon: float,
    workdir: Where,
) -> pl.DataFrame:
    """Samples with their labels (read for their keys only), the references' labels as
    ``<feature>_ref`` and ``accepted``. Without ``labels`` the label columns are null."""
    if labels is not None and df.height:
        sites = df["site"].unique().to_list()
        examples = df["example_id"].unique().to_list()
        lf = labels.select(*KEY, *features).filter(
            pl.col("site").is_in(sites) & pl.col("example_id").is_in(examples)
        )
        got = guarded("the labels", workdir, lf.collect)
        df = df.join(got, on=KEY, how="left", maintain_order="left")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias(f) for f in features)
    refs = references.select(
        "example_id", *(pl.col(f).alias(f"{f}_ref") for f in features if f in references.columns)
    )
    df = df.join(refs, on="example_id", how="left", maintain_order="left")
    return with_accepted(df, epsilon)


def site_parts(root: Where, parts: list[str], site: str) -> list[Where]:
    """The Parquet parts of a sample artifact (rooted at ``root``, listing ``parts``) that hold
    ``site``'s samples."""
    prefix = f"{layout.SAMPLES_DIR}/{site}/"
    return [root / p for p in parts if p.startswith(prefix)]


def _span(names: list[str], limit: int = 8) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:3])}, …, {', '.join(names[-2:])} ({len(names)} sites)"
