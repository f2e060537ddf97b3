"""inversescope: run the pipeline, schedule it on Prefect, and read what it wrote.

  run PRESET_OR_YAML      run every stage (cached stages are reused; when all of them are,
                          no Prefect server starts)
  serve / deploy          schedule the pipeline from a Prefect server's UI (one machine / a pool)
  presets                 the shipped presets, their sites and sizes
  results / samples       the FCR table and a site's samples of the latest run of a workdir
  hypotheses WORKDIR      each site's candidate features ranked against chance (q < 0.05)
  view [WORKDIR]          browse the runs of a workdir in a web browser (127.0.0.1 by default)
  verify / gc             check every artifact of a workdir / remove partial and unused ones

In Python: ``import inversescope; run = inversescope.open("runs")`` (README: quick start).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from inversescope.config import ConfigError, load_run_config
from inversescope.errors import FeatureError, StageError


def _configure_prefect_env() -> None:
    # Must happen before prefect is imported: quiet telemetry (its SQLite writes race the
    # ephemeral server's) and route our own loggers through Prefect's handlers (stderr + UI).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # the temporary server's default 20 s start-up limit fails on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "inversescope")
    logging.getLogger("inversescope").setLevel(logging.INFO)


RESULT_COLUMNS = [
    "feature",
    "site",
    "fcr",
    "ci_low",
    "ci_high",
    "chance",
    "n_examples",
    "n_samples",
    "refusal_rate",
]


def _add_config_args(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument("config", help=config_help)
    parser.add_argument(
        "--workdir",
        default="runs",
        help="artifact directory, or a bucket URL s3://BUCKET/PREFIX (also gs://, az://; "
        "credentials and endpoint from the standard AWS_* variables) (default: runs)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeatable)",
    )


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (the value and what is accepted), exit code 2, no usage
    block: ``--help`` shows that."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="inversescope",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run the pipeline of a preset or YAML config")
    _add_config_args(run, "preset name (see `inversescope presets`) or YAML file")
    run.add_argument("--until", default=None, help="last stage to run")
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    srv = sub.add_parser(
        "serve",
        help="serve the pipeline as a Prefect deployment (schedule it "
        "from the UI of the server named by PREFECT_API_URL)",
    )
    _add_config_args(srv, "preset name or YAML file: the deployment's defaults")
    sub.add_parser("presets", help="list the presets that ship with the package")
    dep = sub.add_parser(
        "deploy",
        help="register the task's flow as a deployment on a Prefect work pool (server: "
        "PREFECT_API_URL); workers of the pool run what the UI schedules",
    )
    _add_config_args(dep, "preset name or YAML file: the deployment's default parameters")
    dep.add_argument("--pool", required=True, help="work pool (create it first)")
    dep.add_argument("--name", default=None, help="deployment name (default: the preset)")
    dep.add_argument("--image", default=None, help="worker image (docker/kubernetes pools)")
    dep.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="size of the global concurrency limit `gpu` (created with 1 if absent)",
    )
    res = sub.add_parser("results", help="print the FCR table of the latest run under WORKDIR")
    res.add_argument("workdir")
    res.add_argument("--all", action="store_true", help="every run under WORKDIR, by run_key")
    res.add_argument("--feature", default=None, help="only this feature")
    res.add_argument("--top", type=int, default=None, help="top N sites per feature by FCR")
    hyp = sub.add_parser(
        "hypotheses",
        help="print each site's top hypotheses (candidate features ranked against chance, "
        "q below the run's alpha) of the latest run under WORKDIR",
    )
    hyp.add_argument("workdir")
    hyp.add_argument("--site", default=None, help="only this site")
    hyp.add_argument("--top", type=int, default=3, help="hypotheses per site (default: 3)")
    smp = sub.add_parser("samples", help="print samples of a site and reference example")
    smp.add_argument("workdir")
    smp.add_argument("--site", required=True)
    smp.add_argument("--example", type=int, required=True, help="prior test id of the reference")
    smp.add_argument("--limit", type=int, default=20)
    view = sub.add_parser(
        "view",
        help="serve a web view of the runs under WORKDIR: FCR maps, sites and their samples, "
        "search, and sampling for a typed prompt",
    )
    view.add_argument(
        "workdir", nargs="?", default="runs", help="artifact directory (default: runs)"
    )
    view.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 serves the "
        "results to anyone who can reach the port)",
    )
    view.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free one)")
    view.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for sampling on the invert page (default 1: fastest on a CPU "
        "shared with other work; 0: torch's default)",
    )
    ver = sub.add_parser(
        "verify",
        help="read every artifact under WORKDIR back (manifests, Zarr checksums, Parquet, "
        "checkpoints); report corrupt, orphaned and stale partial ones (exit 1 if any)",
    )
    ver.add_argument("workdir")
    gc = sub.add_parser(
        "gc",
        help="remove partial builds of dead runs and the artifacts no kept fcr result "
        "references; print the space freed",
    )
    gc.add_argument("workdir")
    gc.add_argument(
        "--keep",
        type=int,
        default=None,
        metavar="N",
        help="keep only the N newest fcr results and what they reference (default: every one)",
    )
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed")
    return p


def _print_frame(df) -> None:
    # polars, prefect and the flows deferred (here and below): --help and a bad argument answer
    # at once, without importing them
    import polars as pl

    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=90, tbl_width_chars=200):
        print(df)


def _cmd_serve(args: argparse.Namespace) -> int:
    from inversescope.config import check_run

    run = load_run_config(args.config, args.overrides)
    check_run(run)
    _configure_prefect_env()
    from prefect import serve

    from inversescope.flows.pipeline import deployment

    serve(deployment(run, _absolute(args.workdir)))
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    run = load_run_config(args.config, args.overrides)
    _configure_prefect_env()
    from inversescope.config import check_run
    from inversescope.flows.deploy import deploy

    check_run(run)
    out = deploy(
        run,
        pool=args.pool,
        workdir=_absolute(args.workdir),
        name=args.name,
        image=args.image,
        gpu_slots=args.gpu_slots,
    )
    print(f"deployment {out.name} ({out.id}) on pool {out.pool}; gpu limit: {out.gpu_limit}")
    print(f"run it: prefect deployment run '{out.name}', or from the UI")
    return 0


def _cmd_results(args: argparse.Namespace) -> int:
    import polars as pl

    from inversescope.storage.queries import latest, scan_results

    try:
        lf = scan_results(args.workdir)
        if not args.all:
            lf = lf.filter(pl.col("run_key") == latest(args.workdir, "fcr")[1]["key"])
    except FileNotFoundError as e:
        raise ConfigError(str(e)) from e
    if args.feature:
        known = sorted(lf.select("feature").unique().collect()["feature"].to_list())
        if args.feature not in known:
            raise ConfigError(f"unknown feature {args.feature!r}; accepted: {', '.join(known)}")
        lf = lf.filter(pl.col("feature") == args.feature)
    lf = lf.sort(["feature", "fcr"], descending=[False, True], nulls_last=True)
    if args.top:
        lf = lf.group_by(["run_key", "feature"], maintain_order=True).head(args.top)
    cols = [*(["run_key"] if args.all else []), "method", *RESULT_COLUMNS]
    _print_frame(lf.select(cols).collect())
    return 0


HYPOTHESIS_COLUMNS = ["site", "rank", "candidate", "fcr", "chance", "normalised_lift", "q_value"]


def _cmd_hypotheses(args: argparse.Namespace) -> int:
    import polars as pl

    from inversescope.core.sites import parse_site
    from inversescope.storage.layout import read_hypotheses
    from inversescope.storage.queries import latest, top_hypotheses

    if args.top < 1:
        raise ConfigError(f"--top {args.top}: expected a positive number of hypotheses per site")
    try:
        path, manifest = latest(args.workdir, "hypotheses")
        table = read_hypotheses(path)
        if args.site is not None:
            site = parse_site(args.site).name
            if site not in set(table["site"]):
                known = ", ".join(table["site"].unique(maintain_order=True))
                raise ConfigError(f"site {site!r} was not scored; accepted: {known}")
            table = table.filter(pl.col("site") == site)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    alpha = manifest["config"]["hypotheses"]["alpha"]
    top = top_hypotheses(table, args.top)
    print(
        f"top {args.top} hypotheses per site of {manifest['metrics']['candidates']} candidates "
        f"(q < {alpha}, FCR above chance, by normalised lift); {path}"
    )
    if top.height:
        _print_frame(top.select(HYPOTHESIS_COLUMNS))
    sites = table["site"].unique(maintain_order=True).to_list()
    none = [s for s in sites if s not in set(top["site"])]
    if none:
        print(f"no hypothesis at q < {alpha}: {', '.join(none)}")
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    import inversescope

    try:
        run = inversescope.open(args.workdir)
        df = run.samples(args.site, args.example)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from e
    ref_cols = [c for c in df.columns if c.endswith("_ref")]
    print(
        "reference labels: "
        + ", ".join(f"{c[:-4]}={df[c][0]}" for c in ref_cols)
        + f" (example {args.example}; accepted: distance < {run.epsilon})"
    )
    _print_frame(df.drop(["site", "example_id", *ref_cols]).head(args.limit))
    return 0


def _existing_workdir(workdir: str):
    """The workdir of ``verify``/``gc``: a directory, or a bucket prefix holding artifacts."""
    from inversescope.storage.files import is_remote, location

    path = _location(workdir)
    if is_remote(path):
        _reach(path, workdir)
        if not path.is_dir():
            raise ConfigError(f"workdir {workdir!r} holds no objects; name an artifact prefix")
        return path
    path = location(workdir)
    if not path.exists():
        raise ConfigError(f"workdir {workdir!r} does not exist; name an artifact directory")
    if not path.is_dir():
        raise ConfigError(f"workdir {workdir!r} is not a directory; name an artifact directory")
    return path


def _cmd_view(args: argparse.Namespace) -> int:
    from inversescope.view.server import serve

    workdir = _existing_workdir(args.workdir)
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port}: expected 0 to 65535 (0: a free port)")
    if args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: expected 1 or more (0: torch's default)")
    try:
        serve(workdir.resolve(), args.host, args.port, args.threads or None)
    except OSError as e:  # address in use, or not an address of this machine
        raise ConfigError(
            f"--host {args.host} --port {args.port}: cannot listen there ({e})"
        ) from e
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from inversescope.storage.verify import verify_workdir

    report = verify_workdir(_existing_workdir(args.workdir))
    for f in report.findings:
        print(f"{f.kind:13s} {f.path}: {f.detail}")
    kinds = ("corrupt", "orphaned", "stale partial", "in progress")
    print(
        f"verify: {report.artifacts} artifacts, {report.files} files checked; "
        + ", ".join(f"{report.count(k)} {k}" for k in kinds)
        + ("" if report.ok else " -- problems found")
    )
    return 0 if report.ok else 1


def _cmd_gc(args: argparse.Namespace) -> int:
    from inversescope.storage.verify import collect_garbage

    if args.keep is not None and args.keep < 1:
        raise ConfigError(f"--keep {args.keep}: expected a positive number of fcr results")
    report = collect_garbage(_existing_workdir(args.workdir), args.keep, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for r in report.removed:
        print(f"{verb} {r.path} ({r.why}; {_human(r.size)})")
    for path, why in report.skipped:
        print(f"kept {path} ({why})")
    kept = len(report.kept_results)
    print(
        f"gc: {'would free' if args.dry_run else 'freed'} {_human(report.freed)} "
        f"({report.freed} bytes) in {len(report.removed)} paths; kept {kept} fcr "
        f"result{'s' if kept != 1 else ''} and {report.kept} committed artifacts"
    )
    return 0


def _cmd_presets() -> int:
    from importlib import resources

    from inversescope.config import target_dims
    from inversescope.core.sizing import GPU_BYTES, size_config
    from inversescope.tasks import preset_names

    def _count(n: int) -> str:
        return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"

    config_dir = Path(str(resources.files("inversescope.tasks") / "model_configs"))
    print(f"{'preset':22s} {'task':8s} {'target':38s} {'sites':>5s} {'activations':>12s}")
    for name in preset_names():
        cfg = load_run_config(name)
        target = cfg.target.name or f"{cfg.target.source} (local)"
        try:
            width = target_dims(cfg).d_model
        except ConfigError:
            width = None
        rows = cfg.prior.n_train + cfg.prior.n_test
        itemsize = 4 if cfg.extract.dtype == "float32" else 2
        size = "?" if width is None else _human(rows * len(cfg.extract.sites) * width * itemsize)
        print(f"{name:22s} {cfg.task:8s} {target:38s} {len(cfg.extract.sites):5d} {size:>12s}")
        try:
            sizes = size_config(cfg, config_dir)
        except ValueError as e:
            print(f"    sizes unknown: {e}")
            continue
        print(
            f"    params: target {_count(sizes.target_params)} (to deepest site "
            f"{_count(sizes.target_truncated_params)}), backbone {_count(sizes.backbone_params)}"
            + "".join(
                f", {m} {_count(p)} (trainable {_count(sizes.trainable_params[m])})"
                for m, p in sizes.controls_params.items()
            )
        )
        peaks = [(stage, sizes.peak(stage)) for stage in sizes.stages]
        print(
            "    peak GPU memory (estimate, 80 GB GPU): "
            + ", ".join(
                f"{s} {_human(b)}{'' if b <= GPU_BYTES else ' (too big)'}" for s, b in peaks
            )
        )
    return 0


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _location(workdir: str):
    from inversescope.storage.files import location

    try:
        return location(workdir)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _reach(path, workdir: str) -> None:
    """One request to a bucket workdir: a missing bucket, bad credentials or an unreachable
    endpoint is the user's to fix (one line, secrets redacted)."""
    from inversescope.storage.files import reach

    try:
        reach(path)
    except OSError as e:
        raise ConfigError(f"--workdir {workdir!r} cannot be reached: {e}") from None


def _absolute(workdir: str) -> str:
    """What every worker of a deployment reads: a bucket URL as given, a path made absolute."""
    from inversescope.storage.files import is_remote

    path = _location(workdir)
    return str(path) if is_remote(path) else str(Path(workdir).resolve())


def _checked_workdir(workdir: str):
    """The artifact directory, absolute, or a bucket prefix that answers; a path that is a
    file, or a directory this process cannot write, is the user's error."""
    from inversescope.storage.files import is_remote

    remote = _location(workdir)
    if is_remote(remote):
        _reach(remote, workdir)
        return remote
    path = Path(workdir).resolve()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir {workdir!r} is a file; name a directory (created if absent)")
    probe = path if path.exists() else next(p for p in path.parents if p.exists())
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir!r}: {str(probe)!r} is not writable")
    return path


@contextmanager
def _server_for_workers(needed: bool) -> Iterator[None]:
    """Without ``PREFECT_API_URL`` a flow runs on a temporary server that only this process
    knows; Dask workers are other processes, so for them start it here and name it in the
    environment they inherit."""
    if not needed or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from inversescope.flows.fanout import temporary_server  # prefect: only for dask runs

    with temporary_server(int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"])):
        yield


def _cmd_run(args: argparse.Namespace) -> int:
    from inversescope.config import check_run, probe_features
    from inversescope.flows.stage import cached_results, run_keys, stages_until

    run = load_run_config(args.config, args.overrides)
    names = stages_until(args.until)
    check_run(run, probe=False)
    workdir = _checked_workdir(args.workdir)
    keys = run_keys(run, names)
    done = cached_results(workdir, keys, names)
    if done is None or "label" not in done:  # labels cached: their features ran already
        probe_features(run)
    if done is not None and not os.environ.get("PREFECT_API_URL"):
        # nothing to build and no server to report to: no temporary server either
        out = {"stages": {n: r.to_json() for n, r in done.items()}}
    else:
        _configure_prefect_env()
        from inversescope.flows.pipeline import flow_for

        with _server_for_workers(run.runner.kind == "dask"):
            out = flow_for(run.task)(run, str(workdir), args.until)
    out = {**out, "preset": run.preset, "task": run.task, "workdir": str(workdir)}
    if args.json:
        print(json.dumps(out))
        return 0
    for name, r in out["stages"].items():
        print(f"{name:8s} {r['status']:6s} {r['seconds']:8.1f}s  {r['path']}")
    if "fcr" in out["stages"]:
        from inversescope.storage.layout import read_results

        results = read_results(out["stages"]["fcr"]["path"])
        print(
            f"\nFCR ({run.controls.method}, {run.fcr.weighting} weighting, "
            f"eps={run.kernel.epsilon}); plots in {out['stages']['fcr']['path']}"
        )
        _print_frame(
            results.sort(["feature", "fcr"], descending=[False, True], nulls_last=True).select(
                RESULT_COLUMNS
            )
        )
        if "hypotheses" in out["stages"]:
            print(f"\nhypotheses per site: inversescope hypotheses {args.workdir}")
        print(
            f"\nBrowse it: inversescope view {args.workdir}\n"
            "Or explore it in Python (`run = inversescope.open("
            f"{str(args.workdir)!r})`, README: Python quick start)."
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "presets":
            return _cmd_presets()
        if args.command == "serve":
            return _cmd_serve(args)
        if args.command == "deploy":
            return _cmd_deploy(args)
        if args.command == "results":
            return _cmd_results(args)
        if args.command == "view":
            return _cmd_view(args)
        if args.command == "samples":
            return _cmd_samples(args)
        if args.command == "hypotheses":
            return _cmd_hypotheses(args)
        if args.command == "verify":
            return _cmd_verify(args)
        if args.command == "gc":
            return _cmd_gc(args)
        return _cmd_run(args)
    except (ConfigError, FeatureError) as e:  # the user's to fix: exit 2, one line, last
        print(f"inversescope: error: {e}", file=sys.stderr)
        return 2
    except StageError as e:  # after Prefect's log lines, the error is the last thing shown
        print(f"inversescope: stage failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
