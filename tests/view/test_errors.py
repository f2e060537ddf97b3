"""Bad input: each page that cannot be shown says what is missing (404) or what is out of
bounds or unreadable (422), never with a traceback, and the server keeps serving."""

import re
import shutil

import pytest
from fastapi.testclient import TestClient

from inversescope.storage.locks import LeaseLock
from inversescope.view import create_app


def detail(page: str) -> str:
    found = re.search(r'<p class="detail">(.*?)</p>', page, re.S)
    assert found, page[:2000]
    return found.group(1)


def assert_said(r, status: int, *words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:1500])
    assert "Traceback" not in r.text and 'File "' not in r.text
    text = r.text.replace("&#39;", "'").replace("&#34;", '"')
    for w in words:
        assert w in text, (w, detail(r.text))


def test_a_workdir_without_runs(tmp_path):
    client = TestClient(create_app(tmp_path))
    assert_said(client.get("/"), 404, "No complete run", "inversescope run ioi-tiny")
    assert_said(client.get("/run/abc"), 404, "no complete run under", "starting with 'abc'")
    gone = TestClient(create_app(tmp_path / "missing"))
    assert_said(gone.get("/"), 404, "does not exist")


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/run/{key}/site/L7H7", 404, ["site 'L7H7' was not sampled", "L0H1, L1H0, L1.attn"]),
        ("/run/{key}/site/head", 404, ["unknown site 'head'", "L9H6"]),
        ("/run/{key}/site/L0H1?example=99", 404, ["example 99 was not sampled", "0 to 2"]),
        ("/run/{key}/methods?example=-1", 404, ["example -1 was not sampled"]),
        ("/run/{key}/feature/colour", 404, ["feature 'colour'", "item, object, place, subject"]),
        ("/run/{key}/search?feature=colour&relation=same", 404, ["feature 'colour'"]),
        ("/run/nokey", 404, ["has a key starting with 'nokey'"]),
        ("/nowhere", 404, ["nothing is served at /nowhere"]),
        ("/run/{key}/site/L0H1?page=x", 422, ["page", "valid integer", "'x'"]),
        ("/run/{key}/site/L0H1?page=9", 422, ["page=9", "pages 1 to 1"]),
        ("/run/{key}/site/L0H1?per=500", 422, ["per=500", "1 to 20"]),
        ("/run/{key}?sort=colour", 422, ["sort='colour'", "refusal_rate"]),
        ("/run/{key}/search?relation=near&feature=object", 422, ["relation='near'", "differs"]),
        ("/run/{key}/search?relation=same", 422, ["compares a feature"]),
        ("/run/{key}/search?accepted=maybe", 422, ["accepted='maybe'"]),
        ("/run/{key}/invert?n=0&prompt=Mary", 422, ["n=0", "draw 1 to 64"]),
        ("/compare?run={key}", 422, ["exactly two runs", "names 1"]),
    ],
)
def test_unknown_names_and_bad_values_in_the_url(client, view_run, path, status, words):
    _, run = view_run
    assert_said(client.get(path.format(key=run.key)), status, *words)


def test_a_run_without_labels_yet(copy_of_run, view_run):
    """An interrupted run: samples committed, no label (and so no fcr) artifact."""
    _, run = view_run
    shutil.rmtree(copy_of_run / "label")
    shutil.rmtree(copy_of_run / "fcr")
    client = TestClient(create_app(copy_of_run))
    sample_key = run.artifacts["sample"].key
    assert_said(client.get("/"), 404, "No complete run", f"sample {sample_key}", "no labels yet")
    assert_said(client.get(f"/run/{run.key}"), 404, "no complete run")


def test_a_run_whose_labels_were_removed(copy_of_run, view_run):
    _, run = view_run
    shutil.rmtree(copy_of_run / "label" / run.artifacts["label"].key)
    client = TestClient(create_app(copy_of_run))
    assert_said(client.get(f"/run/{run.key}"), 404, "is incomplete", "label/", "is missing")
    assert client.get("/").status_code == 200  # the run is listed: its fcr manifest is there


def test_a_corrupt_parquet_file_is_named_and_the_server_keeps_serving(copy_of_run, view_run):
    _, run = view_run
    results = copy_of_run / "fcr" / run.key / "results.parquet"
    results.write_bytes(b"PAR1 not parquet" * 4)
    part = next(
        (copy_of_run / "sample" / run.artifacts["sample"].key / "samples" / "L1H0").glob(
            "*.parquet"
        )
    )
    part.write_bytes(part.read_bytes()[:40])  # truncated
    client = TestClient(create_app(copy_of_run))
    r = client.get(f"/run/{run.key}")
    assert_said(r, 422, "Cannot read the FCR table", "results.parquet", "inversescope verify")
    assert_said(client.get(f"/run/{run.key}/site/L1H0"), 422, "Cannot read", "inversescope verify")
    assert client.get("/").status_code == 200
    assert_said(client.get(f"/run/{run.key}/search?q=a"), 422, "Cannot read the samples")


def test_a_run_still_being_written(copy_of_run, view_run):
    """A newer build holds its lock: the runs page names it; its key answers 404 saying so."""
    _, run = view_run
    key = "f" * 16
    (copy_of_run / "fcr" / f".partial-{key}").mkdir()
    with LeaseLock(copy_of_run / "fcr" / f".{key}.lease"):
        client = TestClient(create_app(copy_of_run))
        listing = client.get("/")
        assert listing.status_code == 200 and f"fcr {key}: being written" in listing.text
        assert_said(client.get(f"/run/{key}"), 404, "is not complete", "being written")
    stale = TestClient(create_app(copy_of_run)).get("/")  # the lock is gone: interrupted
    assert f"fcr {key}: interrupted (stale partial)" in stale.text


def test_an_unexpected_error_answers_500_without_a_traceback(view_run, small_run, monkeypatch):
    from inversescope.view import data

    _, run = view_run
    client = TestClient(create_app(small_run[0]), raise_server_exceptions=False)

    def broken(self, site):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(data.RunData, "distances", broken)
    r = client.get(f"/run/{run.key}/site/L0H1")
    assert_said(r, 500, "RuntimeError: disk on fire", "server's log")
    assert "second line" not in r.text
    assert client.get(f"/run/{run.key}").status_code == 200  # the other pages keep working
