"""Batch jobs: detect and retrain on an engine, their dependencies, and their records.

A job is submitted to the engine as tasks; a job that depends on others passes their
task handles as ``after``, so the engine itself holds it back (Dask futures, Ray
object refs; Spark runs it after them). Jobs are submitted in dependency order,
higher ``priority`` first among ready ones, and the engine gets the priority too
(Dask's ``priority=``). Detect jobs look each partition up in the result cache first
and submit only the missing ones. Every job is recorded as JSON under
``<state dir>/jobs/`` (``adctl jobs`` lists them).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from control.detect import (
    DetectTask,
    PartResult,
    ResultCache,
    cache_key,
    config_digest,
    detect_partition,
    model_digest,
    split_partitions,
)
from control.engines import Engine, Tasks
from control.history import Series
from control.history_columns import Readings
from control.training import _batches, fit_batch
from flows.settings import Settings

__all__ = ["Job", "JobRecord", "JobStore", "run_jobs", "series_of", "timed"]

Progress = Callable[[int, int], None]
#: a detect job's partitions are submitted in about this many chunks
SUBMIT_CHUNKS = 8


@dataclass
class JobRecord:
    """What ``adctl jobs`` shows of a job."""

    id: str
    name: str
    kind: str
    engine: str
    state: str = "queued"  # queued | running | done | failed | cancelled
    priority: int = 0
    depends_on: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    output: str = ""
    tasks: int = 0
    computed: int = 0
    cached: int = 0
    records: int = 0
    alerts: int = 0
    rejected: int = 0  # readings the flow's clock rules refuse (late, future: dead letters)
    error: str = ""
    task_times: list[tuple[float, float]] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        """Seconds from the first task's start to the last one's end (or now)."""
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


class JobStore:
    """Job records, one JSON file each under ``<dir>/jobs/``.

    Args:
        directory: the state directory (records go to its ``jobs/``).
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "jobs"

    def save(self, rec: JobRecord) -> None:
        """Write ``rec`` (atomically)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{rec.id}.tmp"
        tmp.write_text(json.dumps(asdict(rec), sort_keys=True))
        os.replace(tmp, self.dir / f"{rec.id}.json")

    def list(self) -> list[JobRecord]:
        """Every job record, oldest first."""
        out = []
        for p in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            data = json.loads(p.read_text())
            data["task_times"] = [tuple(x) for x in data.get("task_times", [])]
            out.append(JobRecord(**data))
        return sorted(out, key=lambda r: (r.created, r.id))


@dataclass
class Job:
    """One job to run. ``kind`` "detect": ``readings`` through the flow's logic, alerts
    to ``output`` (a callable given the results); "retrain": per-key models of
    ``readings`` (``on_done`` gets ``{key: model}``).
    """

    name: str
    kind: str
    readings: Readings
    settings: Settings
    priority: int = 0
    depends_on: list[str] = field(default_factory=list)
    partitions: int = 64
    use_cache: bool = True
    fail_once: str | None = None
    fit_spec: str | None = None
    #: detect: score with this stored model, ``(version, model ref)`` (``--model``)
    model: tuple[str, str] | None = None
    #: detect: the tenant registry (``AD_TENANTS``; its per-tenant thresholds apply)
    registry: Any = None
    #: detect: sort each sensor's readings by event time first (else input order, as
    #: the flow sees them: readings behind the watermark are dead letters ``late``)
    by_time: bool = False
    on_done: Callable[[Job, Any], str] | None = None
    result: Any = None
    record: JobRecord | None = None


def series_of(r: Readings) -> dict[str, Series]:
    """Per-sensor series (seconds, values) in event-time order, as retrain reads them."""
    out: dict[str, Series] = {}
    if not len(r):
        return out
    order = np.lexsort((r.ts, r.codes))
    codes = r.codes[order]
    bounds = np.searchsorted(codes, np.arange(len(r.names) + 1))
    ts, vals = r.ts[order] / 1000.0, r.vals[order]
    for i, name in enumerate(r.names.tolist()):
        lo, hi = bounds[i], bounds[i + 1]
        if hi > lo:
            out[name] = Series(ts[lo:hi].astype(np.float64), vals[lo:hi].astype(np.float64))
    return out


def timed(fn: Callable[[Any], Any], item: Any) -> tuple[float, float, Any]:
    """Run ``fn(item)`` on a worker: ``(started, finished, result)`` (wall clock)."""
    t0 = time.time()
    out = fn(item)
    return t0, time.time(), out


def _order(jobs: list[Job]) -> list[Job]:
    """Dependency order; among jobs whose dependencies are placed, higher priority first."""
    by_name = {j.name: j for j in jobs}
    for j in jobs:
        for d in j.depends_on:
            if d not in by_name:
                raise ValueError(f"job {j.name!r} depends on unknown job {d!r}")
    placed: list[Job] = []
    done: set[str] = set()
    while len(placed) < len(jobs):
        ready = [j for j in jobs if j.name not in done and set(j.depends_on) <= done]
        if not ready:
            raise ValueError("job dependencies form a cycle")
        ready.sort(key=lambda j: -j.priority)  # stable: list order among equals
        placed.append(ready[0])
        done.add(ready[0].name)
    return placed


def run_jobs(
    engine: Engine,
    jobs: list[Job],
    store: JobStore,
    cache: ResultCache,
    progress: Progress | None = None,
) -> list[Job]:
    """Submit every job to ``engine`` (dependencies as engine dependencies), collect
    the results in submission order, record each job; returns the jobs in that order.
    """
    ordered = _order(jobs)
    batch = uuid.uuid4().hex[:8]
    handles: dict[str, Tasks] = {}
    pending: dict[str, tuple[list[Any], list[PartResult]]] = {}
    total = 0
    for i, job in enumerate(ordered):
        rec = job.record = JobRecord(
            f"{time.strftime('%Y%m%d-%H%M%S')}-{batch}-{i}",
            job.name,
            job.kind,
            engine.name,
            priority=job.priority,
            depends_on=list(job.depends_on),
        )
        after = [handles[d] for d in job.depends_on]
        if job.kind == "detect":
            config = config_digest(job.settings)
            if job.model is not None:
                config = f"{config}:{job.model[0]}:{model_digest(job.model[1])}"
            if job.registry is not None:
                config = f"{config}:tenants:{job.registry.digest}"
            items: list[DetectTask] = []
            hits: list[PartResult] = []
            submitted: list[Tasks] = []
            chunk: list[DetectTask] = []
            # partitions go to the engine in a few chunks as they are cut, so the workers
            # start while the driver still splits the history
            step = max(1, job.partitions // SUBMIT_CHUNKS)
            fn = partial(timed, detect_partition)
            for part in split_partitions(job.readings, job.partitions, job.by_time):
                key = cache_key(part, config)
                hit = cache.get(key) if job.use_cache else None
                if hit is not None:
                    hits.append(hit)
                    continue
                chunk.append(
                    DetectTask(
                        part, job.settings, key, job.fail_once, job.model, registry=job.registry
                    )
                )
                if len(chunk) >= step:
                    submitted.append(engine.submit(fn, chunk, priority=job.priority, after=after))
                    items += chunk
                    chunk = []
            if chunk or not submitted:
                submitted.append(engine.submit(fn, chunk, priority=job.priority, after=after))
                items += chunk
            rec.tasks, rec.cached = len(items) + len(hits), len(hits)
            total += sum(len(t.part) for t in items)
            handles[job.name] = Tasks(
                [h for t in submitted for h in t.handles], len(items), job.priority
            )
            pending[job.name] = (items, hits)
        elif job.kind == "retrain":
            series = series_of(job.readings)
            if not series:
                raise ValueError(f"job {job.name!r}: no readings to train on")
            s = job.settings
            batches = _batches(series, engine.workers() * 4)
            fit = partial(fit_batch, s.detector, s.detector_params or None, fit_spec=job.fit_spec)
            handles[job.name] = engine.submit(
                partial(timed, fit), batches, priority=job.priority, after=after
            )
            rec.tasks = len(batches)
            pending[job.name] = (batches, [])
        else:
            raise ValueError(f"unknown job kind {job.kind!r}; use detect or retrain")
        store.save(rec)
    done_records = 0
    for job in ordered:
        assert job.record is not None  # noqa: S101 - narrowing: set when submitted above
        rec = job.record
        rec.state, rec.started = "running", time.time()
        store.save(rec)
        items, results = pending[job.name]
        try:
            if job.kind == "detect":
                for _i, (t0, t1, res) in engine.as_completed(handles[job.name]):
                    cache.put(res)
                    results.append(res)
                    rec.computed += 1
                    rec.task_times.append((t0, t1))
                    done_records += res.records
                    if progress is not None:
                        progress(done_records, total)
                results.sort(key=lambda r: r.index)
                rec.records = sum(r.records for r in results)
                rec.alerts = sum(len(r.alerts) for r in results)
                rec.rejected = sum(len(r.dead_letters) for r in results)
                job.result = results
            else:
                models: dict[str, Any] = {}
                for _i, (t0, t1, part) in engine.as_completed(handles[job.name]):
                    models.update(part)
                    rec.computed += 1
                    rec.task_times.append((t0, t1))
                job.result = {k: models[k] for k in sorted(models)}
                rec.records = len(job.readings)
            rec.output = job.on_done(job, job.result) if job.on_done else ""
            rec.state = "done"
            if rec.task_times:  # the job ran from its first task's start to its last's end
                rec.started = min(t0 for t0, _ in rec.task_times)
                rec.finished = max(t1 for _, t1 in rec.task_times)
        except Exception as exc:
            rec.state, rec.error = "failed", f"{type(exc).__name__}: {exc}"
            for other in ordered:
                if other.record is not None and other.record.state == "queued":
                    other.record.state = "cancelled"
                    store.save(other.record)
            raise
        finally:
            rec.finished = rec.finished or time.time()
            store.save(rec)
    return ordered
