"""What adctl does, as plain functions: the CLI handlers (``control.commands``) and the
HTTP API (``control.api``) both call these, so each operation is written once.

Every function takes plain values (no argparse, no HTTP) and returns JSON-friendly
data or dataclasses; errors are the control plane's own exceptions (``CliError``,
``SupervisorError``, ``MarkerError``, ``ModelStoreError``, ``HistoryError``, ...).
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from control.cli_env import CliError, strip_query

__all__ = [
    "Announce",
    "kafka_bootstrap",
    "flow_info",
    "flow_status",
    "list_models",
    "metrics_endpoints",
    "publish_model",
    "push_model",
    "recent_alerts",
    "resolve_model",
    "retrain",
    "run_flow",
    "scale_flow",
    "stop_flow",
]

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


# ------------------------------------------------------------------ flow processes


def flow_info(state_dir: str | Path) -> dict[str, Any]:
    """The flow's parallelism, run state and live pids (empty if never started)."""
    from control.supervisor import Supervisor

    sv = Supervisor(state_dir)
    spec = sv.load_spec()
    if spec is None:
        return {}
    procs = sv.processes()
    return {
        "workers": spec.workers,
        "processes": spec.processes,
        "state": "running" if any(p.alive for p in procs) else "stopped",
        "pids": [p.pid for p in procs if p.alive],
    }


def metrics_endpoints(
    state_dir: str | Path, endpoints: str | None = None
) -> tuple[list[str], dict[str, Any]]:
    """The flow's metrics endpoints (given, or from its spec) and :func:`flow_info`."""
    from control.supervisor import Supervisor

    info = flow_info(state_dir)
    if endpoints:
        return [e.strip() for e in endpoints.split(",") if e.strip()], info
    spec = Supervisor(state_dir).load_spec()
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


def flow_status(
    state_dir: str | Path,
    endpoints: str | None = None,
    interval: float = 0.0,
    tenant: str | None = None,
) -> dict[str, Any]:
    """``adctl status --json``: lag, totals, models, checkpoint age and process info.

    Rates (events/s, alerts/s) need two scrapes ``interval`` seconds apart; with 0 they
    are ``None``. With ``tenant``, only that tenant's series of a shared flow count.
    """
    from control.status import snapshot, summarize

    eps, info = metrics_endpoints(state_dir, endpoints)
    prev = None
    if interval > 0:
        prev = snapshot(eps, tenant=tenant)
        time.sleep(interval)
        eps, info = metrics_endpoints(state_dir, endpoints)
    return summarize(prev, snapshot(eps, tenant=tenant), info)


def run_flow(state_dir: str | Path, spec: Any, base_env: Mapping[str, str]) -> list[int]:
    """Start the flow ``spec`` (a ``FlowSpec``) under ``state_dir``; return the pids.

    The detector flow's settings are checked first (``SettingsError``, one line), so a
    bad setting starts nothing.
    """
    from control.supervisor import Supervisor
    from flows.settings import load_settings

    if spec.module.split(":")[0] == "flows.detector":  # its own check, before any start
        load_settings({**base_env, **spec.env})
    return Supervisor(state_dir).start(spec, base_env=base_env)


@dataclass
class StopResult:
    """How a stop went: was anything running, was it clean, each process's end."""

    was_running: bool
    clean: bool
    processes: list[dict[str, Any]]


def stop_flow(state_dir: str | Path, timeout: float = 60.0, kill: bool = False) -> StopResult:
    """Stop the flow cleanly (SIGINT, wait, SIGKILL after ``timeout``), or kill it."""
    from control.supervisor import Supervisor

    sv = Supervisor(state_dir)
    if not sv.running():
        return StopResult(False, True, [])
    if kill:
        sv.kill()
        return StopResult(True, False, [_proc(p) for p in sv.processes()])
    clean, procs = sv.stop(timeout=timeout)
    return StopResult(True, clean, [_proc(p) for p in procs])


def _proc(p: Any) -> dict[str, Any]:
    return {
        "index": p.index,
        "pid": p.pid,
        "alive": p.alive,
        "exit_code": p.exit_code,
        "interrupted": p.interrupted,
    }


def scale_flow(
    state_dir: str | Path,
    workers: int,
    processes: int | None,
    timeout: float,
    base_env: Mapping[str, str],
) -> Any:
    """Restart the local flow from its recovery store with new parallelism; the spec."""
    from control.supervisor import Supervisor

    return Supervisor(state_dir).scale(workers, processes, timeout=timeout, base_env=base_env)


# ------------------------------------------------------------------ models


def list_models(store: str, detector: str) -> list[dict[str, str]]:
    """Stored versions of ``detector`` (oldest first) with their model refs."""
    from state import model_store

    return [
        {"version": v, "model_ref": model_store.model_ref(store, detector, v)}
        for v in model_store.list_versions(store, detector)
    ]


def resolve_model(store: str, detector: str, version: str | None) -> tuple[str, str]:
    """``(version, ref)`` of a stored, intact artifact (``latest``/None: the newest)."""
    from state import model_store

    if version in (None, "", "latest"):
        version = model_store.latest(store, detector)
        if version is None:
            raise CliError(f"no versions of {detector!r} in {store}")
    ref = model_store.model_ref(store, detector, version)
    model_store.fetch(ref)  # the flow will fetch it: make sure it exists and is intact
    return version, ref


def kafka_bootstrap(url: str | None) -> str | None:
    """``host:port`` of a ``kafka://`` URL, else None."""
    if not url or not url.startswith("kafka://"):
        return None
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 9092}"


@dataclass
class Announce:
    """Where to announce model events (a Kafka control topic); bootstrap None: nowhere."""

    bootstrap: str | None
    topic: str = "ad-control"


def control_key() -> bytes:
    """The key that signs control markers (``AD_CONTROL_KEY``, shared with the flows)."""
    from schemas.markers import MIN_KEY_BYTES

    key = os.environ.get("AD_CONTROL_KEY", "").encode()
    if len(key) < MIN_KEY_BYTES:
        raise CliError(
            f"AD_CONTROL_KEY must be set to the flow's control key (at least {MIN_KEY_BYTES} "
            "characters) to sign model switches; e.g. export AD_CONTROL_KEY=$(openssl rand "
            "-hex 32) for both adctl and the flow"
        )
    return key


def publish_model(
    detector: str,
    version: str,
    ref: str,
    *,
    push_input: str | None,
    announce: Announce | None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Write the model-switch marker into ``push_input`` (if given) and announce it."""
    from control.markers import announce as send
    from control.markers import encode_marker, push_marker

    result: dict[str, Any] = {"detector": detector, "version": version, "model_ref": ref}
    if push_input:
        written = push_marker(push_input, encode_marker(detector, version, ref, control_key()))
        result["markers"] = {w.partition: w.position for w in written}
        log(
            f"model switch to {version} written into {len(written)} input partition(s) "
            f"of {strip_query(push_input)}"
        )
    if announce is not None:
        if announce.bootstrap is None:
            log("not announcing: no Kafka bootstrap (--bootstrap or a kafka:// AD_SOURCE)")
        else:
            event = "pushed" if push_input else "trained"
            send(announce.bootstrap, announce.topic, {"type": "model", "event": event, **result})
            result["announced"] = f"{announce.bootstrap}/{announce.topic}"
    return result


def push_model(
    store: str,
    detector: str,
    version: str | None,
    push_input: str,
    announce: Announce | None,
    log: Log = _quiet,
) -> dict[str, Any]:
    """``adctl push-model``: switch the flow reading ``push_input`` to a stored version."""
    version, ref = resolve_model(store, detector, version)
    if not push_input:
        raise CliError("push-model needs the flow's input (--input or AD_SOURCE)")
    return publish_model(detector, version, ref, push_input=push_input, announce=announce, log=log)


def push_registry(
    store: str, registry_path: str, push_input: str, log: Log = _quiet
) -> dict[str, Any]:
    """``adctl tenants push`` (and the API): store the registry at ``registry_path`` in
    the model store and write a signed registry-switch marker into every partition of
    ``push_input``; the flow applies the registry from that input position on.
    """
    from control.markers import push_marker
    from schemas.markers import encode_registry_marker
    from state.tenants import RegistryError, load_registry, store_registry

    if not push_input:
        raise CliError("tenants push needs the flow's input (--input or AD_SOURCE)")
    try:
        registry = load_registry(registry_path)
        ref = store_registry(store, registry)
    except RegistryError as exc:
        raise CliError(str(exc)) from None
    marker = encode_registry_marker(registry.digest, ref, control_key())
    written = push_marker(push_input, marker)
    log(
        f"tenant registry {registry.version} written into {len(written)} input "
        f"partition(s) of {strip_query(push_input)}"
    )
    return {
        "registry_ref": ref,
        "digest": registry.digest,
        "tenants": sorted(registry.tenants),
        "markers": {w.partition: w.position for w in written},
    }


def retrain(
    sources: Sequence[str],
    *,
    store: str,
    detector: str,
    fields: Any = None,
    since: float | None = None,
    until: float | None = None,
    params: Mapping[str, Any] | None = None,
    version: str | None = None,
    scheduler: str | None = None,
    dask_workers: int = 2,
    fit: str | None = None,
    gpu: bool = False,
    progress: Any = None,
    train: Callable[[dict[str, Any], Any], tuple[dict[str, Any], str]] | None = None,
    push_input: str | None = None,
    announce: Announce | None = None,
    log: Log = _quiet,
    default_tenant: str | None = None,
) -> dict[str, Any]:
    """``adctl retrain``: fit per-key models from history, store a new version, announce
    it and optionally push it live (``push_input``). ``train(series, progress)`` fits on
    a batch engine and returns ``({key: model}, where)``; default: Dask. Keys are the
    flow's state keys: (tenant, sensor), with ``default_tenant`` for records without one.
    """
    from control.history import Fields, ReadStats, load_series
    from control.training import assemble_model, train_on_dask
    from state import model_store

    sources = [strip_query(s) for s in sources]
    if not sources:
        raise CliError(
            "no history given: --from kafka://host:port/topic or files "
            "(or set AD_HISTORY / AD_SOURCE)"
        )
    params = dict(params or {})
    stats = ReadStats()
    t0 = time.monotonic()
    log(f"reading history from {', '.join(sources)}")
    series = load_series(
        sources,
        fields=fields or Fields(),
        since=since,
        until=until,
        stats=stats,
        on_progress=lambda n: log(f"read {n:,} records"),
        default_tenant=default_tenant or None,
    )
    points = sum(len(s.values) for s in series.values())
    log(
        f"read {stats.records:,} records: {len(series)} keys, {points:,} points, "
        f"{stats.bad_records} bad, {stats.skipped_markers} control markers skipped "
        f"({time.monotonic() - t0:.1f}s)"
    )
    if train is not None:
        per_key, where = train(series, progress)
    else:
        where = scheduler or f"LocalCluster({dask_workers} workers)"
        log(f"training {detector} per key on Dask {where}" + (" with CuPy" if gpu else ""))
        per_key = train_on_dask(
            series,
            detector,
            params=params,
            scheduler=scheduler,
            n_workers=dask_workers,
            fit_spec=fit,
            gpu=gpu,
            progress=progress,
        )
    version = version or model_store.next_version(store, detector)
    training = {
        "sources": sources,
        "since": since,
        "until": until,
        "records": stats.records,
        "keys": len(series),
        "points": points,
        "params": params,
    }
    model = assemble_model(detector, version, per_key, training)
    ref = model_store.put(
        store, detector, version, model, meta={"trained_at": time.time(), "scheduler": where}
    )
    log(f"stored {detector} {version} at {ref}")
    return publish_model(detector, version, ref, push_input=push_input, announce=announce, log=log)


# ------------------------------------------------------------------ alerts


def recent_alerts(
    sinks: Sequence[str],
    tenant: str | None = None,
    limit: int = 100,
    since: float | None = None,
    kafka_conf: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """The ``limit`` latest alerts (by ``window_end``; read order breaks ties) in the alert
    sinks (Kafka topics or JSON-lines files), only those whose ``tenant_id`` is ``tenant``
    when one is given, oldest first; Kafka is read from the record time ``since`` (epoch
    seconds) on.
    """
    from control.history import iter_records, parse_time

    def end_of(rec: dict[str, Any]) -> float:
        try:
            return parse_time(rec["window_end"])
        except (KeyError, TypeError, ValueError):
            return float("-inf")

    best: list[tuple[float, int, dict[str, Any]]] = []  # a min-heap of the latest
    sources = [strip_query(s) for s in sinks]
    for n, rec in enumerate(iter_records(sources, since=since, kafka_conf=kafka_conf)):
        if tenant is not None and rec.get("tenant_id") != tenant:
            continue
        item = (end_of(rec), n, rec)
        if len(best) < limit:
            heapq.heappush(best, item)
        elif limit > 0 and item[:2] > best[0][:2]:
            heapq.heapreplace(best, item)
    return [rec for _t, _n, rec in sorted(best, key=lambda x: x[:2])]
