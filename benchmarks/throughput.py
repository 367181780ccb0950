"""Throughput, latency, recovery and state-scale benchmark, side by side with the ceiling.

    python -m benchmarks.throughput --repeat 3     # full size (about 30 minutes)
    python -m benchmarks.throughput --quick        # small sizes, a minute or two

Needs the local Kafka (``bash stack/stack.sh up kafka``; ``AD_STACK_KAFKA_PORT``,
default 19092). Everything runs in one invocation so the ratios hold on a noisy machine:

1. ceiling   raw confluent-kafka consume -> produce of every record (no processing)
2. baseline  naive per-item Bytewax pipeline (Bytewax KafkaSource -> json.loads -> key
             -> stateful_map -> filter -> Bytewax KafkaSink), at-least-once
3. flow      the detector flow (flows.detector), exactly-once sink, 1 and 2 workers,
             and the default deployment (``adctl run``'s: one process per core,
             ``AD_KEY_BY=auto``) (and the ``mad`` detector with ``--mad``); at each size
             of ``--records`` (after the first only the ceiling, today's 1-worker
             default and the default deployment); CPU seconds per million records
4. latency   the default deployment at fractions (``--latency-loads``) of its live
             maximum (found first, by bisection: the highest offered rate it keeps up
             with while the generator runs on the same cores), and at the middle
             fraction of its replay throughput (section 3): produce time of the record
             that closes a window -> its output visible read_committed; p50/p99 against
             load in a PNG next to the JSON
5. recovery  the flow holding ``--recovery-keys`` keys is SIGKILLed and restarted: time
             from restart until it has caught up (output of a record produced at restart
             visible)
6. state     resident memory per key, snapshot size/duration at each ``--state-keys``
             (benchmarks.bench_state, in-process)

Prints a table and writes JSON (``--out``). Throughput is records read / (time from the
first record read to the process exit, i.e. all output delivered / committed); process
start-up is excluded. ``--repeat N`` runs the throughput rounds N times, interleaved,
and reports the median. Benchmarks are commands, never timed tests. The latest results
and what each number means: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil

from benchmarks import bench_kafka as bk
from control.launch import FlowLaunch, clean_env, cores
from control.supervisor import init_recovery as _init_recovery

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SECTIONS = ("ceiling", "baseline", "flow", "latency", "recovery", "state")


# -- processes -----------------------------------------------------------------------
def flow_env(**overrides: str) -> dict[str, str]:
    """The environment of a flow process: no stray AD_*/BENCH_* settings, plus overrides."""
    return clean_env(ROOT, ("AD_", "BENCH_"), **overrides)


def init_recovery(path: Path, parts: int = 2) -> Path:
    _init_recovery(path, parts)
    return path


class Flow:
    """A ``python -m bytewax.run`` execution: ``processes`` processes x ``workers`` workers.

    After ``wait``: ``ended`` (last exit), ``cpu_s`` (user+sys of all processes) and
    ``peak_rss`` (sum of each process's peak RSS).

    Args:
        target: what ``bytewax.run`` runs (a module, or ``module:factory()``).
        env: the flow's environment.
        workers: workers per process.
        recovery: the recovery store (``None``: none).
        snapshot_s: seconds between snapshots.
        log: the file the processes' output is appended to.
        marks: the file the timing marks go to (``BENCH_MARKS``).
        processes: how many processes.
        profile: a py-spy output file (empty: no profiling).
    """

    def __init__(
        self,
        target: str,
        env: dict[str, str],
        workers: int,
        recovery: Path | None,
        snapshot_s: int,
        log: Path,
        marks: Path,
        processes: int = 1,
        profile: str = "",
    ) -> None:
        self.marks = marks
        self.log = log
        self.profile = profile
        self.started = time.time()

        def spy(i: int) -> list[str]:
            """py-spy records each process: raw folded stacks."""
            if not profile:
                return []
            native = ["--native"] if os.environ.get("BENCH_PROFILE_NATIVE") else []
            out_file = profile if processes == 1 else f"{profile}.p{i}"
            py_spy = str(Path(PY).with_name("py-spy"))
            return [py_spy, "record", "-r", "250", "-f", "raw", *native, "-o", out_file, "--"]

        launch = FlowLaunch(
            target=target,
            workers=workers,
            processes=processes,
            recovery_dir=str(recovery) if recovery is not None else None,
            snapshot_s=snapshot_s,
            python=PY,
        )
        with open(log, "ab") as out:
            self.procs = launch.spawn(
                {**env, "BENCH_MARKS": str(marks)}, cwd=ROOT, stdout=out, wrap=spy
            )
        self.pid = self.procs[0].pid
        self._done: dict[int, tuple[float, int, Any]] = {}
        self.ended: float | None = None
        self.code: int | None = None
        self.cpu_s = 0.0
        self.peak_rss = 0

    def poll(self) -> bool:
        """True once every process has exited (records exit time, CPU and peak RSS)."""
        if self.code is not None:
            return True
        for p in self.procs:
            if p.pid in self._done:
                continue
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid != 0:
                code = os.waitstatus_to_exitcode(status)
                p.returncode = code
                self._done[p.pid] = (time.time(), code, ru)
        if len(self._done) < len(self.procs):
            return False
        done = self._done.values()
        self.ended = max(t for t, _c, _r in done)
        self.code = next((c for _t, c, _r in done if c != 0), 0)
        self.cpu_s = sum(r.ru_utime + r.ru_stime for _t, _c, r in done)
        self.peak_rss = sum(r.ru_maxrss * 1024 for _t, _c, r in done)
        return True

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"flow ran over {timeout:.0f} s; log {self.log}")
            time.sleep(0.02)
        if self.code != 0:
            raise RuntimeError(f"flow exited with {self.code}:\n{self.tail()}")

    def kill(self) -> None:
        if self.code is None and self.profile:  # let py-spy write its profile first
            for p in self.procs:
                os.kill(p.pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while not self.poll() and time.monotonic() < deadline:
                time.sleep(0.1)
            for p in self.procs:  # and nothing of the group outlives it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        if self.code is None:
            for p in self.procs:
                if p.pid not in self._done:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)
            while not self.poll():
                time.sleep(0.01)

    def rss(self) -> int:
        try:
            p = psutil.Process(self.pid)
            return p.memory_info().rss + sum(c.memory_info().rss for c in p.children(True))
        except psutil.Error:
            return 0

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def read_marks(self) -> dict[str, Any]:
        first: list[float] = []
        built: list[float] = []
        records = 0
        ends = 0
        if self.marks.exists():
            for line in self.marks.read_text().splitlines():
                kind, _part, t, *rest = line.split()
                if kind == "first":
                    first.append(float(t))
                elif kind == "built":
                    built.append(float(t))
                elif kind == "end":
                    ends += 1
                    records += int(rest[0]) if rest else 0
        return {
            "first": min(first) if first else None,
            "built": len(built),
            "built_last": max(built) if built else None,
            "records": records,
            "ends": ends,
        }


def timed_run(
    target: str,
    env: dict[str, str],
    workers: int,
    recovery: Path | None,
    snapshot_s: int,
    work: Path,
    name: str,
    timeout: float,
    processes: int = 1,
    profile: str = "",
) -> dict[str, Any]:
    tag = f"{name}-{uuid.uuid4().hex[:6]}"
    flow = Flow(
        target,
        env,
        workers,
        recovery,
        snapshot_s,
        work / f"{tag}.log",
        work / f"{tag}.marks",
        processes,
        profile,
    )
    flow.wait(timeout)
    m = flow.read_marks()
    if m["first"] is None or flow.ended is None:
        raise RuntimeError(f"{name}: no record was read\n{flow.tail()}")
    secs = flow.ended - m["first"]
    return {
        "records": m["records"],
        "seconds": secs,
        "events_per_s": m["records"] / secs,
        "startup_s": m["first"] - flow.started,
        "cpu_s": flow.cpu_s,
        "peak_rss_bytes": flow.peak_rss,
    }


def wait_for(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> float:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.time()


# -- the sections ----------------------------------------------------------------------
class Bench:
    """One throughput benchmark run: its topics, work directory and flow processes.

    Args:
        args: the command line's options.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.brokers = args.brokers
        self.topics: list[str] = []
        self.work = Path(tempfile.mkdtemp(prefix="ad-bench-"))
        self.results: dict[str, Any] = {}

    def topic(self, prefix: str, partitions: int) -> str:
        from connectors.kafka import ensure_topic

        name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
        ensure_topic(self.brokers, name, partitions)
        self.topics.append(name)
        return name

    def flow_env(self, src: str, tail: bool, **extra: str) -> tuple[dict[str, str], str]:
        flow_id = f"bench-{uuid.uuid4().hex[:10]}"
        alerts = self.topic("alerts", 4)
        dlq = self.topic("dlq", 1)
        settings = {
            "AD_SOURCE": f"kafka://{self.brokers}/{src}?tail={'true' if tail else 'false'}"
            f"&batch={self.a.batch}" + (f"&linger={self.a.linger}" if self.a.linger else ""),
            "AD_SINK": f"kafka://{self.brokers}/{alerts}",
            "AD_DLQ": f"kafka://{self.brokers}/{dlq}?partitions=1",
            "AD_FLOW_ID": flow_id,
            "AD_DETECTOR": self.a.detector,
            "AD_KEY_BY": self.a.key_by,
            "AD_METRICS_PORT": "0",  # no server: runs and tests must not share a port
        }
        settings.update(extra)
        env = flow_env(**settings)
        return env, alerts

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # 1-3 -------------------------------------------------------------------------------
    def throughput(self) -> None:
        """Each run ``--repeat`` times, rounds interleaved (so noise from other work on
        the machine hits every run alike); a row is the median round, ``runs`` all.
        """
        a = self.a
        srcs = []
        for size in a.records:
            src = self.topic("in", a.partitions)
            t = time.perf_counter()
            n = bk.produce_all(self.brokers, src, bk.dataset(size, a.sensors, a.interval_ms))
            self.log(
                f"produced {n} records over {a.sensors} sensors, {a.partitions} partitions "
                f"in {time.perf_counter() - t:.1f} s"
            )
            srcs.append((size, src))
        samples: dict[str, list[dict[str, Any]]] = {}
        for rnd in range(a.repeat):
            for i, (size, src) in enumerate(srcs):
                suffix = "" if i == 0 else f"@{size / 1e6:g}M"
                for name, run in self._throughput_runs(src, first=i == 0):
                    r = run()
                    if r["records"] != size:
                        raise RuntimeError(f"{name} read {r['records']} records, not {size}")
                    r["cpu_s_per_m"] = r["cpu_s"] / size * 1e6 if r.get("cpu_s") else None
                    samples.setdefault(name + suffix, []).append(r)
                    self.log(
                        f"round {rnd + 1}/{a.repeat} {name}{suffix}: "
                        f"{r['events_per_s']:,.0f} events/s, "
                        f"{_f(r['cpu_s_per_m'], '{:.2f}')} CPU s per M"
                    )
        rows = self.results.setdefault("throughput", {})
        for name, runs in samples.items():
            ranked = sorted(runs, key=lambda r: r["events_per_s"])
            row = dict(ranked[(len(ranked) - 1) // 2])  # the median (lower, for even counts)
            row["runs_events_per_s"] = [r["events_per_s"] for r in runs]
            rows[name] = row

    def _throughput_runs(
        self, src: str, first: bool = True
    ) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
        a = self.a
        timeout = max(120.0, max(a.records) / 5000)
        runs: list[tuple[str, Callable[[], dict[str, Any]]]] = []

        def ceiling() -> dict[str, Any]:
            out = self.topic("ceiling-out", 4)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.run(
                [
                    PY,
                    "-m",
                    "benchmarks.bench_kafka",
                    "ceiling",
                    self.brokers,
                    src,
                    out,
                    str(a.batch),
                ],
                cwd=ROOT,
                env=flow_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["events_per_s"] = r["records"] / r["seconds"]
            r["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            return r

        def baseline() -> dict[str, Any]:
            out = self.topic("baseline-out", 4)
            env = flow_env(BENCH_BROKERS=self.brokers, BENCH_IN=src, BENCH_OUT=out)
            rec = init_recovery(self.work / f"rec-baseline-{uuid.uuid4().hex[:6]}")
            return timed_run(
                "benchmarks.bench_flows:baseline_flow()",
                env,
                1,
                rec,
                a.snapshot_s,
                self.work,
                "baseline",
                timeout,
            )

        def flow(det: str, workers: int, procs: int, key_by: str, name: str) -> dict[str, Any]:
            env, _alerts = self.flow_env(src, tail=False, AD_DETECTOR=det, AD_KEY_BY=key_by)
            if key_by == "auto":  # the default deployment: nothing set
                env.pop("AD_KEY_BY")
            rec = init_recovery(self.work / f"rec-{name}-{uuid.uuid4().hex[:6]}")
            prof = a.profile_flow if (workers, det) == (1, a.detector) else ""
            if prof and key_by != "sensor":
                prof += f".{key_by}"
            if prof and procs > 1:
                prof += f".{procs}p"
            r = timed_run(
                "benchmarks.bench_flows:detector_flow()",
                env,
                workers,
                rec,
                a.snapshot_s,
                self.work,
                name,
                timeout,
                procs,
                prof,
            )
            r.update(detector=det, workers=workers * procs, processes=procs, key_by=key_by)
            return r

        if "ceiling" in a.sections:
            runs.append(("ceiling", ceiling))
        if "baseline" in a.sections and first:
            runs.append(("baseline", baseline))
        if "flow" in a.sections:
            # (detector, workers per process, processes, key groups by); 2 workers as 2
            # threads of one process (-w 2) and as 2 processes (-i/-a): threads share
            # one GIL. Key groups by sensor (the default) send about half the records
            # between 2 processes; by partition (AD_KEY_BY=partition: the input is keyed
            # by sensor) each group stays on the worker that reads its partition.
            # The default deployment (adctl run, the container, k8s): one process per
            # core, AD_KEY_BY=auto (each sensor's state at its home partition).
            d = a.detector
            variants = [
                (d, 1, 1, "sensor"),
                (d, 2, 1, "sensor"),
                (d, 1, 2, "sensor"),
                (d, 1, 1, "partition"),
                (d, 1, 2, "partition"),
            ]
            if a.mad and a.detector != "mad":
                variants.append(("mad", 1, 1, "sensor"))
            if not first:
                variants = [(d, 1, 1, "sensor")]
            variants.append((d, 1, a.default_processes, "auto"))
            for det, workers, procs, key_by in variants:
                name = (
                    "flow_default"
                    if key_by == "auto"
                    else f"flow_{det}_w{workers}"
                    + (f"x{procs}p" if procs > 1 else "")
                    + ("_bypart" if key_by == "partition" else "")
                )
                runs.append(
                    (name, lambda d=det, w=workers, p=procs, k=key_by, n=name: flow(d, w, p, k, n))
                )
        return runs

    # 4 ---------------------------------------------------------------------------------
    def latency(self) -> None:
        """The default deployment (``--latency-processes``, ``--key-by``) at each load of
        ``--latency-loads``, or at ``--latency-rate``; p50/p99 against load plotted.

        Loads are fractions of the *live* maximum (``--latency-of live``, the default):
        the highest offered rate the deployment keeps up with while the generator runs
        on the same cores as the flow and the broker (:meth:`_keeps_up`), found by
        bisection between 10% and ``--latency-probe`` of the replay throughput in
        ``--latency-search`` short runs. ``--latency-of replay``: fractions of the
        replay throughput (the flow section's ``flow_default``: a topic read back with
        nothing else running; or ``--latency-max-rate``). With both known, one more run
        at the middle load as a fraction of the replay throughput shows that reading.
        """
        a = self.a
        tp = self.results.get("throughput", {})
        replay = a.latency_max_rate or tp.get("flow_default", {}).get("events_per_s")
        top = max(
            [a.latency_rate]
            if a.latency_rate
            else [f * (replay or 20000.0) for f in (*a.latency_loads, a.latency_probe)]
        )
        payloads, closes = self._live_input(
            int(top * (a.latency_warmup + max(a.latency_seconds, a.latency_probe_seconds)))
        )
        out: list[dict[str, Any]] = []
        maxima: dict[str, Any] = {"replay": replay}
        for snap in a.latency_snapshots:
            if a.latency_rate:
                runs = [a.latency_rate]
            else:
                live = None
                if a.latency_of == "live":
                    live, tries = self._live_max(replay or 40000.0, snap, payloads, closes)
                    maxima[f"live_s{snap}"] = live
                    maxima[f"search_s{snap}"] = tries
                base = live or replay or 20000.0
                runs = [f * base for f in a.latency_loads]
                if live and replay:
                    mid = sorted(a.latency_loads)[len(a.latency_loads) // 2]
                    runs.append(mid * replay)
            for rate in runs:
                r = self._latency_run(
                    rate, snap, payloads, closes, maxima.get(f"live_s{snap}"), replay
                )
                out.append(r)
        self.results["latency"] = out
        self.results["latency_max"] = maxima

    def _live_input(self, total: int) -> tuple[list[tuple[bytes, bytes]], dict]:
        """The live runs' input (each run produces a prefix): sensor i's k-th reading is
        ``--interval-ms`` after its previous one; phases spread the window boundaries
        over the sensors, so windows close all the time. ``closes``: (sensor, window
        end) -> index of the reading that closes that window.
        """
        a = self.a
        payloads: list[tuple[bytes, bytes]] = []
        closes: dict[tuple[str, int], int] = {}
        k = 0
        while len(payloads) < total:
            for i in range(a.sensors):
                if len(payloads) >= total:
                    break
                phase = (i * bk.WINDOW_MS) // a.sensors
                off = phase + k * a.interval_ms
                if k > 0 and off // bk.WINDOW_MS > (off - a.interval_ms) // bk.WINDOW_MS:
                    end = bk.START_MS + (off // bk.WINDOW_MS) * bk.WINDOW_MS
                    closes[(bk.sensor_id(i), end)] = len(payloads)
                payloads.append((bk.sensor_id(i).encode(), bk.reading(i, k, a.interval_ms, phase)))
            k += 1
        return payloads, closes

    def _live_max(
        self, replay: float, snap: int, payloads: list[tuple[bytes, bytes]], closes: dict
    ) -> tuple[float, list[dict[str, Any]]]:
        """The highest offered rate the deployment keeps up with (bisection over
        ``--latency-search`` runs of ``--latency-probe-seconds``), and every try.
        """
        a = self.a
        lo, hi = 0.1 * replay, a.latency_probe * replay
        tries: list[dict[str, Any]] = []
        for _ in range(a.latency_search):
            rate = (lo + hi) / 2
            r = self._latency_run(rate, snap, payloads, closes, None, replay, probe=True)
            r["kept_up"] = self._keeps_up(r)
            tries.append(r)
            lo, hi = (rate, hi) if r["kept_up"] else (lo, rate)
        return lo, tries

    @staticmethod
    def _keeps_up(r: dict[str, Any]) -> bool:
        """A run kept up when the generator produced what was offered (97%), every
        output arrived, and the flow had no backlog by the end: the median latency of
        the run's last third is within 1 s of half a snapshot interval (the median wait
        for an epoch's commit) and not more than half a snapshot above the first
        third's (a backlog built at the start and never drained is not keeping up).
        """
        first, last = r.get("p50_first_third_ms"), r.get("p50_last_third_ms")
        if first is None or last is None:
            return False
        snap_ms = 1000 * r["snapshot_s"]
        return (
            r["achieved_rate"] >= 0.97 * r["rate"]
            and r["samples"] >= 0.99 * r["expected"]
            and last <= snap_ms / 2 + 1000
            and last <= first + snap_ms / 2
        )

    def _latency_run(
        self,
        rate: float,
        snapshot_s: int,
        payloads: list[tuple[bytes, bytes]],
        closes: dict[tuple[str, int], int],
        live_max: float | None,
        replay_max: float | None = None,
        probe: bool = False,
    ) -> dict:
        """One run at ``rate`` offered (a prefix of ``payloads``): latency quantiles, the
        medians of the span's first and last thirds, and ``processed_rate``, the slope of
        the flow's visible progress over the span.
        """
        a = self.a
        src = self.topic("live", a.partitions)
        warm, dur = a.latency_warmup, (a.latency_probe_seconds if probe else a.latency_seconds)
        total = min(len(payloads), int(rate * (warm + dur)))
        payloads = payloads[:total]
        env, alerts = self.flow_env(src, tail=True, AD_EMIT="all")
        if a.key_by == "auto":
            env.pop("AD_KEY_BY")
        watcher = bk.Watcher(self.brokers, alerts)
        watcher.start()
        rec = init_recovery(self.work / f"rec-lat-{uuid.uuid4().hex[:6]}")
        tag = f"{snapshot_s}-{rate:.0f}"
        flow = Flow(
            "benchmarks.bench_flows:detector_flow()",
            env,
            1,
            rec,
            snapshot_s,
            self.work / f"latency-s{tag}.log",
            self.work / f"lat-{tag}.marks",
            processes=a.latency_processes,
        )
        times = [0.0] * len(payloads)
        try:
            wait_for(
                lambda: flow.poll() or flow.read_marks()["built"] >= a.partitions,
                120,
                "the flow to start",
            )
            if flow.code is not None:
                raise RuntimeError(f"latency flow exited early:\n{flow.tail()}")
            time.sleep(1.0)  # sink partitions initialise after the source partitions
            self.log(
                f"latency: producing {total} records at {rate:,.0f}/s (snapshot {snapshot_s} s)"
            )
            achieved = bk.paced_produce(self.brokers, src, payloads, rate, times)
            t0, t_end = times[0], time.time()
            time.sleep(2 * snapshot_s + 2.0)
            cpu_s = 0.0
            for proc in flow.procs:
                with contextlib.suppress(psutil.Error):
                    t = psutil.Process(proc.pid).cpu_times()
                    cpu_s += t.user + t.system
        finally:
            flow.kill()
            watcher.stop.set()
            watcher.join(5)
        seen: dict[tuple[str, int], float] = {}
        for t, body in watcher.bodies():
            key = (body["sensor_id"], bk.iso_ms(body["window_end"]))
            seen.setdefault(key, t)
        lat = []
        thirds: list[list[float]] = [[], [], []]
        expected = 0
        span = max(1e-9, t_end - (t0 + warm))
        for key, idx in closes.items():
            if idx >= total or times[idx] < t0 + warm:
                continue
            expected += 1
            if key in seen:
                x = seen[key] - times[idx]
                lat.append(x)
                thirds[min(2, int(3 * (times[idx] - t0 - warm) / span))].append(x)
        lat.sort()

        def median_ms(xs: list[float]) -> float | None:
            return sorted(xs)[len(xs) // 2] * 1000 if xs else None

        def q(p: float) -> float | None:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else None

        r = {
            "snapshot_s": snapshot_s,
            "probe": probe,
            "rate": rate,
            "achieved_rate": achieved,
            "load_vs_live_max": rate / live_max if live_max else None,
            "load_vs_replay_max": rate / replay_max if replay_max else None,
            "processed_rate": processed_rate(seen, closes, t0 + warm, t_end),
            "p50_first_third_ms": median_ms(thirds[0]),
            "p50_last_third_ms": median_ms(thirds[2]),
            "samples": len(lat),
            "expected": expected,
            "p50_ms": q(0.50),
            "p90_ms": q(0.90),
            "p99_ms": q(0.99),
            "max_ms": lat[-1] * 1000 if lat else None,
            "target_ms": snapshot_s * 1000 + 250,
            "flow_cpu_s": cpu_s,
            "processes": a.latency_processes,
            "key_by": a.key_by,
            "window_closes_per_s": expected / dur,
        }
        self.log(
            f"latency (s={snapshot_s}, {rate:,.0f}/s offered, {achieved:,.0f}/s produced, "
            f"{r['processed_rate']:,.0f}/s processed): p50 {_f(r['p50_ms'])} ms, "
            f"p99 {_f(r['p99_ms'])} ms, {len(lat)}/{expected} samples"
        )
        return r

    # 5 ---------------------------------------------------------------------------------
    def recovery(self) -> None:
        """Every key gets two readings a window apart, so it holds a scored (real)
        detector state. "Caught up" is detected with probes: per input partition a probe
        sensor whose watermark is 10 minutes ahead, then probe records behind it, which
        are late and go to the dead-letter topic as soon as everything before them in
        the partition is processed and committed.
        """
        a = self.a
        keys = a.recovery_keys
        src = self.topic("state", a.partitions)
        parts = bk.partitions(self.brokers, src)
        env, _alerts = self.flow_env(src, tail=True)
        dlq = env["AD_DLQ"].split("/")[3].split("?")[0]
        snap = a.snapshot_s

        def probe(p: int, ts_min: int, tag: str) -> None:
            body = orjson.dumps(
                {
                    "sensor_id": f"probe-{p}",
                    "value": 1.0,
                    "probe": tag,  # not a tenant: every probe of a partition is one sensor
                    "timestamp": bk.START_MS + ts_min * bk.WINDOW_MS,
                }
            )
            bk.produce_all(self.brokers, src, [(f"probe-{p}".encode(), body)], partition=p)

        def probes_seen(tag: str) -> int:
            n = 0
            for _t, b in watcher.bodies():
                v = orjson.loads(base64.b64decode(b["value_b64"]))
                n += v.get("probe") == tag
            return n

        for p in parts:
            probe(p, 10, "watermark")
        t = time.perf_counter()
        for k in (0, 60):  # two readings a window apart: every key is scored once
            bk.produce_all(
                self.brokers,
                src,
                ((bk.sensor_id(i).encode(), bk.reading(i, k, 1000)) for i in range(keys)),
            )
        for p in parts:
            probe(p, 0, "loaded")
        self.log(
            f"recovery: produced {2 * keys} records for {keys} keys "
            f"in {time.perf_counter() - t:.1f} s"
        )
        watcher = bk.Watcher(self.brokers, dlq)
        watcher.start()
        rec = init_recovery(self.work / f"rec-recovery-{uuid.uuid4().hex[:6]}")
        flow = Flow(
            "benchmarks.bench_flows:detector_flow()",
            env,
            1,
            rec,
            snap,
            self.work / "recovery.log",
            self.work / "recovery.marks",
        )
        try:
            t_load = wait_for(
                lambda: flow.poll() or probes_seen("loaded") >= len(parts),
                a.recovery_timeout,
                "the initial load",
                poll=0.5,
            )
            if flow.code is not None:
                raise RuntimeError(f"recovery flow exited:\n{flow.tail()}")
            m = flow.read_marks()
            load_s = t_load - (m["first"] or flow.started)
            time.sleep(2 * snap + 1.0)  # a snapshot that holds every key
            rss = flow.rss()
            rec_bytes = sum(f.stat().st_size for f in rec.rglob("*") if f.is_file())
            # more input for existing keys, then SIGKILL while the flow works on it
            tail_n = min(keys, max(1000, keys // 10))
            bk.produce_all(
                self.brokers,
                src,
                ((bk.sensor_id(i).encode(), bk.reading(i, 61, 1000)) for i in range(tail_n)),
            )
            flow.kill()
            t_kill = time.time()
            flow = Flow(
                "benchmarks.bench_flows:detector_flow()",
                env,
                1,
                rec,
                snap,
                self.work / "recovery.log",
                self.work / "recovery2.marks",
                profile=a.profile_restart,
            )
            t_restart = flow.started
            for p in parts:
                probe(p, 0, "recovered")
            t_done = wait_for(
                lambda: flow.poll() or probes_seen("recovered") >= len(parts),
                a.recovery_timeout,
                "recovery",
                poll=0.1,
            )
            if flow.code is not None:
                raise RuntimeError(f"restarted flow exited:\n{flow.tail()}")
            m2 = flow.read_marks()
            rss2 = flow.rss()
        finally:
            flow.kill()
            watcher.stop.set()
            watcher.join(5)
        r = {
            "keys": keys,
            "detector": a.detector,
            "snapshot_s": snap,
            "initial_load_s": load_s,
            "initial_load_records_per_s": 2 * keys / load_s,
            "rss_bytes": rss,
            "rss_bytes_per_key": rss / keys,
            "recovery_store_bytes": rec_bytes,
            "records_after_last_catch_up": tail_n,
            "kill_to_restart_s": t_restart - t_kill,
            "recovery_s": t_done - t_restart,
            "restart_to_first_read_s": (m2["first"] - t_restart) if m2["first"] else None,
            "rss_after_recovery_bytes": rss2,
        }
        self.results["recovery"] = r
        self.log(
            f"recovery: {keys} keys, restart -> caught up {r['recovery_s']:.1f} s, "
            f"RSS {rss / 2**30:.2f} GiB"
        )

    # 6 ---------------------------------------------------------------------------------
    def state(self) -> None:
        a = self.a
        rows: list[dict[str, Any]] = []
        dets = [a.detector] + (["mad"] if a.mad and a.detector != "mad" else [])
        for det in dets:
            for mode in ("packed", "live"):
                self._state_curve(det, mode, rows)
        self.results["state"] = rows

    def _state_curve(self, det: str, mode: str, rows: list[dict[str, Any]]) -> None:
        a = self.a
        per_key = None
        for keys in a.state_keys:
            avail = psutil.virtual_memory().available
            need = keys * per_key * 1.5 if per_key else 0.0
            if need > avail - a.state_spare_gib * 2**30:
                rows.append(
                    {
                        "keys": keys,
                        "detector": det,
                        "mode": mode,
                        "skipped": f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB free",
                    }
                )
                self.log(f"state {det} {mode} {keys}: skipped (memory)")
                continue
            proc = subprocess.run(
                [PY, "-m", "benchmarks.bench_state", str(keys), det, mode],
                cwd=ROOT,
                env=flow_env(),
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"bench_state {keys} {det}:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            per_key = max(r["rss_bytes_per_key"], r["snapshot_bytes_per_key"])
            rows.append(r)
            self.log(
                f"state {det} {mode} {keys}: {r['rss_bytes_per_key']:.0f} B/key "
                f"resident, snapshot {r['snapshot_bytes'] / 2**20:.1f} MiB "
                f"in {r['snapshot_s']:.2f} s"
            )

    def cleanup(self) -> None:
        if not self.a.keep:
            bk.delete_topics(self.brokers, self.topics)
            shutil.rmtree(self.work, ignore_errors=True)


# -- report ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _f(x: Any, fmt: str = "{:,.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(res: dict[str, Any]) -> str:
    """The results as a markdown table (printed and written to RESULTS.md)."""
    lines = []
    tp = res.get("throughput", {})
    ceiling = tp.get("ceiling", {}).get("events_per_s")
    base = tp.get("baseline", {}).get("events_per_s")
    if tp:
        lines += [
            "| run | events/s (median) | vs ceiling | vs baseline | seconds | CPU s | "
            "CPU s per M | peak RSS MiB | every round, k events/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for name, r in tp.items():
            eps = r["events_per_s"]
            rounds = ", ".join(f"{x / 1000:.0f}" for x in r.get("runs_events_per_s", [eps]))
            lines.append(
                f"| {name} | {eps:,.0f} | {_f(eps / ceiling if ceiling else None, '{:.2f}')} | "
                f"{_f(eps / base if base else None, '{:.2f}')} | {r['seconds']:.2f} | "
                f"{_f(r.get('cpu_s'), '{:.1f}')} | {_f(r.get('cpu_s_per_m'), '{:.2f}')} | "
                f"{_f(r.get('peak_rss_bytes', 0) / 2**20 if r.get('peak_rss_bytes') else None)} "
                f"| {rounds} |"
            )
    if res.get("latency"):
        lines += [
            "",
            "| latency: processes, key by | snapshot s | offered events/s | vs live max | "
            "vs replay max | produced events/s | processed events/s | samples | p50 ms | "
            "p90 ms | p99 ms | max ms | target p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        mx = res.get("latency_max", {})
        tries = [t for k, v in mx.items() if k.startswith("search_") for t in v]
        for r in [*tries, *res["latency"]]:
            search = ""
            if r.get("probe"):
                search = f" (live max search: {'kept up' if r.get('kept_up') else 'behind'})"
            lines.append(
                f"| {r.get('processes', 1)}, {r.get('key_by', '-')}{search} | {r['snapshot_s']} | "
                f"{r['rate']:,.0f} | {_f(r.get('load_vs_live_max'), '{:.0%}')} | "
                f"{_f(r.get('load_vs_replay_max'), '{:.0%}')} | {r['achieved_rate']:,.0f} | "
                f"{_f(r.get('processed_rate'))} | {r['samples']}/{r['expected']} | "
                f"{_f(r['p50_ms'])} | {_f(r['p90_ms'])} | {_f(r['p99_ms'])} | "
                f"{_f(r['max_ms'])} | {r['target_ms']} |"
            )
    if res.get("recovery"):
        r = res["recovery"]
        lines += [
            "",
            "| recovery: keys | detector | initial load s | RSS MiB (B/key) | "
            "recovery store MiB | restart -> caught up s |",
            "|---:|---|---:|---:|---:|---:|",
            f"| {r['keys']:,} | {r['detector']} | {r['initial_load_s']:.1f} | "
            f"{r['rss_bytes'] / 2**20:,.0f} ({r['rss_bytes_per_key']:,.0f}) | "
            f"{r['recovery_store_bytes'] / 2**20:,.0f} | {r['recovery_s']:.1f} |",
        ]
    if res.get("state"):
        lines += [
            "",
            "| state: keys | detector | detector states | resident B/key | "
            "resident MiB | full snapshot MiB | full snapshot s | 1% delta MiB | "
            "1% delta s | manifests to SQLite s | restore s |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["state"]:
            if "skipped" in r:
                lines.append(
                    f"| {r['keys']:,} | {r['detector']} | {r['mode']} | skipped: "
                    f"{r['skipped']} | | | | | | | |"
                )
                continue
            lines.append(
                f"| {r['keys']:,} | {r['detector']} | {r['mode']} | "
                f"{r['rss_bytes_per_key']:,.0f} | "
                f"{r['rss_bytes_per_key'] * r['keys'] / 2**20:,.0f} | "
                f"{r['snapshot_bytes'] / 2**20:,.1f} | {r['snapshot_s']:.2f} | "
                f"{r.get('delta_bytes', 0) / 2**20:,.1f} | {r.get('delta_s', 0):.2f} | "
                f"{r['store_s']:.2f} | {r['restore_s']:.2f} |"
            )
    return "\n".join(lines)


def processed_rate(
    seen: dict[tuple[str, int], float], closes: dict[tuple[str, int], int], t_a: float, t_b: float
) -> float:
    """Records/s the flow got through between wall times ``t_a`` and ``t_b``: the
    least-squares slope of its visible progress, the highest input index whose window's
    output was visible by then, taken once per commit (``seen``: output -> wall time
    visible; ``closes``: output -> index of the input record that closed its window).
    """
    events = sorted((t, closes[key]) for key, t in seen.items() if key in closes)
    points: list[tuple[float, int]] = []  # (commit time, progress), one per commit
    best = -1
    for i, (when, idx) in enumerate(events):
        best = max(best, idx)
        last_of_commit = i + 1 == len(events) or events[i + 1][0] - when > 0.05
        if last_of_commit and t_a <= when <= t_b:
            points.append((when, best))
    if len(points) < 2:
        return 0.0
    mt = sum(t for t, _ in points) / len(points)
    mx = sum(x for _, x in points) / len(points)
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return 0.0
    return max(0.0, sum((t - mt) * (x - mx) for t, x in points) / var)


def plot_latency(
    rows: list[dict[str, Any]], path: Path, maxima: dict[str, Any] | None = None
) -> Path:
    """p50 and p99 alert latency against load (one line per snapshot interval), with the
    live and replay maxima marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for snap in sorted({r["snapshot_s"] for r in rows}):
        pts = sorted(
            (r for r in rows if r["snapshot_s"] == snap and r["p99_ms"] is not None),
            key=lambda r: r["rate"],
        )
        xs = [r["rate"] / 1000 for r in pts]  # offered load
        ax.plot(xs, [r["p50_ms"] for r in pts], "o-", label=f"p50, snapshot {snap} s")
        ax.plot(xs, [r["p99_ms"] for r in pts], "s--", label=f"p99, snapshot {snap} s")
        for x, r in zip(xs, pts, strict=True):
            if r["achieved_rate"] < 0.95 * r["rate"]:  # the producer could not keep up
                ax.annotate(f"produced {r['achieved_rate'] / 1000:.0f}k/s", (x, r["p99_ms"]))
        ax.axhline(snap * 1000 + 250, color="grey", lw=0.8, ls=":")
        ax.annotate(f"target p99 {snap * 1000 + 250} ms", (xs[0] if xs else 0, snap * 1000 + 270))
    for key, value in sorted((maxima or {}).items()):
        if value and (key == "replay" or key.startswith("live_")):
            ax.axvline(value / 1000, color="black", lw=0.8, ls="-." if key == "replay" else "-")
            live = "" if key == "replay" else f", snapshot {key.removeprefix('live_s')} s"
            ax.text(
                value / 1000,
                0.03,
                f" {'replay' if key == 'replay' else 'live'} max {value / 1000:.0f}k{live}",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                va="bottom",
                fontsize=8,
            )
    first = rows[0] if rows else {}
    ax.set_xlabel("offered load, thousand events/s")
    ax.set_yscale("log")
    ax.set_ylabel("event produced -> alert committed, ms")
    ax.set_title(
        f"alert latency against load: {first.get('processes', 1)} process(es), "
        f"AD_KEY_BY={first.get('key_by', '-')}"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    port = os.environ.get("AD_STACK_KAFKA_PORT", "19092")
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--brokers", default=f"127.0.0.1:{port}")
    p.add_argument(
        "--records",
        default="1000000,5000000",
        help="input sizes (comma-separated); every row at the first, a few at the others",
    )
    p.add_argument("--sensors", type=int, default=10_000)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument(
        "--interval-ms",
        type=int,
        default=1000,
        help="event-time step between a sensor's readings (default 1 s)",
    )
    p.add_argument("--batch", type=int, default=2000, help="source batch size (the flow's default)")
    p.add_argument(
        "--linger",
        default="",
        help="the product flows' source linger, e.g. 50ms (default: the flow's; "
        "the baseline has none)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of the throughput runs (the table shows the median)",
    )
    p.add_argument("--snapshot-s", type=int, default=1, help="Bytewax -s (epoch = snapshot)")
    p.add_argument("--detector", default="ensemble")
    p.add_argument(
        "--mad",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the mad detector",
    )
    p.add_argument(
        "--latency-loads",
        default="0.25,0.5,0.75",
        help="latency loads as fractions of the default deployment's live maximum "
        "(or, with --latency-of replay, of its replay throughput)",
    )
    p.add_argument(
        "--latency-of",
        choices=("live", "replay"),
        default="live",
        help="loads are fractions of the live maximum (found first by bisection, up to "
        "--latency-probe of the replay rate) or of the replay throughput",
    )
    p.add_argument(
        "--latency-probe",
        type=float,
        default=0.75,
        help="the live-maximum search's upper bound, a fraction of the replay throughput",
    )
    p.add_argument("--latency-probe-seconds", type=float, default=10.0)
    p.add_argument(
        "--latency-search", type=int, default=4, help="bisection runs for the live maximum"
    )
    p.add_argument(
        "--latency-max-rate",
        type=float,
        default=0.0,
        help="the throughput the loads are fractions of (default: the flow section's)",
    )
    p.add_argument("--latency-rate", type=float, default=0.0, help="absolute rate (overrides)")
    p.add_argument(
        "--latency-processes",
        type=int,
        default=cores(),
        help="processes of the latency flow (default: one per core, as deployed)",
    )
    p.add_argument(
        "--default-processes",
        type=int,
        default=cores(),
        help="processes of the flow_default row (default: one per core, as deployed)",
    )
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--latency-warmup", type=float, default=3.0)
    p.add_argument(
        "--key-by",
        default="auto",
        choices=("auto", "sensor", "partition"),
        help="AD_KEY_BY of the latency and recovery flows (the throughput section runs each)",
    )
    p.add_argument("--latency-snapshots", default="1", help="snapshot intervals, e.g. 1,2")
    p.add_argument("--recovery-keys", type=int, default=1_000_000)
    p.add_argument("--recovery-timeout", type=float, default=1800.0)
    p.add_argument(
        "--profile-restart", default="", help="record the restarted flow with py-spy into this file"
    )
    p.add_argument(
        "--profile-flow",
        default="",
        help="record the 1-worker flow runs with py-spy into this file (the "
        "2-process run into FILE.2p.p0 and FILE.2p.p1) "
        "(sampling slows them: for where the time goes, not for speed; "
        "BENCH_PROFILE_NATIVE=1 adds native frames, which name the "
        "compiled modules' functions)",
    )
    p.add_argument("--state-keys", default="10000,100000,1000000")
    p.add_argument(
        "--state-spare-gib",
        type=float,
        default=6.0,
        help="skip a state size that would leave less memory than this free",
    )
    p.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)}",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: 50k records, 1k sensors, 20k recovery keys, 5 s latency",
    )
    p.add_argument("--out", default="", help="JSON path (default benchmarks/results/<time>.json)")
    p.add_argument("--keep", action="store_true", help="keep topics and the work directory")
    a = p.parse_args(argv)
    if a.quick:
        given = set(argv or sys.argv[1:])

        def dflt(flag: str, attr: str, value: Any) -> None:
            if not any(g == flag or g.startswith(flag + "=") for g in given):
                setattr(a, attr, value)

        dflt("--records", "records", "50000")
        dflt("--sensors", "sensors", 1_000)
        dflt("--recovery-keys", "recovery_keys", 20_000)
        dflt("--state-keys", "state_keys", "1000,10000")
        dflt("--latency-seconds", "latency_seconds", 5.0)
        dflt("--latency-warmup", "latency_warmup", 2.0)
        dflt("--latency-probe-seconds", "latency_probe_seconds", 4.0)
        dflt("--latency-search", "latency_search", 2)
    a.sections = [s for s in a.sections.split(",") if s]
    bad = set(a.sections) - set(SECTIONS)
    if bad:
        p.error(f"unknown sections {sorted(bad)}")
    a.state_keys = [int(x) for x in str(a.state_keys).split(",") if x]
    a.latency_snapshots = [int(x) for x in str(a.latency_snapshots).split(",") if x]
    a.latency_loads = [float(x) for x in str(a.latency_loads).split(",") if x]
    a.records = [int(x) for x in str(a.records).split(",") if x]
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    cmd = "python -m benchmarks.throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    res: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": cmd.strip(),
        "machine": machine(),
        "config": {k: v for k, v in vars(a).items() if k not in ("out",)},
    }
    b = Bench(a)
    b.results = res
    try:
        if {"ceiling", "baseline", "flow"} & set(a.sections):
            b.throughput()
        if "latency" in a.sections:
            b.latency()
        if "recovery" in a.sections:
            b.recovery()
        if "state" in a.sections:
            b.state()
    finally:
        b.cleanup()
    res["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["table"] = table(res)
    out = (
        Path(a.out)
        if a.out
        else (ROOT / "benchmarks" / "results" / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if res.get("latency"):
        res["latency_plot"] = str(
            plot_latency(res["latency"], out.with_suffix(".png"), res.get("latency_max"))
        )
    out.write_text(json.dumps(res, indent=2) + "\n")
    print()
    print(res["table"])
    print(f"\nJSON: {out}")
    return res


if __name__ == "__main__":
    main()
