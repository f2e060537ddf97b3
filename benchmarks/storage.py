"""Extract and sample on a bucket against a local directory, with an S3 server on loopback.

    python benchmarks/storage.py [--rows 4096] [--repeats 2] [--chunk-rows 2048]

Starts moto's S3 server on 127.0.0.1 in a process of its own (the standard AWS_* environment
points at it), builds the
upstream stages of a shortened ioi-tiny (its 20 sites and model sizes, shorter training) in a
local directory, copies them into a bucket, then times the ``extract`` and ``sample`` stages
(``run_stage``: lock, build, commit) into each workdir, the artifact removed between repeats.
The ratio is local seconds over bucket seconds (1: as fast; goal >= 0.8). Writes
benchmarks/out/storage.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result

UPSTREAM = ("prior", "target", "backbone", "controls")
TIMED = ("extract", "sample")


def _overrides(rows: int, chunk_rows: int) -> list[str]:
    steps = "{steps: 20, batch_size: 32, lr: 1.0e-3, warmup: 5, eval_every: 20}"
    return [
        f"prior.n_train={rows}",
        "prior.n_test=512",
        "target.train_prompts=null",
        f"target.train={steps}",
        "target.min_accuracy=0",
        f"backbone.train={steps}",
        f"controls.train={steps}",
        f"extract.chunk_rows={chunk_rows}",
        "sample.n_examples=4",
        "sample.samples_per_example=8",
        "sample.max_new_tokens=16",
        "sample.group_size=2",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(host: str, port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"no S3 server on {host}:{port} after {timeout} s")


def _upload(src: Path, key_dir) -> None:
    """A committed local artifact into a bucket: its files under a build, its manifest (last)
    naming that build."""
    import json

    from inversescope.storage.artifacts import MANIFEST, new_build_id

    build = new_build_id()
    for f in sorted(p for p in src.rglob("*") if p.is_file() and p.name != MANIFEST):
        (key_dir / build / f.relative_to(src).as_posix()).write_bytes(f.read_bytes())
    manifest = json.loads((src / MANIFEST).read_text())
    (key_dir / MANIFEST).write_text(json.dumps({**manifest, "build": build}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096, help="train prompts extracted")
    ap.add_argument("--chunk-rows", type=int, default=2048, help="extract.chunk_rows")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "storage.json"))
    args = ap.parse_args()

    # the server in a process of its own, as a real store is: in this one it would take the
    # interpreter lock from the stage it serves
    host, port = "127.0.0.1", _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tmp = Path(tempfile.mkdtemp(prefix="inversescope-bench-"))
    try:
        _wait_for(host, port)
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench-secret",
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=f"http://{host}:{port}",
            AWS_ALLOW_HTTP="true",
            INVERSESCOPE_CACHE=str(tmp / "cache"),
        )
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        result = _bench(args, tmp / "local", "s3://bench/runs")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    write_result(result, args.out)


def _bench(args, local: Path, url: str) -> dict:
    import torch

    from inversescope.config import load_run_config
    from inversescope.flows.stage import run_keys, run_stage
    from inversescope.storage.artifacts import ArtifactStore
    from inversescope.storage.files import tree_files

    run = load_run_config("ioi-tiny", _overrides(args.rows, args.chunk_rows))
    keys = run_keys(run)
    for name in UPSTREAM[:2]:
        run_stage(name, run, local, keys)
    run_stage("extract", run, local, keys)  # controls train on it
    for name in UPSTREAM[2:]:
        run_stage(name, run, local, keys)
    bucket = ArtifactStore(url)
    for name in UPSTREAM:
        _upload(local / name / keys[name], bucket.workdir / name / keys[name])
    # the bucket's extract input for sample: built once there, untimed
    out: dict = {}
    for name in TIMED:
        times = {"local": [], "bucket": []}
        for _ in range(args.repeats):
            for where, workdir in (("local", local), ("bucket", url)):
                store = ArtifactStore(workdir)
                if name == "extract" or store.lookup("extract", keys["extract"]) is None:
                    _drop(store, "extract", keys["extract"])
                    if name == "sample":
                        run_stage("extract", run, workdir, keys)
                _drop(store, name, keys[name])
                t0 = time.perf_counter()
                run_stage(name, run, workdir, keys)
                times[where].append(time.perf_counter() - t0)
                print(f"{name} on {where}: {times[where][-1]:.2f} s", file=sys.stderr, flush=True)
        best = {k: min(v) for k, v in times.items()}
        out[name] = {
            "local_s": best["local"],
            "bucket_s": best["bucket"],
            "ratio": best["local"] / best["bucket"],
            "all_s": times,
        }
    art = ArtifactStore(url).require("extract", keys["extract"])
    chunks = [p for p in tree_files(art.path / "activations.zarr") if "/c/" in str(p)]
    sizes = sorted(p.stat().st_size for p in chunks)
    return {
        "preset": "ioi-tiny (shortened training)",
        "server": "moto server (python -m moto.server) on 127.0.0.1, its own process",
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "rows": sum(art.manifest["metrics"]["rows"].values()),
        "sites": len(run.extract.sites),
        "chunk_rows": args.chunk_rows,
        "chunk_objects": len(chunks),
        "chunk_bytes_median": sizes[len(sizes) // 2],
        "chunk_bytes_max": sizes[-1],
        "samples": ArtifactStore(url)
        .require("sample", keys["sample"])
        .manifest["metrics"]["n_samples"],
        **{f"{n}_ratio": out[n]["ratio"] for n in TIMED},
        "stages": out,
        "note": "ratio = local seconds / bucket seconds for the whole stage (1 = as fast)",
    }


def _drop(store, stage: str, key: str) -> None:
    """Remove a committed artifact (and any build) so the next run_stage builds it again."""
    from inversescope.storage.files import is_remote, remove_tree

    target = store.workdir / stage / key
    if is_remote(target):
        if target.is_dir():
            target.rmtree()
    elif target.exists():
        remove_tree(target)


if __name__ == "__main__":
    main()
