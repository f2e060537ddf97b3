"""Server-side time of every page of ``inversescope view`` at the paper's IOI size.

    python benchmarks/view.py [--workdir /tmp/view-bench] [--sites 144] [--refs 100]
                              [--samples 32] [--repeats 5] [--out benchmarks/out/view.json]

Builds (once; an existing one is reused) a synthetic workdir of ``ioi-gpt2``'s shape: complete
runs of the three sampling methods, each ``sites x refs x samples`` samples (by default 144 x
100 x 32 = 460,800) with 4 features, written through the pipeline's own writers
(``storage.layout``, ``storage.tables``, ``ArtifactStore.begin``/``commit``: real manifests)
and scored by ``scoring.compute_results``. Samples are IOI prompts whose names, item and place
agree with their reference's at a rate that differs per site and feature, at distances whose
refusal rate differs per site (2 % to 60 %); 5 % are empty. Then every route is requested once
to warm it and ``--repeats`` times more through FastAPI's TestClient; the JSON holds, per route,
the status, the median and worst server time (the app's ``Server-Timing``) and the page size.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from _common import write_result

from inversescope.config import RunConfig, load_run_config
from inversescope.flows.stage import STAGE_ORDER, run_keys, stage_module
from inversescope.scoring import compute_results, refusal_rates, refusal_summary
from inversescope.storage import layout
from inversescope.storage.artifacts import ArtifactStore
from inversescope.storage.tables import write_parquet_atomic
from inversescope.tasks import ioi

METHODS = ("inversescope", "inversionview", "prior")
FEATURES = ("item", "object", "place", "subject")
EMPTY_SHARE = 0.05


def paper_sites(n: int) -> list[str]:
    """The first ``n`` sites of GPT-2 small's 144 heads, then its 12 layer outputs."""
    heads = [f"L{layer}H{h}" for layer in range(12) for h in range(12)]
    return (heads + [f"L{layer}.attn" for layer in range(12)])[:n]


def config(method: str, sites: list[str], refs: int, samples: int) -> RunConfig:
    return load_run_config(
        "ioi-gpt2",
        [
            f"controls.method={method}",
            f"extract.sites=[{', '.join(sites)}]",
            f"sample.n_examples={refs}",
            f"sample.samples_per_example={samples}",
            "prior.n_train=1000",
            "prior.n_test=1000",
        ],
    )


def _commit(store: ArtifactStore, run: RunConfig, keys: dict, name: str, write, metrics=None):
    """Build one artifact with ``write(out)`` and commit it with a manifest as the pipeline's."""
    if store.lookup(name, keys[name]) is not None:
        return store.require(name, keys[name])
    out = store.begin(name, keys[name], resumable=False)
    t0 = time.perf_counter()
    got = write(out) or {}
    manifest = {
        "config": stage_module(name).config_of(run),
        "inputs": {i: keys[i] for i in stage_module(name).INPUTS},
        "run": run.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t0, 3),
        "metrics": {"synthetic": True, **(metrics or {}), **got},
    }
    return store.commit(name, keys[name], manifest)


def _prompt(rng: random.Random, template: int, names: tuple[str, str], place: str, item: str):
    io, subject = names
    n1, n2 = (io, subject) if rng.random() < 0.5 else (subject, io)
    return ioi.TEMPLATES[template].format(N1=n1, N2=n2, S=subject, PLACE=place, OBJECT=item)


def synthetic_samples(run: RunConfig, test: pl.DataFrame, method_seed: int):
    """(samples, labels) of every site: IOI prompts near their reference at a per-site rate."""
    rng = random.Random(method_seed)
    np_rng = np.random.default_rng(method_seed)
    s, eps = run.sample, run.kernel.epsilon
    refs = test.head(s.n_examples).to_dicts()
    rows, labels = [], []
    for si, site in enumerate(run.sample_sites):
        mu = np_rng.uniform(-1.0, 0.15)  # log(d / eps) ~ N(mu, 0.5): refusal 2 % to 62 %
        keep = {f: float(np_rng.beta(0.7, 1.6)) for f in FEATURES}
        for ref in refs:
            d = eps * np.exp(np_rng.normal(mu, 0.5, s.samples_per_example))
            for j in range(s.samples_per_example):
                near = d[j] < eps
                pick = {f: rng.random() < (keep[f] if near else keep[f] / 3) for f in FEATURES}
                io = ref["io"] if pick["object"] else rng.choice(ioi.NAMES)
                others = [n for n in ioi.NAMES if n != io]
                subject = (
                    ref["subject"]
                    if pick["subject"] and ref["subject"] != io
                    else rng.choice(others)
                )
                place = ref["place"] if pick["place"] else rng.choice(ioi.PLACES)
                item = ref["object"] if pick["item"] else rng.choice(ioi.OBJECTS)
                empty = rng.random() < EMPTY_SHARE
                text = (
                    ""
                    if empty
                    else _prompt(rng, rng.randrange(len(ioi.TEMPLATES)), (io, subject), place, item)
                )
                key = (site, ref["id"], j)
                rows.append((*key, text, math.nan if empty else float(d[j])))
                labels.append((*key, *((None,) * 4 if empty else (item, io, place, subject))))
        if si % 24 == 23:
            print(f"  samples: {si + 1}/{len(run.sample_sites)} sites", file=sys.stderr)
    samples = pl.DataFrame(
        rows, schema=["site", "example_id", "sample_idx", "text", "distance"], orient="row"
    ).with_columns(pl.col("distance").cast(pl.Float32))
    label_df = pl.DataFrame(
        labels,
        schema={
            "site": pl.String,
            "example_id": pl.Int64,
            "sample_idx": pl.Int64,
            **dict.fromkeys(FEATURES, pl.String),
        },
        orient="row",
    )
    return samples, label_df


def build_run(workdir: Path, method: str, sites: list[str], refs: int, samples: int) -> str:
    """One complete synthetic run of ``method``; its fcr key."""
    run = config(method, sites, refs, samples)
    keys = run_keys(run)
    store = ArtifactStore(workdir)
    if store.lookup("fcr", keys["fcr"]) is not None:
        return keys["fcr"]
    train, test = ioi.generate_prior(run.prior.n_train, run.prior.n_test, run.seed)
    test_df = pl.DataFrame(test)

    def prior(out):
        layout.write_split(out, "train", pl.DataFrame(train))
        layout.write_split(out, "test", test_df)

    _commit(store, run, keys, "prior", prior)
    record = {"source": "hub", "name": "gpt2", "revision": "main", "path": None, "prefix": ""}
    _commit(store, run, keys, "target", lambda out: layout.write_target_record(out, record))
    for name in ("extract", "backbone", "controls"):  # the view reads none of their files
        _commit(store, run, keys, name, lambda out: None)
    sample_df, label_df = synthetic_samples(run, test_df, METHODS.index(method))

    def sample(out):
        parts = []
        for site in run.sample_sites:
            for group in range(-(-refs // run.sample.group_size)):
                lo = group * run.sample.group_size
                part = sample_df.filter(
                    (pl.col("site") == site)
                    & pl.col("example_id").is_between(lo, lo + run.sample.group_size - 1)
                )
                path = layout.sample_part(out, site, group)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_parquet_atomic(part, path)
                parts.append(layout.sample_part_name(site, group))
        return {"method": method, "parts": parts, "n_samples": sample_df.height}

    _commit(store, run, keys, "sample", sample)
    reference = test_df.select(
        "id", pl.col("object").alias("item"), pl.col("io").alias("object"), "place", "subject"
    )
    _commit(
        store,
        run,
        keys,
        "label",
        lambda out: layout.write_labels(out, label_df, reference),
        {"feature_names": list(FEATURES)},
    )
    results = compute_results(sample_df, label_df, reference, list(FEATURES), run, keys["fcr"])

    def fcr(out):
        write_parquet_atomic(results, layout.results_path(out))
        return {
            "rows": results.height,
            **refusal_summary(refusal_rates(sample_df, run.kernel.epsilon)),
        }

    _commit(store, run, keys, "fcr", fcr)
    assert set(STAGE_ORDER) <= set(keys)
    return keys["fcr"]


def routes(key: str, sites: list[str], refs: int, other: str) -> dict[str, str]:
    mid = sites[min(len(sites) - 1, 25)]
    last_page = -(-refs // 5)
    r = f"/run/{key}"
    return {
        "runs": "/",
        "overview": r,
        "overview sorted by chance": f"{r}?sort=chance&desc=0",
        "results.csv": f"{r}/results.csv",
        "site, first page": f"{r}/site/{mid}",
        "site, last page": f"{r}/site/{sites[-1]}?page={last_page}",
        "site, one reference": f"{r}/site/{mid}?example={refs // 2}",
        "site, 20 references": f"{r}/site/{mid}?per=20&page=2",
        "feature": f"{r}/feature/subject",
        "compare methods": f"{r}/methods?site={mid}&example={refs // 3}",
        "compare runs": f"/compare?run={key}&run={other}",
        "search: substring, every site": f"{r}/search?q=Mary",
        "search: rare substring, every site": f"{r}/search?q=zzz",
        "search: object differs, accepted, one site": (
            f"{r}/search?site={mid}&accepted=yes&feature=object&relation=differs"
        ),
        "search: object differs, from the middle site on": (
            f"{r}/search?feature=object&relation=differs&start={sites[len(sites) // 2]}"
        ),
        "search: label value, every site": f"{r}/search?feature=place&relation=is&value=garden",
        "search form": f"{r}/search",
        "invert form": f"{r}/invert",
        "unknown site (404)": f"{r}/site/L99H0",
        "prompt too long (422)": f"{r}/invert?prompt={'x' * 500}",
    }


def time_routes(workdir: Path, paths: dict[str, str], repeats: int) -> dict[str, dict]:
    from fastapi.testclient import TestClient

    from inversescope.view import create_app

    client = TestClient(create_app(workdir))
    out = {}
    for name, path in paths.items():
        first = client.get(path)
        server, wall = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            resp = client.get(path)
            wall.append((time.perf_counter() - t0) * 1000)
            server.append(float(resp.headers["server-timing"].split("dur=")[1]))
        out[name] = {
            "path": path if len(path) < 120 else path[:117] + "...",
            "status": resp.status_code,
            "cold_ms": round(float(first.headers["server-timing"].split("dur=")[1]), 1),
            "median_ms": round(statistics.median(server), 1),
            "max_ms": round(max(server), 1),
            "wall_median_ms": round(statistics.median(wall), 1),
            "bytes": len(resp.content),
        }
        t = out[name]
        print(
            f"{t['median_ms']:8.1f} {t['max_ms']:8.1f} ms  {t['status']}  {name}", file=sys.stderr
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/view-bench")
    ap.add_argument("--sites", type=int, default=144)
    ap.add_argument("--refs", type=int, default=100)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "view.json"))
    args = ap.parse_args()

    workdir = Path(args.workdir)
    sites = paper_sites(args.sites)
    t0 = time.perf_counter()
    keys = {m: build_run(workdir, m, sites, args.refs, args.samples) for m in METHODS}
    built = time.perf_counter() - t0
    timings = time_routes(
        workdir, routes(keys["inversescope"], sites, args.refs, keys["prior"]), args.repeats
    )
    worst = max(timings.values(), key=lambda t: t["max_ms"])
    write_result(
        {
            "workdir": str(workdir),
            "sites": len(sites),
            "references": args.refs,
            "samples_per_reference": args.samples,
            "samples_per_run": len(sites) * args.refs * args.samples,
            "runs": len(METHODS),
            "features": len(FEATURES),
            "build_seconds": round(built, 1),
            "repeats": args.repeats,
            "worst_route": {"name": next(k for k, v in timings.items() if v is worst), **worst},
            "routes": timings,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
