"""A bucket workdir for real: ``inversescope`` CLI runs on ``s3://`` against an S3 server on
127.0.0.1 (moto's server mode, tests/conftest.py ``s3_server``: started once, stopped on every
path), compared with a run on a local directory.

- the run's Zarr chunks and metadata, Parquet tables, models and plots equal the local run's
  byte for byte (the same encoders write both; only manifests and done-markers, which record
  timings, differ), and ``--json`` names each stage's build URL;
- a rerun finds every stage cached; no log holds the secret key;
- killed (SIGKILL of the process group) mid-extract, then mid-controls, the reruns resume from
  the committed chunks and the training checkpoint to the same bytes;
- two processes started at once on one key build each stage once;
- ``verify`` names a corrupt chunk object and a corrupt ``zarr.json``; ``gc`` removes an
  orphaned build prefix;
- the Dask fan-out (2 workers) writes the same extract and sample objects into a bucket.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from inversescope.flows.stage import STAGE_ORDER
from inversescope.storage import shards
from inversescope.storage.artifacts import BUILD_RECORD, ArtifactStore
from inversescope.storage.files import location

pytestmark = pytest.mark.service

TRAIN = "{steps: 30, batch_size: 16, lr: 0.001, warmup: 2, eval_every: 10, checkpoint_every: 10}"
SUITE = [  # as the fault suite: six 64-row chunks, 30 steps checkpointed every 10
    "extract.chunk_rows=64",
    f"target.train={TRAIN}",
    f"backbone.train={TRAIN}",
    f"controls.train={TRAIN}",
    "sample.group_size=2",
]


def _cli(env, *args, workdir, overrides, fault=None, wait=True):
    env = {k: v for k, v in env.items() if not k.startswith("INVERSESCOPE_FAULT")}
    if fault is not None:
        env |= {"INVERSESCOPE_FAULT": fault, "INVERSESCOPE_FAULT_SCOPE": "group"}
    argv = [sys.executable, "-m", "inversescope.flows.cli", *args, "--workdir", str(workdir)]
    for o in overrides:
        argv += ["--set", o]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    return _finish(proc) if wait else proc


def _finish(proc):
    try:
        out, err = proc.communicate(timeout=600)
    except BaseException:  # hung, or pytest interrupted: leave no process group behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _stages(done) -> dict:
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["stages"]


def _files(root) -> dict[str, bytes]:
    """Every data file of an artifact, the manifest, done-markers and a bucket build's start
    record aside (timings)."""
    root = location(str(root))
    if isinstance(root, Path):
        found = sorted(p for p in root.rglob("*") if p.is_file())
    else:
        found = root.files()
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in found
        if shards.MARKERS not in p.relative_to(root).parts
        and p.name not in ("manifest.json", BUILD_RECORD)
    }


def _same(a: dict, b: dict, names=STAGE_ORDER) -> None:
    for name in names:
        want, got = _files(a[name]["path"]), _files(b[name]["path"])
        assert want.keys() == got.keys(), name
        assert [k for k in want if want[k] != got[k]] == [], name


def _copy(store_from: ArtifactStore, store_to: ArtifactStore, stage: str, key: str) -> None:
    """A committed artifact (its build and manifest) into another bucket workdir."""
    src = store_from.workdir / stage / key
    for obj in src.files():
        (store_to.workdir / stage / key / str(obj.relative_to(src))).write_bytes(obj.read_bytes())


@pytest.fixture(scope="module")
def secret(s3_server) -> str:
    return s3_server[1]["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="module")
def overrides(small_overrides):
    return [*small_overrides, *SUITE]


@pytest.fixture(scope="module")
def env(s3_server, tmp_path_factory):
    import boto3

    boto3.client("s3", endpoint_url=s3_server[0]).create_bucket(Bucket="inversescope-svc")
    cache = tmp_path_factory.mktemp("object-cache")
    return {**os.environ, **s3_server[1], "INVERSESCOPE_CACHE": str(cache)}


@pytest.fixture(scope="module")
def runs(env, overrides, tmp_path_factory, secret):
    """The same config on a local directory and on a bucket: (local stages, bucket stages,
    bucket workdir URL)."""
    local = _cli(env, "run", "ioi-tiny", "--json", workdir=tmp_path_factory.mktemp("local"),
                 overrides=overrides)  # fmt: skip
    url = "s3://inversescope-svc/runs/a"
    bucket = _cli(env, "run", "ioi-tiny", "--json", workdir=url, overrides=overrides)
    assert secret not in local.stdout + local.stderr + bucket.stdout + bucket.stderr
    return _stages(local), _stages(bucket), url


def test_a_bucket_run_writes_the_bytes_a_local_run_writes(runs, env, overrides, secret):
    t0 = time.monotonic()
    local, bucket, url = runs
    assert {r["status"] for r in bucket.values()} == {"ran"}
    assert [r["key"] for r in bucket.values()] == [r["key"] for r in local.values()]
    for name, r in bucket.items():
        # the URL the stage's files lie under: its build, beside its manifest
        assert re.fullmatch(rf"{url}/{name}/{r['key']}/b\d{{8}}T\d{{6}}-[0-9a-f]{{8}}", r["path"])
        assert location(r["path"]).is_dir()
    assert location(bucket["fcr"]["path"] + "/results.parquet").is_file()
    assert location(bucket["extract"]["path"] + "/activations.zarr/test/L0H1/zarr.json").is_file()
    _same(local, bucket)

    again = _cli(env, "run", "ioi-tiny", "--json", workdir=url, overrides=overrides)
    assert {r["status"] for r in _stages(again).values()} == {"cached"}
    table = subprocess.run(
        [sys.executable, "-m", "inversescope.flows.cli", "results", url, "--top", "1"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr[-2000:]
    assert "subject" in table.stdout and secret not in table.stdout + table.stderr
    print(f"bucket run vs local: {time.monotonic() - t0:.0f} s")


def test_killed_mid_extract_and_mid_controls_resumes_to_the_same_bytes(
    runs, env, overrides, tmp_path, secret
):
    local, bucket, url = runs
    wd = "s3://inversescope-svc/runs/killed"
    ref, dest = ArtifactStore(url), ArtifactStore(wd)
    for name in ("prior", "target"):
        _copy(ref, dest, name, bucket[name]["key"])
    log = ""

    killed = _cli(env, "run", "ioi-tiny", "--json", workdir=wd, overrides=overrides,
                  fault=f"extract:rows@100:{tmp_path / 'f1'}")  # fmt: skip
    log += killed.stdout + killed.stderr
    assert killed.returncode == -9 and "fault injected at" in killed.stderr, log[-3000:]
    assert dest.lookup("extract", bucket["extract"]["key"]) is None  # a build, no manifest

    killed = _cli(env, "run", "ioi-tiny", "--json", workdir=wd, overrides=overrides,
                  fault=f"controls:steps@15:{tmp_path / 'f2'}")  # fmt: skip
    log += killed.stdout + killed.stderr
    assert killed.returncode == -9, log[-3000:]
    assert "extract: resuming, 64 of 340 rows already written" in killed.stderr
    assert dest.lookup("controls", bucket["controls"]["key"]) is None

    rerun = _cli(env, "run", "ioi-tiny", "--json", workdir=wd, overrides=overrides)
    log += rerun.stdout + rerun.stderr
    stages = _stages(rerun)
    assert "resuming from the checkpoint at step 10 of 30" in rerun.stderr
    assert stages["controls"]["status"] == "ran" and stages["extract"]["status"] == "cached"
    _same(local, stages)
    assert secret not in log


def test_two_processes_on_one_key_build_it_once(env, overrides, secret):
    wd = "s3://inversescope-svc/runs/race"
    procs = [
        _cli(env, "run", "ioi-tiny", "--json", "--until", "target", workdir=wd,
             overrides=overrides, wait=False)
        for _ in range(2)
    ]  # fmt: skip
    done = [_finish(p) for p in procs]
    results = [_stages(d) for d in done]
    for name in ("prior", "target"):
        assert sorted(r[name]["status"] for r in results) == ["cached", "ran"], name
        assert results[0][name]["path"] == results[1][name]["path"]
        key_dir = location(wd) / name / results[0][name]["key"]
        builds = [p for p in key_dir.iterdir() if not p.is_file()]
        assert [str(b) for b in builds] == [results[0][name]["path"]]  # built once
    assert secret not in "".join(d.stdout + d.stderr for d in done)


def test_verify_names_corrupt_objects_and_gc_removes_an_orphaned_build(runs, env):
    _, bucket, url = runs
    verify = [sys.executable, "-m", "inversescope.flows.cli", "verify", url]
    ok = subprocess.run(verify, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    store = location(bucket["extract"]["path"]) / "activations.zarr"
    chunk, meta = store / "train" / "L1H0" / "c" / "1" / "0", store / "test" / "L0H1" / "zarr.json"
    originals = {chunk: chunk.read_bytes(), meta: meta.read_bytes()}
    try:
        data = bytearray(originals[chunk])
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
        meta.write_bytes(originals[meta][:-25])
        bad = subprocess.run(verify, env=env, capture_output=True, text=True, timeout=300)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        lines = bad.stdout.splitlines()
        assert any(line.startswith(f"corrupt       {chunk}: ") for line in lines), bad.stdout
        assert any(
            line.startswith(f"corrupt       {meta}: metadata of node test/L0H1: JSONDecodeError")
            for line in lines
        ), bad.stdout
    finally:
        for path, data in originals.items():
            path.write_bytes(data)

    orphan = location(url) / "sample" / bucket["sample"]["key"] / "b20260101T000000-0badbeef"
    (orphan / "samples" / "L0H1" / "00000.parquet").write_bytes(b"half a part")
    gc = subprocess.run(
        [sys.executable, "-m", "inversescope.flows.cli", "gc", url],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert f"removed {orphan} (partial build of a dead run;" in gc.stdout
    assert not orphan.exists()
    assert subprocess.run(verify, env=env, capture_output=True, timeout=300).returncode == 0


def test_dask_shards_write_disjoint_objects_into_a_bucket(runs, env, overrides):
    _, bucket, url = runs
    wd = "s3://inversescope-svc/runs/dask"
    ref, dest = ArtifactStore(url), ArtifactStore(wd)
    # trained models from the bucket run: CPU training depends on the torch thread count in
    # the last float bits, and a worker has its own (tests/flows/test_dask.py)
    for name in ("prior", "target", "backbone", "controls"):
        _copy(ref, dest, name, bucket[name]["key"])
    dask = ["runner.kind=dask", "runner.n_workers=2", "runner.shards=3"]
    done = _cli(env, "run", "ioi-tiny", "--json", "--until", "sample", workdir=wd,
                overrides=[*overrides, *dask])  # fmt: skip
    stages = _stages(done)
    assert stages["extract"]["status"] == stages["sample"]["status"] == "ran"
    _same(bucket, stages, ("extract", "sample"))
    markers = shards.read_markers(location(stages["extract"]["path"]))
    assert len(markers) == 4  # 3 shards, the one that straddles the splits cut in two


def test_the_view_serves_a_bucket_workdir(runs):
    """``inversescope view s3://...``: the runs page, a run's overview, a site's samples, its
    results table and a search read their tables from the bucket, as from a directory."""
    from fastapi.testclient import TestClient

    from inversescope.view.app import create_app

    _, bucket, url = runs  # the s3_server fixture set the AWS_* variables of this process
    key = bucket["fcr"]["key"]
    client = TestClient(create_app(url))
    listing = client.get("/")
    assert listing.status_code == 200 and key[:12] in listing.text
    assert client.get(f"/run/{key}").status_code == 200
    site = client.get(f"/run/{key}/site/L0H1")
    assert site.status_code == 200 and 'class="samples' in site.text
    table = client.get(f"/run/{key}/results.csv")
    assert table.status_code == 200 and "L0H1" in table.text
    assert client.get(f"/run/{key}/search", params={"q": "the"}).status_code == 200
