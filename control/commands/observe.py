"""``adctl status`` and ``report``: what the flow is doing and what it found."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from control.cli_env import (
    CliError,
    add_field_options,
    opt,
    parse_time_arg,
    split_list,
    strip_query,
)


def metrics_endpoints(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """The flow's metrics endpoints and a summary of its processes."""
    from control.supervisor import Supervisor

    info: dict[str, Any] = {}
    sv = Supervisor(args.state_dir)
    spec = sv.load_spec()
    if spec is not None:
        procs = sv.processes()
        info = {
            "workers": spec.workers,
            "processes": spec.processes,
            "state": "running" if any(p.alive for p in procs) else "stopped",
            "pids": [p.pid for p in procs if p.alive],
        }
    if args.endpoints:
        return [e.strip() for e in args.endpoints.split(",") if e.strip()], info
    port = int(
        (spec.env.get("AD_METRICS_PORT") if spec else None)
        or os.environ.get("AD_METRICS_PORT")
        or 0
    )
    if not port:
        raise CliError(
            "no metrics endpoints: pass --endpoints host:port,... or run the flow "
            "with AD_METRICS_PORT set"
        )
    n = spec.processes if spec else 1
    return [f"127.0.0.1:{port + i}" for i in range(n)], info


def cmd_status(args: argparse.Namespace) -> int:
    """``adctl status``: show the flow's throughput, lag and errors."""
    from control.status import render, snapshot, summarize

    endpoints, info = metrics_endpoints(args)
    prev = snapshot(endpoints)
    while True:
        time.sleep(args.interval)
        endpoints, info = metrics_endpoints(args)
        cur = snapshot(endpoints)
        st = summarize(prev, cur, info)
        if args.json:
            print(json.dumps(st, sort_keys=True), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\033[2J\033[H", end="")
            print(render(st), flush=True)
            if args.watch:
                print()
        if not args.watch:
            return 0 if cur.endpoints_up else 1
        prev = cur


def cmd_report(args: argparse.Namespace) -> int:
    """``adctl report``: plot the input series with their alerts."""
    from control.history import Fields
    from control.report import plot_report

    inputs = [strip_query(s) for s in split_list(args.input)]
    alerts = [strip_query(s) for s in split_list(args.alerts)]
    if not inputs and not alerts:
        raise CliError("give --input (readings) and/or --alerts (alert topic or file)")
    out = args.out or f"report-{args.sensor}.png"
    summary = plot_report(
        inputs,
        alerts,
        args.sensor,
        out,
        fields=Fields(args.key_field, args.time_field, args.value_field),
        since=parse_time_arg(args.since),
        until=parse_time_arg(args.until),
    )
    print(json.dumps(summary, sort_keys=True))
    return 0


def register(sub: Any) -> None:
    """Add this module's subcommands to ``adctl``'s subparsers ``sub``."""
    p = sub.add_parser("status", help="lag, rates, dead letters, models, checkpoint age")
    opt(
        p,
        "--endpoints",
        env="AD_METRICS_ENDPOINTS",
        help="host:port,... of the flow's metrics (default: from the running flow)",
    )
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    opt(
        p,
        "--interval",
        env="AD_STATUS_INTERVAL",
        default=2.0,
        type=float,
        help="seconds between scrapes (rates use two)",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="plot a sensor's series with its alerts marked")
    p.add_argument("--sensor", required=True, help="sensor id (the key field's value)")
    opt(
        p,
        "--input",
        env="AD_SOURCE",
        action="append",
        help="readings: kafka://host:port/topic or files (repeat)",
    )
    opt(
        p,
        "--alerts",
        env="AD_SINK",
        action="append",
        help="alerts: kafka://host:port/topic or files (repeat)",
    )
    add_field_options(p)
    opt(p, "--out", env="AD_REPORT_OUT", help="output image (default report-<sensor>.png)")
    p.set_defaults(func=cmd_report)
