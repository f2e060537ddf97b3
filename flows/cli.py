"""Command line: ``inversescope run PRESET_OR_YAML [--workdir DIR] [--until STAGE] [--set k=v]
[--json]`` and ``inversescope presets``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from inversescope.flows.config import ConfigError, load_run_config


def _configure_prefect_env() -> None:
    # Must happen before prefect is imported: quiet telemetry (its SQLite writes race the
    # ephemeral server's) and route our own loggers through Prefect's handlers (stderr + UI).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "inversescope")
    logging.getLogger("inversescope").setLevel(logging.INFO)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inversescope", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline of a preset or YAML config")
    run.add_argument("config", help="preset name (see `inversescope presets`) or YAML file")
    run.add_argument("--workdir", default="runs", help="artifact directory (default: runs)")
    run.add_argument("--until", default=None, help="last stage to run")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override a config field (repeatable)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    sub.add_parser("presets", help="list the presets that ship with the package")
    return p


def _cmd_presets() -> int:
    from inversescope.tasks import preset_names

    for name in preset_names():
        cfg = load_run_config(name)
        target = cfg.target.name or cfg.target.source
        print(f"{name}\ttask={cfg.task}\ttarget={target}\tsites={len(cfg.extract.sites)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from inversescope.flows.config import check_run
    from inversescope.flows.stage import STAGE_ORDER

    run = load_run_config(args.config, args.overrides)
    if args.until is not None and args.until not in STAGE_ORDER:
        raise ConfigError(f"unknown stage {args.until!r}; accepted: {', '.join(STAGE_ORDER)}")
    check_run(run)
    workdir = Path(args.workdir).resolve()
    _configure_prefect_env()
    from inversescope.flows.pipeline import flow_for

    out = flow_for(run.task)(run, str(workdir), args.until)
    out = {**out, "preset": run.preset, "task": run.task, "workdir": str(workdir)}
    if args.json:
        print(json.dumps(out))
    else:
        for name, r in out["stages"].items():
            print(f"{name:8s} {r['status']:6s} {r['seconds']:8.1f}s  {r['path']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "presets":
            return _cmd_presets()
        return _cmd_run(args)
    except ConfigError as e:
        print(f"inversescope: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
