"""``adctl``: retrain models on Dask, push them live, run/stop/scale the flow, status, report.

Every flag has an ``AD_*`` environment default (shown in ``--help``). Flow settings
(``AD_SOURCE``, ``AD_SINK``, ...) pass through to the flow processes; adctl's own
``AD_*`` variables are removed from the flow's environment (the flow rejects unknown
``AD_*`` names).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import fields as dc_fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flows.settings import Settings

__all__ = ["main", "build_parser", "flow_env"]

#: adctl's own AD_* variables (filled in as the parser is built).
ADCTL_ENV: set[str] = set()

DEFAULT_STORE = "redis://127.0.0.1:16379/ad:models"


class CliError(Exception):
    """A user-facing error: printed as ``adctl: error: ...`` with exit code 2."""


# ------------------------------------------------------------------ env-default flags


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _env_default(env: str, default: Any, conv: Callable[[str], Any] | None) -> Any:
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        return conv(raw) if conv else raw
    except (TypeError, ValueError) as exc:
        raise CliError(f"environment variable {env}={raw!r} is invalid: {exc}") from None


class _AppendReplace(argparse.Action):
    """Like ``append``, but the first use on the command line replaces the env default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        marker = f"_{self.dest}_given"
        cur = getattr(ns, self.dest) if getattr(ns, marker, False) else []
        setattr(ns, marker, True)
        setattr(ns, self.dest, [*cur, values])


def opt(
    p: argparse.ArgumentParser,
    *flags: str,
    env: str,
    default: Any = None,
    type: Callable[[str], Any] | None = None,
    help: str = "",
    flag: bool = False,
    **kw: Any,
) -> None:
    """Add a flag whose default comes from environment variable ``env``."""
    ADCTL_ENV.add(env)
    shown = f" (default: {default})" if default not in (None, "", False) else ""
    text = f"{help}{shown} [env: {env}]"
    if kw.get("action") == "append":
        kw["action"] = _AppendReplace
        raw = os.environ.get(env)
        p.add_argument(*flags, default=_split_list(raw) if raw else [], help=text, **kw)
        return
    if flag:
        p.add_argument(
            *flags,
            action=argparse.BooleanOptionalAction,
            default=_env_default(env, default, _bool),
            help=text,
            **kw,
        )
    else:
        p.add_argument(*flags, default=_env_default(env, default, type), type=type, help=text, **kw)


def _flow_keys() -> set[str]:
    """AD_* names the flow itself reads (they pass through even if adctl has a flag)."""
    try:
        from flows.settings import _FOREIGN, Settings  # type: ignore[attr-defined]

        return {f"AD_{f.name.upper()}" for f in dc_fields(Settings)} | {
            f"AD_{k.upper()}" for k in _FOREIGN
        }
    except Exception:  # noqa: BLE001 - flows may be absent in a control-only install
        return {
            "AD_SOURCE",
            "AD_SINK",
            "AD_DLQ",
            "AD_DETECTOR",
            "AD_DETECTOR_PARAMS",
            "AD_METRICS_PORT",
            "AD_MODEL_STORE",
            "AD_CONTROL_TOPIC",
            "AD_CONFIG",
        }


def flow_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for flow processes: ``base`` minus adctl-only ``AD_*`` names."""
    env = dict(os.environ if base is None else base)
    drop = ADCTL_ENV - _flow_keys()
    return {k: v for k, v in env.items() if k not in drop}


def _parse_time_arg(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    from control.history import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise CliError(
            f"not a time: {text!r}; use RFC 3339 (2024-05-01T00:00:00Z) or epoch seconds"
        ) from None


def _json_obj(text: str) -> dict[str, Any]:
    out = json.loads(text) if text else {}
    if not isinstance(out, dict):
        raise ValueError("must be a JSON object")
    return out


def _split_list(values: Sequence[str] | str | None) -> list[str]:
    """Sources given as a list and/or separated by ';' or whitespace in one string."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    return [x for v in values for x in v.replace(";", " ").split()]


def _strip_query(url: str) -> str:
    return url.split("?", 1)[0] if url.startswith("kafka://") else url


def _bootstrap(args: argparse.Namespace) -> str | None:
    if getattr(args, "bootstrap", None):
        return str(args.bootstrap)
    src = getattr(args, "input", None) or os.environ.get("AD_SOURCE", "")
    if src.startswith("kafka://"):
        parts = urlsplit(src)
        return f"{parts.hostname}:{parts.port or 9092}"
    return None


def _say(msg: str) -> None:
    print(f"adctl: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ progress


class _Progress:
    """A tqdm bar on a terminal, plain lines otherwise (or nothing)."""

    def __init__(self, mode: str, desc: str) -> None:
        self.mode = mode
        if mode == "auto":
            self.mode = "bar" if sys.stderr.isatty() else "plain"
        self.desc = desc
        self.bar: Any = None
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.mode == "none":
            return
        if self.mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:
                self.mode = "plain"
            else:
                if self.bar is None:
                    self.bar = tqdm(total=total, desc=self.desc, unit="key", file=sys.stderr)
                self.bar.update(done - self.bar.n)
                if done >= total:
                    self.bar.close()
                return
        now = time.monotonic()
        if done >= total or now - self.last >= 1.0:
            self.last = now
            _say(f"{self.desc}: {done}/{total} keys ({100 * done / max(1, total):.0f}%)")


# ------------------------------------------------------------------ commands


def _publish(
    args: argparse.Namespace, detector: str, version: str, ref: str, push: bool
) -> dict[str, Any]:
    from control.markers import announce, encode_marker, push_marker

    result: dict[str, Any] = {"detector": detector, "version": version, "model_ref": ref}
    if push:
        if not args.input:
            raise CliError("--push needs the flow's input (--input or AD_SOURCE)")
        written = push_marker(args.input, encode_marker(detector, version, ref))
        result["markers"] = {w.partition: w.position for w in written}
        _say(
            f"model switch to {version} written into {len(written)} input partition(s) "
            f"of {_strip_query(args.input)}"
        )
    if args.announce:
        bootstrap = _bootstrap(args)
        if bootstrap is None:
            _say("not announcing: no Kafka bootstrap (--bootstrap or a kafka:// AD_SOURCE)")
        else:
            announce(
                bootstrap,
                args.control_topic,
                {"type": "model", "event": "pushed" if push else "trained", **result},
            )
            result["announced"] = f"{bootstrap}/{args.control_topic}"
    return result


def cmd_retrain(args: argparse.Namespace) -> int:
    from control.history import Fields, ReadStats, load_series
    from control.training import assemble_model, train_on_dask
    from state import model_store

    sources = [_strip_query(s) for s in _split_list(args.source or os.environ.get("AD_SOURCE"))]
    if not sources:
        raise CliError(
            "no history given: --from kafka://host:port/topic or files "
            "(or set AD_HISTORY / AD_SOURCE)"
        )
    since, until = _parse_time_arg(args.since), _parse_time_arg(args.until)
    stats = ReadStats()
    t0 = time.monotonic()
    _say(f"reading history from {', '.join(sources)}")
    series = load_series(
        sources,
        fields=Fields(args.key_field, args.time_field, args.value_field),
        since=since,
        until=until,
        stats=stats,
        on_progress=lambda n: _say(f"read {n:,} records"),
    )
    points = sum(len(s.values) for s in series.values())
    _say(
        f"read {stats.records:,} records: {len(series)} keys, {points:,} points, "
        f"{stats.bad_records} bad, {stats.skipped_markers} control markers skipped "
        f"({time.monotonic() - t0:.1f}s)"
    )
    where = args.scheduler or f"LocalCluster({args.dask_workers} workers)"
    _say(f"training {args.detector} per key on Dask {where}" + (" with CuPy" if args.gpu else ""))
    per_key = train_on_dask(
        series,
        args.detector,
        params=args.params,
        scheduler=args.scheduler,
        n_workers=args.dask_workers,
        fit_spec=args.fit,
        gpu=args.gpu,
        progress=_Progress(args.progress, "training"),
    )
    version = args.version or model_store.next_version(args.model_store, args.detector)
    training = {
        "sources": sources,
        "since": since,
        "until": until,
        "records": stats.records,
        "keys": len(series),
        "points": points,
        "params": args.params,
    }
    model = assemble_model(args.detector, version, per_key, training)
    ref = model_store.put(
        args.model_store,
        args.detector,
        version,
        model,
        meta={"trained_at": time.time(), "scheduler": where},
    )
    _say(f"stored {args.detector} {version} at {ref}")
    result = _publish(args, args.detector, version, ref, args.push)
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_push_model(args: argparse.Namespace) -> int:
    from state import model_store

    version = args.version
    if version in (None, "", "latest"):
        version = model_store.latest(args.model_store, args.detector)
        if version is None:
            raise CliError(f"no versions of {args.detector!r} in {args.model_store}")
    ref = model_store.model_ref(args.model_store, args.detector, version)
    model_store.fetch(ref)  # the flow will fetch it: make sure it exists and is intact
    result = _publish(args, args.detector, version, ref, push=True)
    print(json.dumps(result, sort_keys=True))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from state import model_store

    for v in model_store.list_versions(args.model_store, args.detector):
        print(f"{v}\t{model_store.model_ref(args.model_store, args.detector, v)}")
    return 0


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
    from control.supervisor import Supervisor

    sv = Supervisor(args.state_dir)
    spec = _spec_from_args(args)
    pids = sv.start(spec, base_env=flow_env())
    _say(
        f"started {spec.module}: {spec.processes} process(es) x {spec.workers} worker(s), "
        f"pids {pids}; logs in {sv.log_dir}, recovery in {spec.recovery_dir}"
    )
    if not args.wait:
        return 0
    procs = sv.wait(args.timeout)
    if any(p.alive for p in procs):
        _say(f"still running after {args.timeout}s")
        return 1
    bad = [p for p in procs if not p.ok]
    for p in bad:
        _say(f"process {p.index} exited with {p.exit_code}; see {sv.log_path(p.index)}")
    return 1 if bad else 0


def cmd_stop(args: argparse.Namespace) -> int:
    from control.supervisor import Supervisor

    sv = Supervisor(args.state_dir)
    if not sv.running():
        _say("the flow is not running")
        return 0
    if args.kill:
        sv.kill()
        _say("killed (SIGKILL); the next run resumes from the last snapshot")
        return 0
    clean, procs = sv.stop(timeout=args.timeout)
    for p in procs:
        how = "interrupted" if p.interrupted else f"exit {p.exit_code}"
        _say(f"process {p.index} (pid {p.pid}): {how}")
    if not clean:
        _say("stop was not clean (timeout or error); see the logs")
    return 0 if clean else 1


def _k8s_target(args: argparse.Namespace) -> Any:
    from control.k8s import K8sTarget

    return K8sTarget(
        statefulset=args.statefulset,
        namespace=args.namespace,
        context=args.context or None,
        kubectl=args.kubectl,
    )


def _do_scale(args: argparse.Namespace, workers: int, processes: int | None) -> None:
    if args.target == "k8s":
        from control.k8s import scale_k8s

        scale_k8s(
            _k8s_target(args), processes or 1, workers, dry_run=args.dry_run, log=lambda m: _say(m)
        )
        return
    from control.supervisor import Supervisor

    if args.dry_run:
        _say(f"dry-run: would restart the local flow with {workers} worker(s)")
        return
    new = Supervisor(args.state_dir).scale(
        workers, processes, timeout=args.timeout, base_env=flow_env()
    )
    _say(
        f"restarted from the recovery store: {new.processes} process(es) x {new.workers} worker(s)"
    )


def cmd_scale(args: argparse.Namespace) -> int:
    _do_scale(args, args.workers, args.processes)
    return 0


def _endpoints(args: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
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
    from control.status import render, snapshot, summarize

    endpoints, info = _endpoints(args)
    prev = snapshot(endpoints)
    while True:
        time.sleep(args.interval)
        endpoints, info = _endpoints(args)
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
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    total = 0.0
    for p in procs:
        try:
            total += p.cpu_percent(None)
        except psutil.Error:
            pass
    cores = min(max(1, workers), os.cpu_count() or 1)
    return total / (100.0 * cores)


def cmd_autoscale(args: argparse.Namespace) -> int:
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
    _say(
        f"autoscaling {args.target} between {cfg.min_workers} and {cfg.max_workers} workers "
        f"(up >= {cfg.up_threshold:.0%}, down <= {cfg.down_threshold:.0%}, sustain "
        f"{cfg.sustain_s:g}s, cooldown {cfg.cooldown_s:g}s, lag 100% = {cfg.lag_high:g})"
    )
    n = 0
    while args.iterations <= 0 or n < args.iterations:
        n += 1
        endpoints, info = _endpoints(args)
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
                _do_scale(args, d.target, None)
            except Exception as exc:  # noqa: BLE001 - keep the loop alive, report it
                _say(f"scaling to {d.target} failed: {exc}")
        time.sleep(args.interval)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from control.history import Fields
    from control.report import plot_report

    inputs = [_strip_query(s) for s in _split_list(args.input)]
    alerts = [_strip_query(s) for s in _split_list(args.alerts)]
    if not inputs and not alerts:
        raise CliError("give --input (readings) and/or --alerts (alert topic or file)")
    out = args.out or f"report-{args.sensor}.png"
    summary = plot_report(
        inputs,
        alerts,
        args.sensor,
        out,
        fields=Fields(args.key_field, args.time_field, args.value_field),
        since=_parse_time_arg(args.since),
        until=_parse_time_arg(args.until),
    )
    print(json.dumps(summary, sort_keys=True))
    return 0


# ------------------------------------------------------------------ parser


def _common_store(p: argparse.ArgumentParser) -> None:
    opt(
        p,
        "--model-store",
        env="AD_MODEL_STORE",
        default=DEFAULT_STORE,
        help="model store URL: redis://host:port[/prefix], file:///dir or s3://bucket/prefix",
    )
    opt(
        p,
        "--detector",
        env="AD_DETECTOR",
        default=Settings().detector,
        help="detector name (the flow's default)",
    )


def _common_publish(p: argparse.ArgumentParser) -> None:
    opt(
        p,
        "--input",
        env="AD_SOURCE",
        help="the flow's input URL to write the model-switch "
        "marker into (kafka://, redis://, kinesis://, file://)",
    )
    opt(
        p,
        "--control-topic",
        env="AD_CONTROL_TOPIC",
        default="ad-control",
        help="Kafka topic for audit announcements",
    )
    opt(
        p,
        "--bootstrap",
        env="AD_CONTROL_BOOTSTRAP",
        help="Kafka bootstrap for announcements (default: from a kafka:// --input)",
    )
    opt(
        p,
        "--announce",
        env="AD_ANNOUNCE",
        default=True,
        flag=True,
        help="announce on the control topic",
    )


def _common_fields(p: argparse.ArgumentParser) -> None:
    opt(p, "--key-field", env="AD_KEY_FIELD", default="sensor_id", help="record key field")
    opt(p, "--time-field", env="AD_TIME_FIELD", default="timestamp", help="event-time field")
    opt(p, "--value-field", env="AD_VALUE_FIELD", default="value", help="value field")
    opt(p, "--since", env="AD_SINCE", help="start of the event-time range (RFC 3339 or epoch s)")
    opt(p, "--until", env="AD_UNTIL", help="end of the event-time range (exclusive)")


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


def build_parser() -> argparse.ArgumentParser:
    """The ``adctl`` argument parser (flags default from ``AD_*`` variables)."""
    ap = argparse.ArgumentParser(prog="adctl", description=(__doc__ or "").split("\n\n")[0])
    opt(
        ap,
        "--state-dir",
        env="AD_STATE_DIR",
        default=".adctl",
        help="where pid files, logs and the recovery store live",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "retrain",
        help="train per-key models on Dask and store a new version",
        description="Read history, fit one model per key on Dask, store a "
        "versioned artifact, announce it, and optionally push it live.",
    )
    opt(
        p,
        "--from",
        dest="source",
        env="AD_HISTORY",
        action="append",
        help="history: kafka://host:port/topic or Parquet/CSV/JSON-lines files (repeat; "
        "defaults to AD_SOURCE)",
    )
    _common_fields(p)
    _common_store(p)
    opt(
        p,
        "--params",
        env="AD_DETECTOR_PARAMS",
        default={},
        type=_json_obj,
        help="detector parameters as a JSON object",
    )
    opt(p, "--version", env="AD_MODEL_VERSION", help="version name (default: next vN)")
    opt(
        p,
        "--scheduler",
        env="AD_DASK_SCHEDULER",
        help="Dask scheduler address tcp://host:8786 (default: an embedded LocalCluster)",
    )
    opt(
        p,
        "--dask-workers",
        env="AD_DASK_WORKERS",
        default=2,
        type=int,
        help="worker processes of the embedded LocalCluster",
    )
    opt(
        p,
        "--fit",
        env="AD_FIT_FUNCTION",
        help="custom fit function package.module:function (default: detectors.fit)",
    )
    opt(
        p,
        "--gpu",
        env="AD_GPU",
        default=False,
        flag=True,
        help="run the numeric work on CuPy (needs a CUDA GPU)",
    )
    opt(
        p,
        "--push",
        env="AD_PUSH",
        default=False,
        flag=True,
        help="also switch the running flow to the new version (writes input markers)",
    )
    opt(
        p,
        "--progress",
        env="AD_PROGRESS",
        default="auto",
        choices=["auto", "bar", "plain", "none"],
        help="progress display",
    )
    _common_publish(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser(
        "push-model",
        help="switch the running flow to a stored model version",
        description="Write a model-switch marker into every partition of the "
        "flow's input; the flow applies it at that input position.",
    )
    _common_store(p)
    opt(
        p,
        "--version",
        env="AD_MODEL_VERSION",
        default="latest",
        help="version to switch to ('latest' for the newest)",
    )
    _common_publish(p)
    p.set_defaults(func=cmd_push_model)

    p = sub.add_parser("models", help="list stored model versions")
    _common_store(p)
    p.set_defaults(func=cmd_models)

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
    opt(p, "--processes", "-p", env="AD_PROCESSES", default=1, type=int, help="processes (-i/-a)")
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
        type=int,
        help="processes (default: unchanged locally, 1 on k8s)",
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
    _common_fields(p)
    opt(p, "--out", env="AD_REPORT_OUT", help="output image (default report-<sensor>.png)")
    p.set_defaults(func=cmd_report)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adctl`` / ``python -m control``."""
    from control.history import HistoryError
    from control.k8s import K8sError
    from control.markers import MarkerError
    from control.supervisor import SupervisorError
    from control.training import TrainingError
    from state.model_store import ModelStoreError

    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except (
        CliError,
        HistoryError,
        K8sError,
        MarkerError,
        SupervisorError,
        TrainingError,
        ModelStoreError,
        ValueError,
    ) as exc:
        print(f"adctl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
