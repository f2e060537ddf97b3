"""Wall time of the hypotheses stage's work (all candidates x all sites), warm, and its scaling.

    python benchmarks/hypotheses.py WORKDIR [--repeats 3]
    python benchmarks/hypotheses.py --synthetic [--sites 20,72,144] [--refs 20,100]
        [--samples 16,32] [--pool 500,5000]

WORKDIR: the newest fcr result of a run there (``inversescope run ioi-tiny`` first): the stage's
own inputs, read and labelled (``prepare``: every distinct text once, tokens, slots, the run's
labels) and scored (``score``: FCR, chance, permutation test, BH, ranks) ``--repeats`` times in
one process; the best time counts (warm: imports done, tokenizer and files read once). Also
reports, per site, the candidates at q < alpha, the top 3, and the shuffled control (each
site's samples handed to random references; nothing should pass).

``--synthetic``: no run needed. IOI prompts of the prior stand for samples (70 % of each
site's samples share one slot with their reference: subject, place, template, or none), with a
tokenizer trained on the prior and uniform distances, at each (sites, references, samples,
pool) in turn; the same labelling and scoring code as the stage. The per-pair time shows the
scaling in sites (linear: every pair's work depends on its site's samples only).

Writes ``benchmarks/out/hypotheses.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from _common import write_result

from inversescope.config import RunConfig
from inversescope.core.hypotheses import (
    TESTED,
    HypothesesConfig,
    SiteSamples,
    encode_labels,
    score_run,
    shuffled_control,
)
from inversescope.flows import stage_hypotheses
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.queries import latest


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _summary(found, alpha: float) -> dict:
    sites = list(dict.fromkeys(h.site for h in found))
    ranked = sorted((h for h in found if h.rank is not None), key=lambda h: h.rank)
    return {
        "passing_per_site": {s: sum(h.site == s for h in ranked) for s in sites},
        "top3": {
            s: [
                {"candidate": h.candidate, "fcr": h.fcr, "chance": h.chance, "q": h.q_value}
                for h in ranked
                if h.site == s and h.rank <= 3
            ]
            for s in sites
        },
        "tested_pairs": sum(h.status == TESTED for h in found),
        "alpha": alpha,
    }


def on_workdir(workdir: Path, repeats: int) -> dict:
    path, manifest = latest(workdir, "fcr")
    run = RunConfig.model_validate(manifest["run"])
    store = ArtifactStore(workdir)
    keys = {"fcr": manifest["key"], **manifest["inputs"]}
    label = store.require("label", keys["label"])
    keys |= label.manifest["inputs"]
    inputs = {n: store.require(n, keys[n]) for n in stage_hypotheses.INPUTS}
    best_prepare = best_score = float("inf")
    for _ in range(repeats):
        prepared, t_prepare = _timed(lambda: stage_hypotheses.prepare(run, inputs))
        found, t_score = _timed(lambda p=prepared: stage_hypotheses.score(run, p))
        best_prepare, best_score = min(best_prepare, t_prepare), min(best_score, t_score)
    control = stage_hypotheses.score(run, prepared, shuffled_control(prepared.sites, run.seed))
    n_samples = sum(len(s.example) for s in prepared.sites.values())
    return {
        "workdir": str(workdir),
        "fcr": str(path),
        "preset": run.preset,
        "sites": len(prepared.sites),
        "samples": n_samples,
        "references_pool": len(prepared.pool),
        "candidates": len(prepared.candidates),
        "seconds_prepare": round(best_prepare, 3),
        "seconds_score": round(best_score, 3),
        "seconds_total": round(best_prepare + best_score, 3),
        "result": _summary(found, run.hypotheses.alpha),
        "shuffled_control_passing": sum(h.rank is not None for h in control),
    }


def synthetic(n_sites: int, n_refs: int, per: int, pool: int, seed: int = 0) -> dict:
    """The stage's labelling and scoring on IOI prompts standing for samples (see module)."""
    from inversescope.core.tokenizer import train_bpe_tokenizer
    from inversescope.tasks import candidates, ioi, ioi_features, task_renderer
    from inversescope.tasks.features import FeatureContext

    rng = np.random.default_rng(seed)
    train, test = ioi.generate_prior(20_000, pool, seed)
    tok = train_bpe_tokenizer([r["text"] + r["answer"] for r in train[:5000]], 1024)
    refs, draws = test[:n_refs], train
    by = {k: {} for k in ("subject", "place", "template_id")}
    for i, r in enumerate(draws):
        for k in by:
            by[k].setdefault(r[k], []).append(i)
    kinds = ["subject", "place", "template_id", None]
    texts = [r["text"] for r in test]
    index = {t: i for i, t in enumerate(texts)}
    sites = {}
    for s in range(n_sites):
        kind = kinds[s % len(kinds)]
        picks = rng.integers(0, len(draws), n_refs * per)
        for j in range(len(picks)):
            if kind is not None and rng.random() < 0.7:
                same = by[kind][refs[j // per][kind]]
                picks[j] = same[rng.integers(0, len(same))]
        rows = []
        for p in picks.tolist():
            t = draws[p]["text"]
            if t not in index:
                index[t] = len(texts)
                texts.append(t)
            rows.append(index[t])
        example = np.repeat(np.arange(n_refs), per)
        sites[f"L{s // 12}H{s % 12}"] = SiteSamples(
            example, rng.random(len(example)), np.array(rows), example
        )

    def label():
        render = task_renderer("ioi", tok, tok.eos_token)
        features = sorted(ioi_features.FEATURES)
        labels = {f: [ioi_features.FEATURES[f](t) for t in texts] for f in features}
        labels |= candidates.slot_labels("ioi", texts, FeatureContext())
        labels |= candidates.token_labels(texts, tok, render)
        cands = candidates.candidates("ioi", features)
        return cands, encode_labels([labels[c.name] for c in cands])

    (cands, codes), t_label = _timed(label)
    config = HypothesesConfig()
    found, t_score = _timed(
        lambda: score_run(sites, codes, [c.name for c in cands], np.arange(pool), config)
    )
    pairs = n_sites * len(cands)
    return {
        "sites": n_sites,
        "references": n_refs,
        "samples_per_reference": per,
        "pool": pool,
        "distinct_texts": len(texts),
        "candidates": len(cands),
        "pairs": pairs,
        "seconds_label": round(t_label, 3),
        "seconds_score": round(t_score, 3),
        "ms_per_pair_score": round(1000 * t_score / pairs, 3),
        "passing": sum(h.rank is not None for h in found),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", nargs="?", help="a workdir with an fcr result")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--synthetic", action="store_true", help="no workdir: synthetic sizes")
    ap.add_argument("--sites", default="20,72,144")
    ap.add_argument("--refs", default="20,100", help="references per site, one per shape")
    ap.add_argument("--samples", default="16,32", help="samples per reference, one per shape")
    ap.add_argument("--pool", default="500,5000", help="test prompts (chance), one per shape")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "hypotheses.json"))
    args = ap.parse_args()
    result: dict = {"machine": platform.processor() or platform.machine()}
    if args.synthetic:
        sizes = [list(map(int, a.split(","))) for a in (args.refs, args.samples, args.pool)]
        shapes = list(zip(*sizes, strict=True))
        result["synthetic"] = [
            synthetic(n, refs, per, pool)
            for refs, per, pool in shapes
            for n in map(int, args.sites.split(","))
        ]
    elif args.workdir:
        result["workdir"] = on_workdir(Path(args.workdir), args.repeats)
    else:
        raise SystemExit("give a WORKDIR with an fcr result, or --synthetic")
    write_result(json.loads(json.dumps(result, default=float)), args.out)


if __name__ == "__main__":
    main()
