"""Fault injection: ``kill -9`` of the whole run at points spread over every stage, then a rerun.

Each case copies the committed upstream artifacts of an uninterrupted reference run, starts
``inversescope run`` in a process group of its own with ``INVERSESCOPE_FAULT`` armed (a step,
row, sample or text counter, or a point of the commit), and checks that the fault fired and
took the whole group down with SIGKILL (the session's Prefect server lies outside the group;
one case runs on a temporary server of its own, inside it). The rerun must then finish, never
take the killed stage's directory for a cached artifact, resume where the stage keeps its work
(training checkpoints, extract chunks, sample units, the labeller's SQLite memo), and leave
artifacts byte-identical to the reference run's, with ``inversescope verify`` clean.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from inversescope.config import load_run_config
from inversescope.flows.stage import STAGE_ORDER, run_keys
from inversescope.storage.artifacts import ArtifactStore

pytestmark = pytest.mark.slow

TRAIN = "{steps: 30, batch_size: 16, lr: 0.001, warmup: 2, eval_every: 10, checkpoint_every: 10}"
# the tests' small run, with 64-row chunks (six of them) and 30 training steps, checkpointed
# every 10, in each training stage
SUITE = [
    "extract.chunk_rows=64",
    f"target.train={TRAIN}",
    "backbone.source=train",  # ioi-tiny starts from the target's weights; the suite trains
    "backbone.finetune=full",  # the backbone, so that its checkpoints are killed and resumed too
    f"backbone.train={TRAIN}",
    f"controls.train={TRAIN}",
]
REFUSAL = [
    "prior.files=[data:refusal_toy.jsonl]",
    "extract.sites=[L0H1, L1H0, L1.attn]",
    "labeller={source: target, batch_size: 2}",
]
RESUMED = r"resuming from the checkpoint at step {} of 30"
# The cases run on the session's Prefect server (a temporary server's start-up, about 10 s of
# each run, twice a case, was a third of this suite's time), except this one, which runs as a
# user runs it: on a temporary server of its own, killed with the run's process group.
OWN_SERVER = ("ioi", "controls", "steps@15")
# (task, stage, point, evidence in the rerun's log that it resumed, or None: it starts over)
CASES = [
    ("ioi", "prior", "start", None),
    ("ioi", "prior", "built", None),
    ("ioi", "prior", "renamed", None),
    ("ioi", "target", "steps@5", None),  # before the first checkpoint
    ("ioi", "target", "steps@25", RESUMED.format(20)),
    ("ioi", "target", "built", None),
    ("ioi", "target", "renamed", None),
    ("ioi", "extract", "rows@40", None),  # inside the first chunk
    ("ioi", "extract", "rows@100", r"extract: resuming, 64 of 340 rows already written"),
    ("ioi", "extract", "rows@300", r"extract: resuming, 256 of 340 rows already written"),
    ("ioi", "extract", "renamed", None),
    ("ioi", "backbone", "steps@15", RESUMED.format(10)),
    ("ioi", "backbone", "steps@30", RESUMED.format(20)),  # last step, before the save
    ("ioi", "controls", "steps@3", None),
    ("ioi", "controls", "steps@15", RESUMED.format(10)),
    ("ioi", "controls", "steps@29", RESUMED.format(20)),
    ("ioi", "controls", "built", None),
    ("ioi", "sample", "samples@6", None),  # inside the first unit
    ("ioi", "sample", "samples@30", r"sample: resuming, 2 of 3 units already done"),
    ("ioi", "sample", "renamed", None),
    ("ioi", "label", "start", None),
    ("ioi", "label", "built", None),
    ("ioi", "fcr", "start", None),
    ("ioi", "fcr", "built", None),
    ("ioi", "fcr", "renamed", None),
    ("refusal", "label", "texts@4", "labeller memo"),
    ("refusal", "label", "renamed", None),
]


def _config(task: str, small: tuple[str, ...]) -> tuple[str, list[str]]:
    preset = f"{task}-tiny"
    return preset, [*small, *SUITE, *(REFUSAL if task == "refusal" else [])]


def _run(
    workdir: Path,
    preset: str,
    overrides: list[str],
    fault: str | None = None,
    api: str | None = None,
):
    """``inversescope run`` in a process group of its own, on the Prefect server at ``api``
    (None: a temporary server of its own, in the group)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("INVERSESCOPE_FAULT") and k != "PREFECT_API_URL"
    }
    if api is not None:
        env["PREFECT_API_URL"] = api
    if fault is not None:
        env |= {"INVERSESCOPE_FAULT": fault, "INVERSESCOPE_FAULT_SCOPE": "group"}
    argv = [sys.executable, "-m", "inversescope.flows.cli", "run", preset, "--json"]
    argv += ["--workdir", str(workdir)]
    for o in overrides:
        argv += ["--set", o]
    # a process group of its own: the fault kills the run and its Prefect server, not pytest
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=600)
    except BaseException:  # a hung run, or pytest interrupted: leave no server behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.fixture(scope="module")
def api(prefect_harness) -> str:
    """The session's Prefect server, for the runs of this suite."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def references(tmp_path_factory, small_overrides, api):
    """The uninterrupted run of each task: its workdir, config and keys."""
    out = {}
    for task in ("ioi", "refusal"):
        preset, overrides = _config(task, small_overrides)
        wd = tmp_path_factory.mktemp(f"ref-{task}")
        done = _run(wd, preset, overrides, api=api)
        assert done.returncode == 0, done.stderr[-3000:]
        keys = run_keys(load_run_config(preset, overrides))
        out[task] = (wd, preset, overrides, keys, done.stdout + done.stderr)
    return out


@pytest.mark.parametrize(
    "task,stage,point,evidence", CASES, ids=[f"{t}-{s}-{p}" for t, s, p, _ in CASES]
)
def test_killed_run_resumes_to_identical_artifacts(
    references, api, artifact_files, tmp_path, task, stage, point, evidence
):
    ref, preset, overrides, keys, ref_log = references[task]
    wd, flag = tmp_path / "wd", tmp_path / "fired"
    for name in STAGE_ORDER[: STAGE_ORDER.index(stage)]:
        shutil.copytree(ref / name / keys[name], wd / name / keys[name])
    server = None if (task, stage, point) == OWN_SERVER else api

    killed = _run(wd, preset, overrides, f"{stage}:{point}:{flag}", server)
    log = killed.stdout + killed.stderr
    assert killed.returncode == -9, log[-3000:]  # SIGKILL, the process group's leader included
    assert flag.exists() and "fault injected at" in log
    store = ArtifactStore(wd)
    assert store.lookup(stage, keys[stage]) is None  # not committed, whatever lies on disk
    memo = wd / "label" / "labeller.sqlite"
    if evidence == "labeller memo":  # killed while labelling: what it labelled is kept
        with sqlite3.connect(memo) as db:
            kept = db.execute("SELECT COUNT(*) FROM memo").fetchone()[0]
        assert kept > 0

    rerun = _run(wd, preset, overrides, api=server)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    stages = json.loads(rerun.stdout.strip().splitlines()[-1])["stages"]
    assert stages[stage]["status"] == "ran"  # a directory without a manifest is never cached
    if evidence is None:
        assert "resuming" not in log
    elif evidence == "labeller memo":
        # the first labeller feature, the one killed: the rerun scores only what was not kept
        todo = re.compile(r"label\[labeller\]: \d+/(\d+) texts")
        assert int(todo.findall(log)[0]) == int(todo.findall(ref_log)[0]) - kept
    else:
        assert re.search(evidence, log), log[-3000:]

    for name in STAGE_ORDER:
        got = artifact_files(wd / name / keys[name])
        want = artifact_files(ref / name / keys[name])
        assert got.keys() == want.keys(), name
        assert [k for k in want if got[k] != want[k]] == [], name
    check = subprocess.run(
        [sys.executable, "-m", "inversescope.flows.cli", "verify", str(wd)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
