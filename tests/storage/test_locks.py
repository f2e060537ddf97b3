"""The cross-host stage lock: exclusion between processes on "different hosts", takeover of an
expired lease or a dead holder, renewal, release; two workers building one stage."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from inversescope.storage.locks import LeaseLock, LockLost, host_name


def _env(host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "INVERSESCOPE_HOST"}
    env["HOSTNAME"] = host
    return env


def _write_holder(path, host, pid, expires, token="theirs"):
    body = {"host": host, "pid": pid, "token": token, "expires": expires}
    path.write_text(json.dumps(body) + "\n")


def test_host_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("HOSTNAME", "node-h")
    monkeypatch.delenv("INVERSESCOPE_HOST", raising=False)
    assert host_name() == "node-h"
    monkeypatch.setenv("INVERSESCOPE_HOST", "node-i")
    assert host_name() == "node-i"


HOLD = textwrap.dedent(
    """
    import sys, time
    from inversescope.storage.locks import LeaseLock
    lock_path, log_path, me = sys.argv[1:]
    for _ in range(3):
        with LeaseLock(lock_path, lease=5, poll=0.01, max_poll=0.05):
            with open(log_path, "a") as f:
                f.write(f"start {me}\\n"); f.flush()
            time.sleep(0.05)
            with open(log_path, "a") as f:
                f.write(f"end {me}\\n"); f.flush()
    """
)


def test_processes_on_different_hosts_exclude_each_other(tmp_path):
    lock, log = tmp_path / "x.lease", tmp_path / "log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD, str(lock), str(log), f"node-{i}"], env=_env(f"node-{i}")
        )
        for i in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    lines = log.read_text().split()
    events = list(zip(lines[::2], lines[1::2], strict=True))
    assert len(events) == 18  # 3 processes x 3 holds x (start, end)
    for (start, who), (end, who2) in zip(events[::2], events[1::2], strict=True):
        assert (start, end, who) == ("start", "end", who2)  # nobody entered while held
    assert not lock.exists()


def test_takes_over_an_expired_lease(tmp_path):
    path = tmp_path / "x.lease"
    _write_holder(path, "elsewhere", 1, expires=time.time() - 1)
    t0 = time.monotonic()
    with LeaseLock(path, lease=30) as lock:
        assert time.monotonic() - t0 < 2
        assert json.loads(path.read_text())["token"] == lock.token
    assert not path.exists()


def test_waits_for_a_live_lease_on_another_host(tmp_path):
    path = tmp_path / "x.lease"
    _write_holder(path, "elsewhere", 1, expires=time.time() + 30)
    with pytest.raises(TimeoutError, match="still held"):
        LeaseLock(path, lease=30, timeout=0.5).acquire()
    assert json.loads(path.read_text())["token"] == "theirs"


def test_takes_over_a_dead_pid_on_this_host(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "x.lease"
    _write_holder(path, host_name(), dead.pid, expires=time.time() + 300)
    t0 = time.monotonic()
    with LeaseLock(path, lease=300):
        assert time.monotonic() - t0 < 2


def test_takes_over_a_lock_not_renewed_for_a_lease(tmp_path):
    # the holder's clock runs far ahead (expires is far away), but it stopped renewing
    path = tmp_path / "x.lease"
    _write_holder(path, "elsewhere", 1, expires=time.time() + 3600)
    t0 = time.monotonic()
    with LeaseLock(path, lease=0.5, poll=0.05):
        assert 0.5 <= time.monotonic() - t0 < 3


def test_holder_renews_its_lease(tmp_path, monkeypatch):
    path = tmp_path / "x.lease"
    with LeaseLock(path, lease=0.4) as lock:
        first = json.loads(path.read_text())["expires"]
        monkeypatch.setenv("INVERSESCOPE_HOST", "other-node")
        with pytest.raises(TimeoutError):  # three leases long: renewals keep it held
            LeaseLock(path, lease=0.4, poll=0.05, timeout=1.2).acquire()
        assert json.loads(path.read_text())["token"] == lock.token
        assert json.loads(path.read_text())["expires"] > first


def test_released_on_exit_and_on_error(tmp_path):
    path = tmp_path / "x.lease"
    with LeaseLock(path):
        assert path.exists()
    assert not path.exists()
    with pytest.raises(RuntimeError), LeaseLock(path):
        raise RuntimeError("stage failed")
    assert not path.exists()
    with LeaseLock(path, timeout=0.5):  # free again at once
        pass


def test_a_holder_notices_it_lost_the_lock(tmp_path):
    path = tmp_path / "x.lease"
    lock = LeaseLock(path, lease=60)
    lock.acquire()
    _write_holder(path, "elsewhere", 1, expires=time.time() + 60)  # taken over meanwhile
    with pytest.raises(LockLost):
        lock.renew()
    lock.release()  # leaves the new holder's file alone
    assert json.loads(path.read_text())["token"] == "theirs"


BUILD = textwrap.dedent(
    """
    import json, sys
    from inversescope.config import load_run_config
    from inversescope.flows.stage import run_stage
    run = load_run_config("ioi-tiny", ["prior.n_train=300", "prior.n_test=40"])
    print(json.dumps(run_stage("prior", run, sys.argv[1]).to_json()))
    """
)


def test_two_workers_on_two_hosts_build_a_stage_once(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILD, str(tmp_path)],
            env=_env(f"worker-{i}"),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    assert sorted(r["status"] for r in results) == ["cached", "ran"]
    assert results[0]["key"] == results[1]["key"] and results[0]["path"] == results[1]["path"]
    assert not list((tmp_path / "prior").glob(".*.lease"))
