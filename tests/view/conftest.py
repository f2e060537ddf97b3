"""The view over the session's small run, and workdirs built from it for the bad inputs."""

import shutil

import pytest
from fastapi.testclient import TestClient

import inversescope
from inversescope.view import create_app


@pytest.fixture(scope="session")
def view_run(small_run):
    """(workdir, the small run opened through the API)."""
    return small_run[0], inversescope.open(small_run[0])


@pytest.fixture(scope="session")
def client(small_run):
    """The view of the small run's workdir (it reads only; the run must not change)."""
    return TestClient(create_app(small_run[0]))


@pytest.fixture()
def copy_of_run(small_run, tmp_path):
    """A copy of the small run's workdir that a test may break."""
    dst = tmp_path / "runs"
    shutil.copytree(small_run[0], dst)
    return dst


@pytest.fixture(scope="session")
def methods_workdir(small_run, build_run, tmp_path_factory):
    """The small run's workdir plus complete runs of inversionview and the prior on the same
    sites and references (the shared stages are copied, so only their own stages build)."""
    dst = tmp_path_factory.mktemp("methods") / "runs"
    shutil.copytree(small_run[0], dst)
    for method in ("inversionview", "prior"):
        build_run(dst, [f"controls.method={method}"])
    return dst
