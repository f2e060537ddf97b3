"""The research loop's wall times on a built run: a new hypothesis scored through the Python
API against the old way (write it to a file, rerun the flow), and a cached CLI rerun.

    python benchmarks/research_loop.py --workdir runs [--set section.field=value ...]

``--workdir`` must hold a complete run of ``--preset`` built with the same ``--set`` values.
Times, in this one process and in subprocesses of the installed ``inversescope``:
(a) ``Run.score`` of a plain-Python feature the cache has never seen (a new source text each
repeat), warm: the run opened and its tables read once before; (b) the same feature scored
again (a cache hit); (c) ``Run.fcr_at`` at another ε; (d) ``inversescope run`` with every stage
cached; (e) the old way: a new feature in a file, ``inversescope run --set features.x=FILE:FN``
(reruns label and fcr on a temporary Prefect server). Writes benchmarks/out/research_loop.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_result

import inversescope


def feature_source(i: int) -> str:
    return (
        f"def word_{i}(text):\n"
        "    words = text.split()\n"
        f"    return words[{i % 3 + 1}] if len(words) > {i % 3 + 1} else None\n"
    )


def new_feature(i: int):
    namespace: dict = {"__name__": "__main__"}
    path = Path(tempfile.mkdtemp()) / f"cell_{i}.py"  # as a notebook cell: its own source
    path.write_text(feature_source(i))
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace[f"word_{i}"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def cli(args: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    t0 = time.perf_counter()
    out = subprocess.run(["inversescope", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"inversescope {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="ioi-tiny")
    ap.add_argument("--workdir", default="runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "research_loop.json"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    run = inversescope.open(args.workdir, preset=args.preset)
    run.score(new_feature(0))  # reads the samples, references and labels once
    open_and_first = time.perf_counter() - t0
    fresh = [timed(lambda i=i: run.score(new_feature(1000 + i))) for i in range(args.repeats)]
    again_fn = new_feature(1000)
    cached = [timed(lambda: run.score(again_fn)) for _ in range(args.repeats)]
    other_eps = [timed(lambda: run.fcr_at(0.2)) for _ in range(args.repeats)]

    sets = [x for o in args.overrides for x in ("--set", o)]
    base = ["run", args.preset, "--workdir", args.workdir, *sets]
    cached_rerun = [cli(base) for _ in range(3)]
    old_way = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            f = Path(tmp) / f"feature_{i}.py"
            f.write_text(feature_source(2000 + i))  # the edit
            old_way.append(cli([*base, "--set", f"features.mine={f}:word_{2000 + i}"]))

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    result = {
        "run": repr(run),
        "samples": run._samples.height,
        "references": run._references.height,
        "sites": len(run.sites),
        "torch_threads": __import__("torch").get_num_threads(),
        "open_and_first_score_s": open_and_first,
        "api_score_new_feature_s": {"median": med(fresh), "all": fresh},
        "api_score_cached_feature_s": {"median": med(cached), "all": cached},
        "api_fcr_at_other_epsilon_s": {"median": med(other_eps), "all": other_eps},
        "cli_cached_rerun_s": {"median": med(cached_rerun), "all": cached_rerun},
        "old_way_edit_and_run_s": {"median": med(old_way), "all": old_way},
        "old_way_over_api": med(old_way) / med(fresh),
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
