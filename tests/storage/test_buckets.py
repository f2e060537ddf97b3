"""Workdirs in a bucket, against a real S3 server on 127.0.0.1 (moto's, tests/conftest.py):
object paths, leases by conditional puts, commits by a conditional manifest put, verify and gc."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from inversescope.storage.activations import STORE, ActivationStore, RegionWriter, create_store
from inversescope.storage.artifacts import MANIFEST, ArtifactStore
from inversescope.storage.buckets import BucketError, ObjectPath, redact
from inversescope.storage.files import location
from inversescope.storage.locks import LockLost, ObjectLease, host_name
from inversescope.storage.verify import CORRUPT, STALE, collect_garbage, verify_workdir


def test_a_bucket_path_behaves_like_a_directory(bucket):
    root = location(f"{bucket}/runs")
    assert isinstance(root, ObjectPath) and str(root) == f"{bucket}/runs"
    assert not root.exists()
    (root / "a" / "b.json").write_text('{"x": 1}')
    (root / "a" / "c" / "d.txt").write_bytes(b"d")
    assert root.is_dir() and (root / "a").is_dir() and not (root / "a").is_file()
    assert (root / "a" / "b.json").is_file() and (root / "a" / "b.json").stat().st_size == 8
    assert json.loads((root / "a" / "b.json").read_text()) == {"x": 1}
    assert [p.name for p in (root / "a").iterdir()] == ["b.json", "c"]
    assert [p.name for p in root.glob("a/*.json")] == ["b.json"]
    assert [str(p.relative_to(root)) for p in root.files()] == ["a/b.json", "a/c/d.txt"]
    with pytest.raises(FileNotFoundError):
        (root / "missing").read_bytes()
    (root / "a").rmtree()
    assert not root.exists()
    assert location("file:///tmp/x") == location("/tmp/x")
    with pytest.raises(ValueError, match="unsupported scheme ftp://"):
        location("ftp://host/x")


def test_a_missing_bucket_is_one_line_without_the_secret(s3_server):
    path = location("s3://no-such-bucket-here/runs")
    with pytest.raises(OSError) as e:
        (path / "x").write_bytes(b"x")
    assert "\n" not in str(e.value)
    assert s3_server[1]["AWS_SECRET_ACCESS_KEY"] not in str(e.value)
    assert redact(f"key {s3_server[1]['AWS_SECRET_ACCESS_KEY']}") == "key ***"
    assert issubclass(BucketError, OSError)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lease_is_exclusive_renewed_and_released(bucket):
    path = location(bucket) / "stage" / ".k.lease"
    first = ObjectLease(path, lease=2.0)
    first.acquire()
    held = json.loads(path.read_text())
    assert held["host"] == host_name() and held["token"] == first.token
    with pytest.raises(TimeoutError):
        ObjectLease(path, lease=2.0, timeout=0.5).acquire()
    time.sleep(1.2)  # renewed every lease / 4 by its thread
    assert json.loads(path.read_text())["expires"] > held["expires"]
    second, got = ObjectLease(path, lease=2.0), []
    waiter = threading.Thread(target=lambda: got.append(second.acquire()))
    waiter.start()
    time.sleep(0.5)
    assert not got  # still waiting
    first.release()
    waiter.join(timeout=10)
    assert got == [None] and json.loads(path.read_text())["token"] == second.token
    second.release()


def test_dead_and_expired_holders_lose_the_lease(bucket):
    path = location(bucket) / ".k.lease"
    body = {"host": host_name(), "pid": _dead_pid(), "token": "t", "expires": time.time() + 600}
    path.write_text(json.dumps(body))
    t0 = time.monotonic()
    with ObjectLease(path, lease=60):  # same host, dead pid: at once
        assert time.monotonic() - t0 < 5
    other = {"host": "elsewhere", "pid": 1, "token": "t", "expires": time.time() - 1}
    path.write_text(json.dumps(other))
    with ObjectLease(path, lease=60) as lease:  # another host, lease expired
        assert json.loads(path.read_text())["token"] == lease.token


def test_a_holder_whose_lease_was_taken_over_cannot_renew(bucket):
    path = location(bucket) / ".k.lease"
    lease = ObjectLease(path, lease=60)
    lease.acquire()
    path.write_text(json.dumps({"host": "x", "pid": 1, "token": "other", "expires": 1e12}))
    with pytest.raises(LockLost):
        lease.renew()
    lease.release()  # logs that it was no longer ours, leaves the other's lease alone
    assert json.loads(path.read_text())["token"] == "other"


def test_two_writers_racing_on_one_key_commit_once(bucket):
    """Both build (no lock: as if a lease lapsed), both put the manifest at once: exactly one
    commits, the other gets the winner's artifact and its own build is removed."""
    stores = [ArtifactStore(f"{bucket}/runs") for _ in range(2)]
    builds = [s.begin("prior", "k1", resumable=False) for s in stores]
    assert builds[0] != builds[1]
    for i, build in enumerate(builds):
        (build / "train.parquet").write_bytes(f"writer {i}".encode())
    barrier, results = threading.Barrier(2), [None, None]

    def commit(i):
        barrier.wait()
        results[i] = stores[i].commit("prior", "k1", {"metrics": {"writer": i}})

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results[0].path == results[1].path
    winner = results[0].manifest["metrics"]["writer"]
    assert (results[0].path / "train.parquet").read_bytes() == f"writer {winner}".encode()
    assert not builds[1 - winner].exists()  # the loser's build is gone
    assert ArtifactStore(f"{bucket}/runs").lookup("prior", "k1").path == builds[winner]


def test_a_resumable_stage_adopts_the_build_a_killed_run_left(bucket):
    first = ArtifactStore(bucket).begin("extract", "k", resumable=True)
    (first / ".shards" / "train-0.json").write_text("{}")
    again = ArtifactStore(bucket).begin("extract", "k", resumable=True)
    assert again == first
    fresh = ArtifactStore(bucket).begin("prior", "k", resumable=False)
    assert fresh != first and fresh.parent.name == "k"


def _committed_store(bucket) -> ArtifactStore:
    store = ArtifactStore(f"{bucket}/runs")
    out = store.begin("extract", "k", resumable=True)
    create_store(out, {"test": 8}, {"L0H1": 4, "L1.attn": 8}, 4, "float32", {"x": 1})
    writer = RegionWriter(out, "test", ["L0H1", "L1.attn"])
    rng = np.random.default_rng(0)
    for start in (0, 4):
        writer.write(start, {"L0H1": rng.random((4, 4)), "L1.attn": rng.random((4, 8))})
    store.commit("extract", "k", {"metrics": {}})
    return store


def test_verify_names_a_corrupt_chunk_and_corrupt_metadata(bucket):
    store = _committed_store(bucket)
    art = store.require("extract", "k")
    assert np.isfinite(ActivationStore(art.path).read("test", "L0H1")).all()
    assert verify_workdir(store.workdir).ok
    chunk = art.path / STORE / "test" / "L0H1" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    meta = art.path / STORE / "test" / "L1.attn" / "zarr.json"
    meta.write_text(meta.read_text()[:-20])
    found = {str(f.path): f.detail for f in verify_workdir(store.workdir).findings}
    assert set(found) == {str(chunk), str(meta)}
    assert "metadata of node test/L1.attn: JSONDecodeError" in found[str(meta)]


def test_gc_removes_an_orphaned_build_prefix(bucket):
    store = _committed_store(bucket)
    art = store.require("extract", "k")
    orphan = store.workdir / "extract" / "k" / "b20260101T000000-00000000"
    (orphan / "activations.zarr" / "zarr.json").write_text("{}")
    other = store.workdir / "prior" / "k2" / "b20260101T000000-11111111"
    (other / "train.parquet").write_bytes(b"half")
    report = verify_workdir(store.workdir)
    assert {(f.kind, str(f.path)) for f in report.findings} == {
        (STALE, str(orphan)),
        (STALE, str(other)),
    }
    gc = collect_garbage(store.workdir)
    assert {str(r.path) for r in gc.removed} == {str(orphan), str(other)}
    assert not orphan.exists() and not other.exists()
    assert store.require("extract", "k").path == art.path  # the committed build stays
    assert verify_workdir(store.workdir).ok
    (art.path.parent / MANIFEST).write_text("{")  # a broken manifest names no build
    found = {(f.kind, str(f.path)) for f in verify_workdir(store.workdir).findings}
    assert found == {(CORRUPT, str(art.path.parent / MANIFEST)), (STALE, str(art.path))}


def test_where_artifacts_live_is_in_no_key(small):
    """Keys hash what a stage computes, not where its bytes go: the bucket backend is imported
    only once a workdir is a URL, so a local and a bucket run of one config share every key
    (tests/service/test_bucket_workdir.py builds both and compares their bytes)."""
    from inversescope.config import load_run_config
    from inversescope.flows.stage import STAGE_ORDER, stage_code
    from inversescope.storage.keys import module_closure

    run = load_run_config("ioi-tiny", small)
    for name in STAGE_ORDER:
        modules = dict(module_closure(*stage_code(name, run)))
        assert "inversescope.storage.files" in modules  # the local side is hashed, as before
        assert "inversescope.storage.buckets" not in modules, name
