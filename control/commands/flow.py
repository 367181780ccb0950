"""``adctl run``, ``stop``, ``scale`` and ``autoscale``: the flow's processes."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from control.cli_env import CliError, flow_env, opt
from control.commands.observe import metrics_endpoints
from control.launch import parse_processes
from control.progress import say


def _processes(text: str) -> int:
    """``--processes``: a count or ``auto`` (argparse shows the error's text)."""
    try:
        return parse_processes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _spec_from_args(args: argparse.Namespace) -> Any:
    from control.supervisor import FlowSpec, load_env_file

    extra: dict[str, str] = {}
    if args.env_file:
        extra.update(load_env_file(args.env_file))
    if args.config:
        if not Path(args.config).is_file():
            raise CliError(f"--config {args.config!r}: no such file")
        extra["AD_CONFIG"] = str(Path(args.config).resolve())
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(f"-e expects KEY=VALUE, got {item!r}")
        extra[key] = value
    return FlowSpec(
        module=args.module,
        workers=args.workers,
        processes=args.processes,
        recovery_dir=str(Path(args.recovery_dir).resolve()) if args.recovery_dir else "",
        recovery_parts=args.recovery_parts,
        snapshot_interval=args.snapshot_interval,
        env=extra,
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``adctl run``: start the flow processes, optionally wait for them."""
    from control import ops
    from control.supervisor import Supervisor

    sv = Supervisor(args.state_dir)
    spec = _spec_from_args(args)
    pids = ops.run_flow(args.state_dir, spec, base_env=flow_env())
    say(
        f"started {spec.module}: {spec.processes} process(es) x {spec.workers} worker(s), "
        f"pids {pids}; logs in {sv.log_dir}, recovery in {spec.recovery_dir}"
    )
    if not args.wait:
        return 0
    procs = sv.wait(args.timeout)
    if any(p.alive for p in procs):
        say(f"still running after {args.timeout}s")
        return 1
    bad = [p for p in procs if not p.ok]
    for p in bad:
        why = sv.last_error(p.index)
        say(
            f"process {p.index} exited with {p.exit_code}"
            + (f": {why}" if why else "")
            + f" (log: {sv.log_path(p.index)})"
        )
    return 1 if bad else 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``adctl stop``: stop the running flow (SIGKILL with ``--kill``)."""
    from control import ops

    res = ops.stop_flow(args.state_dir, timeout=args.timeout, kill=args.kill)
    if not res.was_running:
        say("the flow is not running")
        return 0
    if args.kill:
        say("killed (SIGKILL); the next run resumes from the last snapshot")
        return 0
    for p in res.processes:
        how = "interrupted" if p["interrupted"] else f"exit {p['exit_code']}"
        say(f"process {p['index']} (pid {p['pid']}): {how}")
    if not res.clean:
        say("stop was not clean (timeout or error); see the logs")
    return 0 if res.clean else 1


def _k8s_target(args: argparse.Namespace) -> Any:
    from control.k8s import K8sTarget

    return K8sTarget(
        statefulset=args.statefulset,
        namespace=args.namespace,
        context=args.context or None,
        kubectl=args.kubectl,
    )


def do_scale(args: argparse.Namespace, workers: int, processes: int | None) -> None:
    """Rescale the flow to ``workers`` (and ``processes``) locally or on Kubernetes."""
    if args.target == "k8s":
        from control.k8s import scale_k8s

        scale_k8s(
            _k8s_target(args), processes or 1, workers, dry_run=args.dry_run, log=lambda m: say(m)
        )
        return
    from control import ops

    if args.dry_run:
        say(f"dry-run: would restart the local flow with {workers} worker(s)")
        return
    new = ops.scale_flow(args.state_dir, workers, processes, args.timeout, base_env=flow_env())
    say(f"restarted from the recovery store: {new.processes} process(es) x {new.workers} worker(s)")


def cmd_scale(args: argparse.Namespace) -> int:
    """``adctl scale``: set the worker and process counts."""
    do_scale(args, args.workers, args.processes)
    return 0


def _cpu_fraction(pids: list[int], workers: int) -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    procs = []
    for pid in pids:
        try:
            shim = psutil.Process(pid)
            procs.extend([shim, *shim.children(recursive=True)])
        except psutil.Error:
            continue
    if not procs:
        return None
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.cpu_percent(None)
    time.sleep(0.5)
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.cpu_percent(None)
    cores = min(max(1, workers), os.cpu_count() or 1)
    return total / (100.0 * cores)


def cmd_autoscale(args: argparse.Namespace) -> int:
    """``adctl autoscale``: sample lag and CPU and rescale by the policy."""
    from control.autoscale import AutoscalePolicy, PolicyConfig, Sample
    from control.status import snapshot
    from control.supervisor import Supervisor

    cfg = PolicyConfig(
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        up_threshold=args.up,
        down_threshold=args.down,
        cooldown_s=args.cooldown,
        sustain_s=args.sustain,
        lag_high=args.lag_high,
        step=args.step,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    sv = Supervisor(args.state_dir)
    spec = sv.load_spec()
    workers = args.workers or (spec.workers if spec else cfg.min_workers)
    policy = AutoscalePolicy(cfg, workers)
    say(
        f"autoscaling {args.target} between {cfg.min_workers} and {cfg.max_workers} workers "
        f"(up >= {cfg.up_threshold:.0%}, down <= {cfg.down_threshold:.0%}, sustain "
        f"{cfg.sustain_s:g}s, cooldown {cfg.cooldown_s:g}s, lag 100% = {cfg.lag_high:g})"
    )
    n = 0
    while args.iterations <= 0 or n < args.iterations:
        n += 1
        endpoints, info = metrics_endpoints(args)
        snap = snapshot(endpoints)
        cpu = (
            _cpu_fraction(info.get("pids", []), policy.workers) if args.target == "local" else None
        )
        d = policy.observe(Sample(time.time(), snap.total_lag, cpu))
        line = {
            "t": round(d.t, 3),
            "action": d.action,
            "workers": d.workers,
            "target": d.target,
            "load": d.load,
            "reason": d.reason,
        }
        print(json.dumps(line), flush=True)
        if d.changes:
            try:
                do_scale(args, d.target, None)
            except Exception as exc:  # noqa: BLE001 - keep the loop alive, report it
                say(f"scaling to {d.target} failed: {exc}")
        time.sleep(args.interval)
    return 0


def _common_scale(p: argparse.ArgumentParser) -> None:
    opt(
        p,
        "--target",
        env="AD_SCALE_TARGET",
        default="local",
        choices=["local", "k8s"],
        help="what to scale: local processes or a Kubernetes StatefulSet",
    )
    opt(
        p,
        "--timeout",
        env="AD_STOP_TIMEOUT",
        default=60.0,
        type=float,
        help="seconds to wait for a clean stop",
    )
    opt(p, "--namespace", env="AD_K8S_NAMESPACE", default="anomaly", help="k8s namespace")
    opt(
        p,
        "--statefulset",
        env="AD_K8S_STATEFULSET",
        default="ad-flow",
        help="k8s StatefulSet of the flow",
    )
    opt(p, "--context", env="AD_K8S_CONTEXT", help="kubectl context")
    opt(p, "--kubectl", env="AD_KUBECTL", default="kubectl", help="kubectl binary")
    p.add_argument("--dry-run", action="store_true", help="print what would be done")


def register(sub: Any) -> None:
    """Add this module's subcommands to ``adctl``'s subparsers ``sub``."""
    p = sub.add_parser(
        "run",
        help="start the flow as supervised local processes",
        description="Start the flow (python -m bytewax.run) with a recovery "
        "store; AD_* flow settings pass through.",
    )
    opt(
        p,
        "--workers",
        "-w",
        env="AD_WORKERS",
        default=1,
        type=int,
        help="worker threads per process",
    )
    opt(
        p,
        "--processes",
        "-p",
        env="AD_PROCESSES",
        default="auto",
        type=_processes,
        help="Bytewax processes (-i/-a); auto: one per core this machine or container has",
    )
    opt(p, "--module", env="AD_FLOW_MODULE", default="flows.detector", help="flow module")
    opt(p, "--env-file", env="AD_ENV_FILE", help="KEY=VALUE file of flow settings")
    opt(p, "--config", env="AD_CONFIG", help="YAML settings file for the flow")
    p.add_argument(
        "-e", "--env", action="append", metavar="KEY=VALUE", help="a flow setting (repeatable)"
    )
    opt(
        p,
        "--recovery-dir",
        env="AD_RECOVERY_DIR",
        help="recovery store directory (default: STATE_DIR/recovery)",
    )
    opt(
        p,
        "--recovery-parts",
        env="AD_RECOVERY_PARTS",
        default=4,
        type=int,
        help="recovery partitions created on the first run",
    )
    opt(
        p,
        "--snapshot-interval",
        env="AD_SNAPSHOT_INTERVAL",
        default=5,
        type=int,
        help="seconds between state snapshots",
    )
    opt(
        p,
        "--wait",
        env="AD_WAIT",
        default=False,
        flag=True,
        help="wait for the flow to end (exit 1 if a process failed)",
    )
    opt(p, "--timeout", env="AD_RUN_TIMEOUT", type=float, help="with --wait: give up after s")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stop", help="stop the flow cleanly (SIGINT, wait)")
    opt(
        p,
        "--timeout",
        env="AD_STOP_TIMEOUT",
        default=60.0,
        type=float,
        help="seconds to wait before SIGKILL",
    )
    p.add_argument("--kill", action="store_true", help="SIGKILL at once (like a crash)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "scale",
        help="restart the flow from its recovery store with new parallelism",
        description="Stop cleanly, then restart from the "
        "recovery store with --workers/--processes (or patch a k8s "
        "StatefulSet with --target k8s).",
    )
    opt(
        p,
        "--workers",
        "-w",
        env="AD_WORKERS",
        type=int,
        required="AD_WORKERS" not in os.environ,
        help="worker threads per process",
    )
    opt(
        p,
        "--processes",
        "-p",
        env="AD_PROCESSES",
        type=_processes,
        help="processes, or auto: one per core (default: unchanged locally, 1 on k8s)",
    )
    _common_scale(p)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser(
        "autoscale",
        help="scale on sustained input lag or CPU",
        description="A policy loop: scale up when load (max of lag/lag-high "
        "and CPU) stays above --up, down when below --down.",
    )
    opt(p, "--min-workers", env="AD_AUTOSCALE_MIN", default=1, type=int, help="lower bound")
    opt(p, "--max-workers", env="AD_AUTOSCALE_MAX", default=8, type=int, help="upper bound")
    opt(p, "--up", env="AD_AUTOSCALE_UP", default=0.8, type=float, help="scale-up load")
    opt(p, "--down", env="AD_AUTOSCALE_DOWN", default=0.2, type=float, help="scale-down load")
    opt(
        p,
        "--cooldown",
        env="AD_AUTOSCALE_COOLDOWN",
        default=300.0,
        type=float,
        help="seconds between changes",
    )
    opt(
        p,
        "--sustain",
        env="AD_AUTOSCALE_SUSTAIN",
        default=60.0,
        type=float,
        help="seconds a load must persist",
    )
    opt(
        p,
        "--lag-high",
        env="AD_AUTOSCALE_LAG_HIGH",
        default=10000.0,
        type=float,
        help="total input lag (records) that counts as 100%% load",
    )
    opt(p, "--step", env="AD_AUTOSCALE_STEP", default=1, type=int, help="workers per change")
    opt(
        p,
        "--interval",
        env="AD_AUTOSCALE_INTERVAL",
        default=15.0,
        type=float,
        help="seconds between samples",
    )
    opt(
        p,
        "--iterations",
        env="AD_AUTOSCALE_ITERATIONS",
        default=0,
        type=int,
        help="stop after N samples (0: run forever)",
    )
    opt(p, "--workers", env="AD_WORKERS", type=int, help="current workers (default: running)")
    opt(p, "--endpoints", env="AD_METRICS_ENDPOINTS", help="host:port,... of the flow metrics")
    _common_scale(p)
    p.set_defaults(func=cmd_autoscale)
