"""Builds run in a thread of their own, so that the OpenMP pool a stage's torch work makes goes
with it (``core.threads.in_own_thread``): GNU OpenMP keeps one pool per thread that ever ran a
parallel region, and stale pools made the controls stage of a whole local run 1.6x slower."""

import contextvars
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from inversescope.core.threads import in_own_thread

WHO = contextvars.ContextVar("who", default="nobody")


def _native_threads() -> set[int]:
    """The ids of this process's native threads: sets, not counts, so that a thread an earlier
    test left behind, exiting meanwhile, cannot hide a new one."""
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _parallel_work() -> float:
    a = torch.randn(512, 512)
    return float((a @ a).relu().sum())  # parallel regions on torch's OpenMP pool


@pytest.fixture()
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a pool of one worker per calling thread, even on one core
    yield
    torch.set_num_threads(before)


def _new_threads_settled(base: set[int], timeout: float = 5.0) -> set[int]:
    """The threads started since ``base`` that are still alive once they have had ``timeout``
    seconds to exit (pool workers exit asynchronously)."""
    deadline = time.monotonic() + timeout
    while (new := _native_threads() - base) and time.monotonic() < deadline:
        time.sleep(0.02)
    return new


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux's /proc lists threads")
def test_a_build_in_its_own_thread_leaves_no_openmp_pool_behind(two_torch_threads):
    # the control first: torch work in a long-lived worker keeps a pool thread alive after it
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: None).result()  # the worker exists before we count
        base = _native_threads()
        pool.submit(_parallel_work).result()
        time.sleep(0.2)
        assert _native_threads() - base, "torch's OpenMP pool did not outlive its caller here"
    with ThreadPoolExecutor(1) as pool:
        pool.submit(lambda: None).result()
        base = _native_threads()
        for _ in range(3):  # one build after another, as the stages of a run
            pool.submit(in_own_thread, _parallel_work).result()
        assert _new_threads_settled(base) == set()


def test_the_build_thread_returns_raises_and_sees_the_callers_context():
    def build():
        return WHO.get(), threading.current_thread().name

    def caller():
        WHO.set("the stage task")
        return in_own_thread(build)

    with ThreadPoolExecutor(1, thread_name_prefix="worker") as pool:
        who, name = pool.submit(caller).result()
        assert who == "the stage task"
        assert name.startswith("worker") and name.endswith("-build")

        def fails():
            raise ValueError("feature function raised on example 3")

        with pytest.raises(ValueError, match="example 3"):
            pool.submit(in_own_thread, fails).result()


def test_on_the_main_thread_the_build_runs_in_place():
    assert in_own_thread(lambda: threading.current_thread()) is threading.main_thread()
