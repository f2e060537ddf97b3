"""``inversescope view`` as a command, and where a user meets it: the last lines of
``inversescope run`` and the fcr stage's Prefect table artifact."""

import httpx
import pytest
from view_server import running_view

from inversescope.flows import cli, pipeline


def test_view_serves_the_workdir_on_loopback_by_default(small_run):
    with running_view(str(small_run[0])) as (_, url):
        assert url.startswith("http://127.0.0.1:")
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200 and "ioi-tiny" in r.text
        assert httpx.get(url + "static/view.css", timeout=30).status_code == 200


def test_view_on_every_interface_warns_who_can_read_the_results(small_run):
    with running_view(str(small_run[0]), "--host", "0.0.0.0") as (proc, url):
        assert httpx.get(url.replace("0.0.0.0", "127.0.0.1"), timeout=30).status_code == 200
    warning = proc.stderr.read()
    assert "warning: listening on 0.0.0.0" in warning
    assert "anyone who can reach port" in warning and str(small_run[0]) in warning


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["view", "/no/such/dir"], "workdir '/no/such/dir' does not exist"),
        (["view", ".", "--port", "70000"], "--port 70000: expected 0 to 65535"),
        (["view", ".", "--threads", "-1"], "--threads -1"),
        (["view", ".", "--host", "203.0.113.9"], "--host 203.0.113.9 --port 0: cannot listen"),
    ],
)
def test_view_refuses_bad_arguments_in_one_line(argv, said, capsys):
    if "--host" in argv:
        argv = [*argv, "--port", "0"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert said in err and len(err.splitlines()) == 1


def test_run_ends_by_naming_the_view(small_run, small, capsys):
    """A run whose stages are all cached (no Prefect server) prints the FCR table, then the
    command that browses it."""
    workdir = str(small_run[0])
    sets = [a for o in small for a in ("--set", o)]
    assert cli.main(["run", "ioi-tiny", "--workdir", workdir, *sets]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert f"Browse it: inversescope view {workdir}" in out[-2:]


def test_the_stages_table_artifact_names_the_view(monkeypatch):
    made = {}

    def create_table_artifact(rows, key, description):
        made.update(rows=rows, key=key, description=description)

    class Logger:
        def info(self, *args):
            pass

    monkeypatch.setattr("prefect.artifacts.create_table_artifact", create_table_artifact)
    monkeypatch.setattr(pipeline, "get_run_logger", Logger)
    result = {"status": "ran", "key": "k", "path": "/w/fcr/k", "seconds": 1.0}
    pipeline._report({"label": result, "fcr": result}, "/w")
    assert made["key"] == pipeline.STAGES_ARTIFACT
    assert made["description"].endswith("Browse the results: `inversescope view /w`")
    pipeline._report({"prior": result}, "/w")  # stopped before fcr: nothing to browse yet
    assert "inversescope view" not in made["description"]
