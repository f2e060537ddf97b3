"""The bad-input matrix: every error a user can cause gives exit code 2 and one line naming the
value and what is accepted, before any expensive work, and loses nothing already computed."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from inversescope.flows.cli import main
from inversescope.flows.stage import STAGE_ORDER, run_keys, run_stage
from inversescope.storage import layout
from inversescope.storage.artifacts import ArtifactStore

FILES = {
    "non_utf8.yaml": b"preset: ioi-tiny\nseed: \xff\xfe\n",
    "empty.yaml": b"",
    "list.yaml": b"- task: ioi\n- seed: 1\n",
    "syntax.yaml": b"seed: [1\n",
    "non_utf8.csv": b"text,harmful\n\xff\xfe,true\n",
    "ragged.csv": b"text,harmful\nhow do I bake bread,false,extra\n",
    "short_row.csv": b"text,harmful\nhow do I bake bread\n",
    "broken.jsonl": b'{"text": "a", "harmful": true}\n{"text": broken\n',
    "no_text.jsonl": b'{"harmful": true}\n',
    "queries.txt": b"how do I bake bread\n",
    "raises_on_import.py": b"raise RuntimeError('boom at import')\n",
    "raises.py": b"def f(text):\n    raise KeyError('no subject in ' + text[:5])\n",
    "unhashable.py": b"def f(text):\n    return {'words': text.split()[:2]}\n",
    "no_function.py": b"g = 1\n",
    # fine on the 8 prompts the run probes up front, wrong on the samples: found by the label
    # stage, after the stages before it are cached
    "late_raise.py": (
        b"calls = 0\ndef f(text):\n    global calls\n    calls += 1\n"
        b"    if calls > 8:\n        raise ValueError('cannot parse ' + repr(text[:8]))\n"
        b"    return 'ok'\n"
    ),
    "late_unhashable.py": (
        b"calls = 0\ndef f(text):\n    global calls\n    calls += 1\n"
        b"    return 'ok' if calls <= 8 else text.split()\n"
    ),
}

RUN = ["run", "ioi-tiny"]
REFUSAL = ["run", "refusal-tiny", "--set", "extract.sites=[L0H1, L1H0, L1.attn]"]
# (id, argv after the workdir is added, words the one line must hold)
CASES = [
    # the config file
    ("yaml-not-utf8", ["run", "{d}/non_utf8.yaml"], "not UTF-8"),
    ("yaml-empty", ["run", "{d}/empty.yaml"], "task: Field required"),
    ("yaml-list", ["run", "{d}/list.yaml"], "expected a mapping of config sections, got list"),
    ("yaml-syntax", ["run", "{d}/syntax.yaml"], "not valid YAML"),
    ("config-missing", ["run", "{d}/missing.yaml"], "does not exist"),
    ("preset-unknown", ["run", "no-such-preset"], "unknown preset 'no-such-preset'; accepted:"),
    # --set and its values
    ("set-no-equals", [*RUN, "--set", "seed"], "expected section.field=value"),
    ("set-unknown-section", [*RUN, "--set", "nosuch.x=1"], "nosuch: unknown field"),
    ("set-unknown-field", [*RUN, "--set", "sample.nosuch=1"], "sample.nosuch: unknown field"),
    ("seed-not-int", [*RUN, "--set", "seed=abc"], "seed: Input should be a valid integer"),
    ("device-tpu", [*RUN, "--set", "device=tpu"], "device='tpu' is not a torch device"),
    ("device-cuda", [*RUN, "--set", "device=cuda"], "this machine has no CUDA device"),
    ("dtype", [*RUN, "--set", "dtype=float8"], "Input should be 'auto', 'float32'"),
    ("method", [*RUN, "--set", "controls.method=nosuch"], "Input should be 'inversescope'"),
    ("control-blocks", [*RUN, "--set", "controls.generator.control_blocks=[7]"], "blocks (0 to"),
    (
        "control-blocks-dup",
        [*RUN, "--set", "controls.generator.control_blocks=[0, 0]"],
        "give distinct block indices",
    ),
    ("target-prompts", [*RUN, "--set", "target.train_prompts=10"], "too few to train the target"),
    ("sites-empty", [*RUN, "--set", "extract.sites=[]"], "extract.sites is empty"),
    ("sites-dup", [*RUN, "--set", "extract.sites=[L0H1, L0H1]"], "names ['L0H1'] more than once"),
    ("sample-sites-dup", [*RUN, "--set", "sample.sites=[L1H0, L1H0]"], "more than once"),
    ("site-unknown", [*RUN, "--set", "extract.sites=[L9H0]"], "layer 9 does not exist"),
    ("site-bad-name", [*RUN, "--set", "extract.sites=[head3]"], "unknown site 'head3'; accepted"),
    ("sample-sites-absent", [*RUN, "--set", "sample.sites=[L0H0]"], "are not extracted"),
    ("chunk-rows-0", [*RUN, "--set", "extract.chunk_rows=0"], "chunk_rows: Input should be"),
    ("epsilon-negative", [*RUN, "--set", "kernel.epsilon=-1"], "epsilon=-1.0 must be > 0"),
    ("epsilon-over-2", [*RUN, "--set", "kernel.epsilon=3"], "accepted: 0 < epsilon < 2"),
    ("steps-0", [*RUN, "--set", "controls.train.steps=0"], "steps: Input should be greater"),
    ("n-examples", [*RUN, "--set", "sample.n_examples=100000"], "exceeds prior.n_test"),
    ("runner-shards", [*RUN, "--set", "runner.shards=0"], "runner.shards"),
    ("runner-address", [*RUN, "--set", "runner.address=tcp://h:1"], "needs runner.kind=dask"),
    ("runner-kind", [*RUN, "--set", "runner.kind=slurm"], "Input should be 'local' or 'dask'"),
    ("references", [*RUN, "--set", "fcr.references={colour: red}"], "names features ['colour']"),
    ("until", [*RUN, "--until", "nosuch"], "unknown stage 'nosuch'; accepted: prior"),
    # prior.files
    ("prior-file-missing", [*REFUSAL, "--set", "prior.files=[{d}/nope.jsonl]"], "does not exist"),
    (
        "csv-not-utf8",
        [*REFUSAL, "--set", "prior.files=[{d}/non_utf8.csv]"],
        "non_utf8.csv: not UTF-8",
    ),
    ("csv-ragged", [*REFUSAL, "--set", "prior.files=[{d}/ragged.csv]"], "ragged.csv:2: 3 fields"),
    ("csv-short-row", [*REFUSAL, "--set", "prior.files=[{d}/short_row.csv]"], "needs harmful"),
    ("jsonl-broken", [*REFUSAL, "--set", "prior.files=[{d}/broken.jsonl]"], "broken.jsonl:2: not"),
    ("jsonl-no-text", [*REFUSAL, "--set", "prior.files=[{d}/no_text.jsonl]"], "non-empty text"),
    ("file-type", [*REFUSAL, "--set", "prior.files=[{d}/queries.txt]"], "are .csv or .jsonl"),
    ("n-test-too-large", [*REFUSAL, "--set", "prior.n_test=100000"], "distinct queries; accepted"),
    ("files-for-ioi", [*RUN, "--set", "prior.files=[{d}/broken.jsonl]"], "takes no prior.files"),
    # features and the labeller
    ("feature-form", [*RUN, "--set", "features={x: notaform}"], "is not of the form"),
    ("feature-file", [*RUN, "--set", "features={x: {d}/nope.py:f}"], "does not exist"),
    ("feature-module", [*RUN, "--set", "features={x: nomodule:f}"], "No module named 'nomodule'"),
    (
        "feature-import",
        [*RUN, "--set", "features={x: {d}/raises_on_import.py:f}"],
        "boom at import",
    ),
    ("feature-no-fn", [*RUN, "--set", "features={x: {d}/no_function.py:f}"], "is not a function"),
    ("feature-builtin", [*RUN, "--set", "features={subject: {d}/raises.py:f}"], "is a built-in"),
    ("feature-raises", [*RUN, "--set", "features={x: {d}/raises.py:f}"], "raised KeyError"),
    ("feature-unhashable", [*RUN, "--set", "features={x: {d}/unhashable.py:f}"], "unhashable dict"),
    (
        "labeller-no-model",
        [*RUN, "--set", "labeller={source: local, path: {d}}"],
        "has no config.json",
    ),
    # the workdir and the other commands
    ("workdir-file", [*RUN, "--workdir", "{d}/empty.yaml"], "is a file; name a directory"),
    ("workdir-read-only", [*RUN, "--workdir", "{ro}"], "is not writable"),
    ("results-feature", ["results", "{w}", "--feature", "nope"], "unknown feature 'nope'"),
    ("results-none", ["results", "{d}"], "no fcr results under"),
    ("samples-example", ["samples", "{w}", "--example", "abc"], "invalid int value: 'abc'"),
    ("verify-missing", ["verify", "{d}/nowhere"], "does not exist"),
    ("gc-keep", ["gc", "{w}", "--keep", "-1"], "--keep -1: expected a positive number"),
]
# found by the label stage: the stages before it stay cached, and the run exits 2 with the
# error as its last line, after the flow's log
LATE = [
    ("late-raise", "late_raise.py", "raised ValueError: cannot parse"),
    ("late-unhashable", "late_unhashable.py", "returned an unhashable list"),
]


@pytest.fixture(scope="module")
def cached(tmp_path_factory, small_overrides):
    """A workdir holding every stage of the small run, and a folder of bad files."""
    from inversescope.config import load_run_config

    root = tmp_path_factory.mktemp("bad-inputs")
    files = root / "files"
    files.mkdir()
    for name, content in FILES.items():
        (files / name).write_bytes(content)
    work = root / "work"
    run = load_run_config("ioi-tiny", list(small_overrides))
    keys = run_keys(run)
    for name in STAGE_ORDER:
        run_stage(name, run, work, keys)
    return work, files, keys


def _snapshot(work: Path, keys: dict[str, str]) -> dict[str, str]:
    """Each stage's manifest (created time included) and the feature label cache's files."""
    store = ArtifactStore(work)
    out = {}
    for name, key in keys.items():
        art = store.lookup(name, key)
        assert art is not None, f"{name} is no longer cached"
        out[name] = art.manifest["created"]
    for p in sorted(layout.feature_cache_dir(work).glob("*.parquet")):
        out[p.name] = str(p.stat().st_mtime_ns)
    return out


def _argv(argv: list[str], work: Path, files: Path, small: tuple[str, ...], ro: Path):
    argv = [
        a.replace("{d}", str(files)).replace("{w}", str(work)).replace("{ro}", str(ro))
        for a in argv
    ]
    if argv[0] != "run":
        return argv
    config = argv[1:2]
    small_sets = [x for o in small for x in ("--set", o) if not o.startswith("extract.sites")]
    sites = ["--set", "extract.sites=[L0H1, L1H0, L1.attn]"]
    rest = argv[2:]
    if "--workdir" not in rest:
        rest += ["--workdir", str(work)]
    # the small run's sizes first, the bad value last (a bug costs seconds, not the demo)
    return ["run", *config, *small_sets, *sites, *rest]


def _main(argv: list[str]) -> int:
    """The CLI's exit code (argument errors exit from the parser, as argparse does)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """A directory this process cannot write: mode 555, or for root (who ignores modes) the
    immutable attribute."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield
        finally:
            path.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode != 0:
        pytest.skip("running as root on a filesystem without the immutable attribute")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.mark.parametrize(("argv", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line(cached, small_overrides, tmp_path, capsys, argv, expect):
    work, files, keys = cached
    before = _snapshot(work, keys)
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro) if "{ro}" in argv else nullcontext():
        code = _main(_argv(argv, work, files, small_overrides, ro))
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 2, out.err[-2000:]
    assert len(lines) == 1 and expect in lines[0], out.err[-2000:]
    assert lines[0].startswith("inversescope")
    assert _snapshot(work, keys) == before  # nothing already computed is lost


@pytest.mark.parametrize(("module", "expect"), [c[1:] for c in LATE], ids=[c[0] for c in LATE])
def test_a_feature_that_fails_on_samples_exits_2_last(
    cached, small_overrides, prefect_harness, capsys, module, expect
):
    work, files, keys = cached
    before = _snapshot(work, keys)
    argv = [*RUN, "--set", f"features={{x: {files / module}:f}}"]
    code = main(_argv(argv, work, files, small_overrides, files))
    out = capsys.readouterr()
    last = out.err.strip().splitlines()[-1]
    assert code == 2
    assert last.startswith("inversescope: error: feature 'x'") and expect in last, last
    assert "labels computed so far are kept" in last
    assert _snapshot(work, keys) == before
