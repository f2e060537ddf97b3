"""The Python API: open a workdir's run, read its results and samples, score a feature of your
own, and sample inputs for any activation. No Prefect server starts for any of it: artifacts are
read through ``inversescope.storage`` and computed through ``inversescope.core``, with the same
label cache and FCR code as the ``label`` and ``fcr`` stages.

    import inversescope as isc
    run = isc.open("runs")                        # the latest complete run
    run.results()                                 # the FCR table (polars)
    run.samples("L0H1", example=3)                # samples with distance, accepted, labels
    run.score(lambda t: t.split()[1])             # a new hypothesis, scored like the pipeline
    run.sample("When Mary and John went to", "L0H1", n=32)
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from inversescope import labelling, scoring
from inversescope.config import RunConfig
from inversescope.core.sites import parse_site
from inversescope.storage import layout
from inversescope.storage.artifacts import Artifact, ArtifactStore
from inversescope.storage.files import Where, location
from inversescope.tasks.features import resolve_features

if TYPE_CHECKING:
    from inversescope.core.inversion import Inverter

MAX_SAMPLES = 4096
"""Most samples one ``Run.sample`` call draws."""
DEFAULT_EPSILONS = (0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5)
RUNS_SCHEMA = {
    "key": pl.String,
    "preset": pl.String,
    "task": pl.String,
    "method": pl.String,
    "seed": pl.Int64,
    "epsilon": pl.Float64,
    "created": pl.String,
    "refusal_mean": pl.Float64,
    "refusal_worst": pl.Float64,
    "worst_site": pl.String,
}


def _fcr_manifests(workdir: Where) -> list[dict[str, Any]]:
    """Every committed fcr artifact's manifest (a complete run), oldest first (one that is
    not committed, or corrupt, is left out: `inversescope verify` names it)."""
    found = [a.manifest for a in ArtifactStore(workdir).committed("fcr")]
    return sorted(found, key=lambda m: m.get("created", ""))


def runs(workdir: str | Path = "runs") -> pl.DataFrame:
    """One row per complete run in ``workdir``, oldest first: its key (of its fcr artifact),
    preset, task, method, seed, ε, when it was made, and its mean and worst refusal rate."""
    rows = []
    for m in _fcr_manifests(location(workdir)):
        run, metrics = m.get("run", {}), m.get("metrics", {})
        worst = metrics.get("refusal_rate_worst_site") or [None, None]
        rows.append(
            {
                "key": m["key"],
                "preset": run.get("preset"),
                "task": run.get("task"),
                "method": run.get("controls", {}).get("method"),
                "seed": run.get("seed"),
                "epsilon": run.get("kernel", {}).get("epsilon"),
                "created": m.get("created"),
                "refusal_mean": metrics.get("refusal_rate_mean"),
                "refusal_worst": worst[1],
                "worst_site": worst[0],
            }
        )
    return pl.DataFrame(rows, schema=RUNS_SCHEMA)


def open(workdir: str | Path = "runs", preset: str | None = None, key: str | None = None) -> Run:  # noqa: A001
    """The latest complete run of ``workdir`` (one whose fcr stage committed), or the latest of
    ``preset``, or the run whose key starts with ``key``. ``workdir``: a directory or a bucket
    URL (``s3://bucket/prefix``)."""
    workdir = location(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"workdir {str(workdir)!r} does not exist or is no directory")
    found = _fcr_manifests(workdir)
    if not found:
        raise FileNotFoundError(
            f"no complete run under {str(workdir)!r} (no committed fcr artifact); run "
            "`inversescope run ioi-tiny` first"
        )
    if preset is not None:
        found = [m for m in found if m.get("run", {}).get("preset") == preset]
        if not found:
            raise ValueError(f"no complete run of preset {preset!r} under {str(workdir)!r}")
    if key is not None:
        found = [m for m in found if m["key"].startswith(key)]
        if len(found) != 1:
            keys = [m["key"] for m in _fcr_manifests(workdir)]
            raise ValueError(f"run key {key!r} matches {len(found)} runs; keys: {keys}")
    return Run(workdir, found[-1]["key"])


class Run:
    """One complete run: its config, its artifacts, and what can be computed from them."""

    def __init__(self, workdir: str | Path, key: str):
        self.workdir = location(workdir)
        self.key = key
        self.store = ArtifactStore(self.workdir)
        self.artifacts: dict[str, Artifact] = {}
        todo = [("fcr", key)]
        while todo:  # every artifact the run read, through the manifests' inputs
            stage, k = todo.pop()
            if stage not in self.artifacts:
                self.artifacts[stage] = self.store.require(stage, k)
                todo.extend(self.artifacts[stage].manifest["inputs"].items())
        self.config = RunConfig.model_validate(self.artifacts["fcr"].manifest["run"])
        self._inverter: Inverter | None = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Run(key={self.key!r}, preset={c.preset!r}, task={c.task!r}, "
            f"method={c.controls.method!r}, sites={len(self.sites)}, epsilon={self.epsilon})"
        )

    # --- what the run holds -------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        return self.config.kernel.epsilon

    @property
    def sites(self) -> list[str]:
        """The sampled sites, in canonical order."""
        return sorted(self.config.sample_sites, key=lambda s: parse_site(s).sort_key)

    @property
    def features(self) -> list[str]:
        """The features the run's label stage computed."""
        return list(self.artifacts["label"].manifest["metrics"]["feature_names"])

    def results(self) -> pl.DataFrame:
        """The fcr stage's table: one row per (site, feature) (README: the columns)."""
        return layout.read_results(self.artifacts["fcr"])

    @cached_property
    def _samples(self) -> pl.DataFrame:
        return layout.read_samples(self.artifacts["sample"])

    @cached_property
    def _labels(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        return layout.read_labels(self.artifacts["label"])

    @cached_property
    def _references(self) -> pl.DataFrame:
        return layout.read_split(self.artifacts["prior"], "test")

    def references(self) -> pl.DataFrame:
        """The sampled reference prompts (prior test rows) with their labels."""
        _, ref = self._labels
        n = self.config.sample.n_examples
        return self._references.head(n).join(ref, on="id", how="left", suffix="_label")

    def samples(
        self, site: str | None = None, example: int | None = None, epsilon: float | None = None
    ) -> pl.DataFrame:
        """Samples (of one site and reference example, or all), nearest first per reference,
        with ``distance``, ``accepted`` (distance < ε, default the run's), each feature's label
        and, as ``<feature>_ref``, the reference's."""
        df = self._samples
        if site is not None:
            df = df.filter(pl.col("site") == self._site(site))
        if example is not None:
            known = self._samples["example_id"].unique().sort().to_list()
            if example not in known:
                raise ValueError(f"example {example} was not sampled; accepted: {known}")
            df = df.filter(pl.col("example_id") == example)
        labels, ref = self._labels
        ref = ref.rename({"id": "example_id", **{f: f"{f}_ref" for f in self.features}})
        df = df.join(labels, on=scoring.KEY, how="left").join(ref, on="example_id", how="left")
        df = scoring.with_accepted(df, self._epsilon(epsilon))
        return df.sort("site", "example_id", "distance", nulls_last=True)

    # --- scoring hypotheses -------------------------------------------------------------
    def score(
        self,
        feature: Callable[[str], Any] | str | dict[str, Callable[[str], Any]],
        name: str | None = None,
        epsilon: float | None = None,
    ) -> pl.DataFrame:
        """Score a feature over the run's samples and references: the fcr stage's table (FCR,
        interval, chance, n, refusal rate per site) for it. ``feature``: a function of one text
        (defined anywhere, a notebook cell too: it is cached by its source, so redefining it
        rescores), a dict {name: function}, or the name of one of the run's own features."""
        feats = self._features_to_score(feature, name)
        input_keys = {k: self.artifacts[k].key for k in labelling.LABEL_INPUTS}
        samples = self._samples.select(*scoring.KEY, "text")
        references = self._references.select("id", "text")
        texts = self._texts
        context = labelling.feature_context_once(
            self.config, self.artifacts["prior"], self.artifacts["target"], self.workdir
        )
        tables = {}
        for f in feats:
            tables[f.name], _ = labelling.label_texts(
                self.workdir, f, texts, input_keys, self.config.label.max_error_share, context
            )
        labels, ref = labelling.label_table(samples, references, texts, tables)
        return scoring.compute_results(
            self._samples, labels, ref, [f.name for f in feats], self.config, self.key,
            self._epsilon(epsilon),
        )  # fmt: skip

    @cached_property
    def _texts(self) -> list[str]:
        return labelling.run_texts(self._samples, self._references.select("id", "text"))

    def _features_to_score(self, feature, name: str | None) -> list[labelling.Feature]:
        if isinstance(feature, str):
            specs = resolve_features(
                self.config.task, self.config.features, self.config.labeller is not None
            )
            if feature not in specs:
                raise ValueError(f"unknown feature {feature!r}; accepted: {', '.join(specs)}")
            return [labelling.spec_feature(specs[feature], self.config)]
        given = feature if isinstance(feature, dict) else {name: feature}
        out = []
        for n, fn in given.items():
            f = labelling.function_feature(fn, n)
            if f.name in self.features:
                raise ValueError(
                    f"feature name {f.name!r} is a feature of this run; pass another name "
                    f"(name=...), or score the run's own one as run.score({f.name!r})"
                )
            out.append(f)
        return out

    def fcr_at(self, epsilon: float) -> pl.DataFrame:
        """The run's FCR table at another radius ε: seconds, no stage reruns (the samples and
        their distances do not depend on ε; acceptance does)."""
        labels, ref = self._labels
        return scoring.compute_results(
            self._samples, labels, ref, self.features, self.config, self.key,
            self._epsilon(epsilon),
        )  # fmt: skip

    def fcr_curve(
        self,
        epsilons: list[float] | tuple[float, ...] = DEFAULT_EPSILONS,
        features: list[str] | None = None,
        plot: str | Path | None = None,
    ) -> pl.DataFrame:
        """FCR against ε (the paper's FCR-against-distance curve): the results table at every
        radius, stacked; ``plot``: also a PNG, FCR per ε averaged over sites, one line per
        feature, chance dotted."""
        from inversescope import plots  # matplotlib: only when asked

        feats = features or self.features
        unknown = sorted(set(feats) - set(self.features))
        if unknown:
            raise ValueError(f"unknown features {unknown}; accepted: {', '.join(self.features)}")
        labels, ref = self._labels
        curve = scoring.fcr_curve(
            self._samples, labels, ref, feats, self.config, self.key, builtins.list(epsilons)
        )
        if plot is not None:
            plots.fcr_against_epsilon(curve, Path(plot))
        return curve

    # --- models: the target, the trained generator, sampling ----------------------------
    def generator(self, device: str | None = None) -> Inverter:
        """The trained generator and the target (``core.inversion.Inverter``), loaded once."""
        if self._inverter is None:
            from inversescope.sampling import load_inverter

            a = self.artifacts
            self._inverter = load_inverter(
                self.config, a["backbone"], a["controls"], a["target"], device
            )
        return self._inverter

    def target(self):
        """(target model, its tokenizer), as the run read activations with."""
        inv = self.generator()
        return inv.target, inv.target_tokenizer

    def activation(self, text: str | list[str], site: str) -> np.ndarray:
        """The target's activation at ``site`` for a text (d,) or texts (N, d), read at the last
        token as extraction reads the prior."""
        site = parse_site(site).name
        texts = [text] if isinstance(text, str) else builtins.list(text)
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise ValueError("activation needs non-empty texts")
        acts = self.generator().activations(texts, site)
        return acts[0] if isinstance(text, str) else acts

    def sample(
        self,
        z: np.ndarray | str,
        site: str,
        n: int = 32,
        seed: int = 0,
        epsilon: float | None = None,
        with_features: bool = True,
    ) -> pl.DataFrame:
        """``n`` inputs sampled for an activation ``z`` (d,) at ``site`` (or for the activation
        of a text), nearest first: text, distance to ``z``, accepted (distance < ε) and, with
        ``with_features``, each of the run's single-text features."""
        site = self._site(site)
        if not 0 < n <= MAX_SAMPLES:
            raise ValueError(f"n={n}: draw between 1 and {MAX_SAMPLES} samples")
        if isinstance(z, str):
            z = self.activation(z, site)
        z = np.asarray(z, dtype=np.float32)
        d = self._width(site)
        if z.shape != (d,):
            raise ValueError(f"z has shape {z.shape}; site {site} has activations of shape ({d},)")
        texts, dist = self.generator().sample(
            np.repeat(z[None], n, axis=0), site, self.config.sample, self.config.kernel, seed
        )
        df = scoring.with_accepted(
            pl.DataFrame({"text": texts, "distance": dist}), self._epsilon(epsilon)
        )
        if with_features:
            df = df.with_columns(
                pl.Series(name, labels, dtype=pl.String)
                for name, labels in self._plain_labels(texts).items()
            )
        return df.sort("distance", nulls_last=True)

    def _plain_labels(self, texts: list[str]) -> dict[str, list[str | None]]:
        from inversescope.tasks.features import apply_feature

        specs = resolve_features(self.config.task, self.config.features)
        return {n: apply_feature(s.load(), texts)[0] for n, s in specs.items() if not s.batched}

    # --- checks ---------------------------------------------------------------------------
    def _site(self, site: str) -> str:
        name = parse_site(site).name
        if name not in self.sites:
            raise ValueError(f"site {site!r} was not sampled in this run; accepted: {self.sites}")
        return name

    def _width(self, site: str) -> int:
        from inversescope.storage.activations import ActivationStore

        return int(ActivationStore(self.artifacts["extract"].path).array("test", site).shape[1])

    def _epsilon(self, epsilon: float | None) -> float:
        if epsilon is None:
            return self.epsilon
        if not 0 < epsilon < 2:
            raise ValueError(f"epsilon={epsilon}: accepted 0 < epsilon < 2 (cosine distance)")
        return float(epsilon)
