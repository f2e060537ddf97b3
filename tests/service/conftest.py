"""A throwaway cluster on this machine: PostgreSQL 15, a Prefect server on it, a process work
pool and one worker. Everything started here is stopped on every path (process groups killed,
PostgreSQL stopped with ``-m immediate``, temporary directories removed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PREFECT_VERSION = "3.9.1"
POOL = "gpu-pool"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group (and any descendant that left it), then SIGKILL."""
    if proc.poll() is not None:
        return
    stray = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _ensure_postgres() -> None:
    if (PG_BIN / "initdb").exists():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "postgresql-15"], check=True, env=env, capture_output=True
    )


def _as_postgres(cmd: list[str]) -> list[str]:
    # the server refuses to run as root: run PostgreSQL's tools as the postgres user
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass(frozen=True)
class Postgres:
    port: int
    url: str  # for Prefect: postgresql+asyncpg://...


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    _ensure_postgres()
    root = Path(tempfile.mkdtemp(prefix="inversescope-pg-"))
    data, port = root / "data", free_port()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    started = False
    try:
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E",
                 "UTF8", "--no-sync"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = True
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
                 "-w", "-t", "60", "start"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                 "prefect"]
            ),
            check=True,
            capture_output=True,
        )  # fmt: skip
        yield Postgres(port, f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect")
    finally:
        if started:
            subprocess.run(
                _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
            )
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Cluster:
    api: str  # http://127.0.0.1:PORT/api
    env: dict[str, str]  # what a client of this server needs (PREFECT_API_URL, PREFECT_HOME)
    workdir: Path  # the shared artifact directory
    pool: str
    logs: Path


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_EXTRA_LOGGERS="inversescope",
    )
    return env


def _wait_healthy(api: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def prefect_server(postgres) -> Iterator[tuple[str, dict[str, str], Path]]:
    """``prefect server start`` on the PostgreSQL cluster: (api url, client env, temp root)."""
    root = Path(tempfile.mkdtemp(prefix="inversescope-prefect-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _base_env(root / "home")
    log = root / "server.log"
    server_env = {
        **env,
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url,
        "PREFECT_UI_API_URL": api,  # the UI's own calls (default: port 4200)
    }
    proc = None
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                env=server_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=root,
            )
        _wait_healthy(api, proc, log)
        yield api, {**env, "PREFECT_API_URL": api}, root
    finally:
        if proc is not None:
            stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(prefect_server) -> Iterator[Cluster]:
    """A process work pool, one worker polling it every second, and a shared workdir."""
    api, env, root = prefect_server
    workdir = root / "shared" / "runs"
    workdir.mkdir(parents=True)
    subprocess.run(
        ["prefect", "work-pool", "create", POOL, "--type", "process"],
        env=env,
        check=True,
        capture_output=True,
        cwd=root,
    )
    log = root / "worker.log"
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "HOSTNAME": "gpu-node-1"}
    proc = None
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["prefect", "worker", "start", "--pool", POOL, "--type", "process"],
                env=worker_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=root,
            )
        yield Cluster(api, env, workdir, POOL, log)
    finally:
        if proc is not None:
            stop_process(proc)
