"""``adctl detect`` and ``adctl jobs``: batch detection over history on an engine, and
the job records; plus the engine options ``adctl retrain`` shares.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control.cli_env import (
    DEFAULT_STORE,
    CliError,
    add_field_options,
    flow_env,
    json_obj,
    opt,
    parse_time_arg,
    split_list,
    strip_query,
)
from control.progress import say

__all__ = ["add_engine_options", "cmd_detect", "cmd_jobs", "engine_of", "register"]


def add_engine_options(p: argparse.ArgumentParser, dask_flags: bool = True) -> None:
    """``--engine`` and where each engine runs (``dask_flags``: add ``--scheduler``,
    which ``retrain`` already has).
    """
    opt(
        p,
        "--engine",
        env="AD_ENGINE",
        default="dask",
        choices=["dask", "ray", "spark"],
        help="batch engine",
    )
    if dask_flags:
        opt(
            p,
            "--scheduler",
            env="AD_DASK_SCHEDULER",
            help="Dask scheduler tcp://host:8786 (default: an embedded LocalCluster)",
        )
        opt(
            p,
            "--workers",
            dest="dask_workers",
            env="AD_ENGINE_WORKERS",
            default=2,
            type=int,
            help="workers of an embedded engine (LocalCluster processes, Ray/Spark cores)",
        )
    opt(p, "--address", env="AD_RAY_ADDRESS", help="Ray cluster address (default: local Ray)")
    opt(p, "--master", env="AD_SPARK_MASTER", help="Spark master (default: local[WORKERS])")
    opt(
        p,
        "--spark-driver-memory",
        env="AD_SPARK_DRIVER_MEMORY",
        default="1g",
        help="heap of the embedded Spark driver, which holds a job's partitions (e.g. 4g)",
    )
    opt(
        p,
        "--retries",
        env="AD_ENGINE_RETRIES",
        default=2,
        type=int,
        help="times the engine retries a failed task",
    )


def engine_of(args: argparse.Namespace) -> Any:
    """The (not yet started) engine the options name."""
    from control.engines import make_engine

    address = {"dask": args.scheduler, "ray": args.address, "spark": args.master}[args.engine]
    return make_engine(
        args.engine, args.dask_workers, address or None, args.retries, args.spark_driver_memory
    )


def train_with_engine(
    args: argparse.Namespace, series: dict[str, Any], progress: Any
) -> tuple[dict[str, Any], str]:
    """``adctl retrain``'s training on ``--engine``: ``({key: model}, where)``."""
    from control.engine_training import train_on_engine

    with engine_of(args) as engine:
        where = engine.where()
        say(f"training {args.detector} per key on {where}" + (" with CuPy" if args.gpu else ""))
        models = train_on_engine(
            engine,
            series,
            args.detector,
            params=args.params,
            fit_spec=args.fit,
            gpu=args.gpu,
            progress=progress,
        )
    return models, where


def _settings(args: argparse.Namespace) -> Any:
    from control.detect import detect_settings
    from flows.settings import SettingsError, load_settings

    env = flow_env()
    if args.config:
        if not Path(args.config).is_file():
            raise CliError(f"--config {args.config!r}: no such file; e.g. --config flow.yaml")
        env["AD_CONFIG"] = str(Path(args.config).resolve())
    try:
        s = load_settings(env)
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    over: dict[str, Any] = {}
    if args.detector:
        over["detector"] = args.detector
    if args.params is not None:
        over["detector_params"] = args.params
    if args.threshold is not None:
        if not 0.0 <= args.threshold <= 1.0:
            raise CliError(f"--threshold {args.threshold}: must be in [0, 1], e.g. 0.9")
        over["threshold"] = args.threshold
    if args.emit:
        over["emit"] = args.emit
    s = detect_settings(s, **over)
    from flows.models import Models

    try:
        Models(s.detector, s.detector_params).get("builtin", "")
    except (KeyError, ValueError, TypeError) as exc:
        raise CliError(f"detector {s.detector!r}: {exc}; e.g. --detector mad") from None
    return s


def _months(ts_min: int, ts_max: int) -> list[tuple[str, int, int]]:
    """Calendar months (UTC) covering ``[ts_min, ts_max]``: ``(YYYY-MM, start, end)`` ms."""
    d = datetime.fromtimestamp(ts_min / 1000, UTC)
    y, m = d.year, d.month
    out: list[tuple[str, int, int]] = []
    while True:
        start = int(datetime(y, m, 1, tzinfo=UTC).timestamp() * 1000)
        y2, m2 = (y + 1, 1) if m == 12 else (y, m + 1)
        end = int(datetime(y2, m2, 1, tzinfo=UTC).timestamp() * 1000)
        if start > ts_max:
            return out
        out.append((f"{y:04d}-{m:02d}", start, end))
        y, m = y2, m2


def _out_for(out: str, label: str | None) -> str:
    if label is None or ("://" in out and not out.startswith("file://")):
        return out
    p = Path(out)
    return str(p.with_name(f"{p.stem}-{label}{p.suffix}"))


def cmd_detect(args: argparse.Namespace) -> int:
    """``adctl detect``: the flow's detector over history, as jobs on an engine."""
    from control.detect import ResultCache
    from control.detect_output import alerts_of, write_alerts
    from control.history import Fields
    from control.history_columns import default_tenant_of, read_readings
    from control.jobs import Job, JobStore, run_jobs
    from control.progress import Progress

    sources = [strip_query(s) for s in split_list(args.source or os.environ.get("AD_SOURCE"))]
    if not sources:
        raise CliError("no history given: --from data/*.parquet or kafka://host:port/topic")
    if not args.out:
        raise CliError("no output given: --out alerts.parquet (or .jsonl, or a sink URL)")
    settings = _settings(args)
    since, until = parse_time_arg(args.since), parse_time_arg(args.until)
    t0 = time.monotonic()
    say(f"reading history from {', '.join(sources)}")
    readings = read_readings(
        sources,
        fields=Fields(args.key_field, args.time_field, args.value_field),
        since_ms=None if since is None else round(since * 1000),
        until_ms=None if until is None else round(until * 1000),
        timestamp_unit=settings.timestamp_unit,
        earliest_ms=settings.earliest_ms,
        default_tenant=default_tenant_of(settings.default_tenant, settings.tenants),
        settings=settings,
    )
    st = readings.stats
    say(
        f"read {st.records:,} records: {len(readings):,} valid readings, {st.bad_records:,} bad, "
        f"{st.out_of_range:,} outside --since/--until ({time.monotonic() - t0:.1f}s)"
    )
    if not len(readings):
        raise CliError("no valid readings in the history (check --from and --since/--until)")
    model = _model_of(args, settings)
    registry = None
    if settings.tenants:  # the flow's tenant registry: per-tenant thresholds
        from state.tenants import load_registry

        registry = load_registry(settings.tenants)
    spans: list[tuple[str | None, Any]] = [(None, readings)]
    if args.split == "month":
        spans = [
            (label, readings.select((readings.ts >= lo) & (readings.ts < hi)))
            for label, lo, hi in _months(int(readings.ts.min()), int(readings.ts.max()))
        ]
        spans = [(label, r) for label, r in spans if len(r)]

    def writer(out: str) -> Any:
        def done(job: Job, results: Any) -> str:
            return write_alerts(alerts_of(results), out, settings)

        return done

    jobs = [
        Job(
            f"detect-{label}" if label else "detect",
            "detect",
            r,
            settings,
            priority=args.priority,
            partitions=args.partitions,
            use_cache=args.cache,
            model=model,
            registry=registry,
            by_time=args.sort_by_time,
            on_done=writer(_out_for(args.out, label)),
        )
        for label, r in spans
    ]
    if args.then_retrain:
        jobs.append(
            Job(
                "retrain",
                "retrain",
                readings,
                settings,
                priority=args.priority,
                depends_on=[j.name for j in jobs],
                on_done=lambda job, models: _store_model(args, settings, sources, job, models),
            )
        )
    state = Path(args.state_dir)
    with engine_of(args) as engine:
        say(f"detecting with {settings.detector} on {engine.where()}, {len(jobs)} job(s)")
        ran = run_jobs(
            engine,
            jobs,
            JobStore(state),
            ResultCache(state / "cache" / "detect"),
            Progress(args.progress, "detect", unit="record"),
        )
    dead_where = ""
    if args.dead_letters:
        from control.detect_output import dead_letters_of, write_dead_letters

        results = [r for j in ran if j.kind == "detect" for r in j.result]
        dead = dead_letters_of(readings, results, settings.flow_id)
        dead_where = write_dead_letters(dead, args.dead_letters, settings)
        say(f"{len(dead):,} dead letters to {dead_where}")
    elapsed = time.monotonic() - t0
    for job in ran:
        rec = job.record
        assert rec is not None  # noqa: S101 - narrowing: run_jobs records every job
        line = {
            "job": rec.id,
            "name": rec.name,
            "state": rec.state,
            "tasks": rec.tasks,
            "computed": rec.computed,
            "cached": rec.cached,
            "records": rec.records,
            "alerts": rec.alerts,
            "rejected": rec.rejected,
            "output": rec.output,
        }
        if dead_where:
            line["dead_letters"] = dead_where
        print(json.dumps(line, sort_keys=True))
    say(f"done in {elapsed:.1f}s ({len(readings) / max(elapsed, 1e-9):,.0f} records/s overall)")
    return 0


def _model_of(args: argparse.Namespace, settings: Any) -> tuple[str, str] | None:
    """``--model``: ``(version, model ref)`` of a stored model (a ref, or a version of
    the detector in ``--model-store``), checked as the flow checks a model switch.
    """
    if not args.model:
        return None
    from control import ops
    from state import model_store

    try:
        if "://" in args.model:
            ref = args.model
            artifact = model_store.fetch(ref)
            version = str(artifact.get("version", ""))
        else:
            version, ref = ops.resolve_model(args.model_store, settings.detector, args.model)
            artifact = model_store.fetch(ref)
    except CliError:
        raise
    except Exception as exc:  # noqa: BLE001 - a missing or damaged model: one line
        raise CliError(f"--model {args.model}: {exc}; e.g. --model v2") from None
    if artifact.get("detector", settings.detector) != settings.detector:
        raise CliError(
            f"--model {args.model} is a {artifact.get('detector')!r} model but the detector "
            f"is {settings.detector!r}; e.g. --detector {artifact.get('detector')}"
        )
    from flows.models import Models

    try:
        Models(settings.detector, settings.detector_params).get(version, ref)
    except Exception as exc:  # noqa: BLE001 - what the flow makes a bad_control
        raise CliError(f"--model {args.model}: cannot load it: {exc}") from None
    return version, ref


def _store_model(
    args: argparse.Namespace, settings: Any, sources: list[str], job: Any, models: Any
) -> str:
    import hashlib

    from control.training import assemble_model
    from state import model_store

    version = args.version or model_store.next_version(args.model_store, settings.detector)
    training = {
        "sources": sources,
        "records": len(job.readings),
        "keys": len(models),
        "params": settings.detector_params,
    }
    model = assemble_model(settings.detector, version, models, training)
    ref = model_store.put(args.model_store, settings.detector, version, model)
    digest = hashlib.sha256(model_store.canonical_json(model).encode()).hexdigest()
    return f"{ref} sha256:{digest[:16]}"


def cmd_jobs(args: argparse.Namespace) -> int:
    """``adctl jobs``: the recorded batch jobs."""
    from control.jobs import JobStore

    recs = JobStore(Path(args.state_dir)).list()[-args.last :]
    if args.json:
        for r in recs:
            print(json.dumps({**r.__dict__, "duration": r.duration}, sort_keys=True))
        return 0
    print(
        f"{'JOB':<30} {'NAME':<16} {'STATE':<9} {'ENGINE':<6} {'DURATION':>9} "
        f"{'TASKS':>5} {'CACHED':>6} {'RECORDS':>10}  OUTPUT"
    )
    for r in recs:
        dur = "-" if r.duration is None else f"{r.duration:.1f}s"
        out = r.output or r.error
        print(
            f"{r.id:<30} {r.name:<16} {r.state:<9} {r.engine:<6} {dur:>9} "
            f"{r.tasks:>5} {r.cached:>6} {r.records:>10}  {out}"
        )
    return 0


def register(sub: Any) -> None:
    """Add ``detect`` and ``jobs`` to ``adctl``'s subparsers ``sub``."""
    p = sub.add_parser(
        "detect",
        help="run the flow's detector over history on a batch engine",
        description="Read history, run the configured windows and detector per sensor "
        "(the streaming flow's own code: same alerts, same alert_ids) on Dask, Ray or "
        "Spark, and write the alerts. Partitions whose input and settings are unchanged "
        "come from the result cache.",
    )
    opt(
        p,
        "--from",
        dest="source",
        env="AD_HISTORY",
        action="append",
        help="history: Parquet/CSV/JSON-lines files or globs, s3://bucket/key, "
        "kafka://host:port/topic (repeat; defaults to AD_SOURCE)",
    )
    add_field_options(p)
    opt(
        p,
        "--out",
        env="AD_DETECT_OUT",
        help="alerts.parquet, alerts.jsonl or a sink URL (kafka://host:port/topic)",
    )
    p.add_argument(
        "--emit",
        choices=["alerts", "all"],
        help="alerts only, or every window's score (default: AD_EMIT / the flow's)",
    )
    p.add_argument("--config", help="YAML flow settings (default: AD_CONFIG)")
    p.add_argument("--detector", help="detector name (default: the flow's configured one)")
    p.add_argument("--params", type=json_obj, help="detector parameters as a JSON object")
    p.add_argument("--threshold", type=float, help="alert threshold (default: the flow's)")
    add_engine_options(p)
    opt(
        p,
        "--partitions",
        env="AD_DETECT_PARTITIONS",
        default=64,
        type=int,
        help="partitions by sensor hash (tasks per job; the unit of caching)",
    )
    opt(p, "--priority", env="AD_PRIORITY", default=0, type=int, help="job priority")
    opt(
        p,
        "--model",
        env="AD_DETECT_MODEL",
        help="score with a stored model: its ref (file:///models/mad/v2.json) or a version "
        "in --model-store (as the flow does after switching to it at the input's start)",
    )
    opt(
        p,
        "--dead-letters",
        env="AD_DETECT_DLQ",
        help="where the flow's dead letters go: dead.jsonl or a sink URL "
        "(kafka://host:port/dlq); records that fail to decode, late and future readings",
    )
    opt(
        p,
        "--sort-by-time",
        env="AD_SORT_BY_TIME",
        default=False,
        flag=True,
        help="sort each sensor's readings by event time first (default: input order, as "
        "the flow reads them; readings behind a sensor's watermark are dead letters)",
    )
    opt(
        p,
        "--cache",
        env="AD_DETECT_CACHE",
        default=True,
        flag=True,
        help="reuse cached partition results (--no-cache recomputes)",
    )
    opt(
        p,
        "--split",
        env="AD_DETECT_SPLIT",
        default="none",
        choices=["none", "month"],
        help="one job per calendar month (outputs get a -YYYY-MM suffix)",
    )
    opt(
        p,
        "--then-retrain",
        env="AD_THEN_RETRAIN",
        default=False,
        flag=True,
        help="after the detect jobs, retrain per-key models on the same history",
    )
    opt(
        p,
        "--model-store",
        env="AD_MODEL_STORE",
        default=DEFAULT_STORE,
        help="where --then-retrain stores the model",
    )
    opt(p, "--version", env="AD_MODEL_VERSION", help="model version (default: next vN)")
    opt(
        p,
        "--progress",
        env="AD_PROGRESS",
        default="auto",
        choices=["auto", "bar", "plain", "none"],
        help="progress display",
    )
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("jobs", help="list batch jobs: state, duration, output")
    p.add_argument("--last", type=int, default=50, help="show the last N jobs")
    p.add_argument("--json", action="store_true", help="print JSON lines")
    p.set_defaults(func=cmd_jobs)
