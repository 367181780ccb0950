"""Batch detection benchmark: ``adctl detect``'s engines against the streaming flow and
a single-process numpy ceiling, on the same Parquet history.

    python -m benchmarks.batch                        # 10M records, 10k sensors
    python -m benchmarks.batch --records 1000000      # scaled down

Rows (each in a fresh process, so start-up and peak memory are its own):

* ``numpy``   the ceiling: the same tumbling windows computed with numpy (sort,
              ``reduceat``) and the same detector's ``score_batch`` over every sensor (in
              64 groups of sensors), in one process (what a hand-written single-purpose
              job could do)
* ``flow``    the streaming flow (``flows.detector``, 1 worker) reading the same
              readings as a JSON-lines file and writing alerts to a file
* ``<engine> x<N>``  ``control.jobs.run_jobs`` (what ``adctl detect`` runs) on Dask,
              Ray and Spark with N local workers, cache off

Records/s counts detection only (the history already read into columns; engine
start-up excluded; both shown separately). Peak memory is the largest resident set of
the process and all its descendants (engine workers, the Spark JVM), sampled every
0.1 s. Benchmarks are commands, never timed tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STEP_MS = 10_000  # one reading per sensor every 10 s
#: 30 s windows: 3 readings each, and enough windows per sensor (1,000 readings) for the
#: ensemble to pass its 200-window warm-up and score
SETTINGS = {"AD_WINDOW": "tumbling", "AD_WINDOW_SIZE": "30s"}


class PeakRSS:
    """Peak resident memory of this process and its descendants (sampled)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self.proc, *self.proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(0.1)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def make_data(records: int, sensors: int, out: Path) -> tuple[Path, Path]:
    """Parquet and JSON-lines files of the same readings, time-major (as a live stream
    delivers them): sine-like values with noise and rare spikes.
    """
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    base = out / f"history-{records}-{sensors}"
    parquet, jsonl = base.with_suffix(".parquet"), base.with_suffix(".jsonl")
    if parquet.exists() and jsonl.exists():
        return parquet, jsonl
    rng = np.random.default_rng(7)
    per = -(-records // sensors)
    i = np.repeat(np.arange(per, dtype=np.int64), sensors)[:records]
    s = np.tile(np.arange(sensors, dtype=np.int64), per)[:records]
    ts = START_MS + i * STEP_MS + s % 1000  # distinct, increasing per sensor
    vals = 10.0 + np.sin(i / 30.0 + s) * 2.0 + rng.normal(0.0, 0.3, records)
    spikes = rng.random(records) < 0.0005
    vals = np.round(np.where(spikes, vals + 25.0, vals), 4)
    names = np.array([f"sensor-{k:05d}" for k in range(sensors)], dtype=object)
    table = pa.table({"sensor_id": names[s], "timestamp": ts, "value": vals})
    pq.write_table(table, parquet)
    with jsonl.open("wb") as fh:
        for lo in range(0, records, 200_000):
            rows = table.slice(lo, 200_000).to_pylist()
            fh.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return parquet, jsonl


def _settings(**extra: str) -> Any:
    from flows.settings import load_settings

    return load_settings({**SETTINGS, **extra})


def run_numpy(parquet: Path) -> dict[str, Any]:
    """The ceiling: numpy windows + the detector's score_batch, one process."""
    from control.history_columns import read_readings
    from flows.models import Models

    s = _settings()
    r = read_readings([str(parquet)])
    size = int(s.window_size * 1000)
    t0 = time.perf_counter()
    order = np.lexsort((r.ts, r.codes))
    c, t, v = r.codes[order], r.ts[order], r.vals[order]
    win = t - t % size
    change = np.flatnonzero((np.diff(c) != 0) | (np.diff(win) != 0)) + 1
    starts = np.concatenate(([0], change))
    means = np.add.reduceat(v, starts) / np.diff(np.append(starts, len(v)))
    wc, wend = c[starts], (win[starts] + size) / 1000.0
    cut = np.flatnonzero(np.diff(wc) != 0) + 1
    values, ends = np.split(means, cut), np.split(wend, cut)
    det = Models(s.detector, s.detector_params).get("builtin", "")
    # sensors scored in groups (as many as the engines' partitions): one call over every
    # sensor is slower (its arrays outgrow the caches), and a ceiling is the best case
    alerts, step = 0, max(1, -(-len(values) // 64))
    for lo in range(0, len(values), step):
        n = len(values[lo : lo + step])
        _states, scores = det.score_batch([None] * n, values[lo : lo + step], ends[lo : lo + step])
        alerts += int(sum(int((sc >= s.threshold).sum()) for sc in scores))
    return {"seconds": time.perf_counter() - t0, "records": len(r), "alerts": alerts}


def run_flow(jsonl: Path, records: int) -> dict[str, Any]:
    """The streaming flow, 1 worker, file in -> file out."""
    from bytewax.testing import run_main

    from connectors import make_sink
    from flows import detector

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "alerts.jsonl"
        s = _settings(
            AD_SOURCE=f"file://{jsonl}", AD_SINK=f"file://{out}", AD_DLQ=f"file://{tmp}/dlq"
        )
        flow = detector.build_flow(s, dlq=make_sink(s.dlq, s.connector_context()))
        t0 = time.perf_counter()
        run_main(flow)
        seconds = time.perf_counter() - t0
        alerts = sum(1 for _ in out.open("rb")) if out.exists() else 0
    return {"seconds": seconds, "records": records, "alerts": alerts}


def run_engine(parquet: Path, engine: str, workers: int) -> dict[str, Any]:
    """What ``adctl detect`` runs, on ``engine`` with ``workers`` local workers."""
    from control.detect import ResultCache, detect_settings
    from control.engines import make_engine
    from control.history_columns import read_readings
    from control.jobs import Job, JobStore, run_jobs

    s = detect_settings(_settings())
    r = read_readings([str(parquet)])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with make_engine(engine, workers) as eng:
            started = time.perf_counter() - t0
            t1 = time.perf_counter()
            job = Job("bench", "detect", r, s, use_cache=False)
            (ran,) = run_jobs(eng, [job], JobStore(Path(tmp)), ResultCache(Path(tmp)))
            seconds = time.perf_counter() - t1
    return {
        "seconds": seconds,
        "start_s": started,
        "records": len(r),
        "alerts": ran.record.alerts if ran.record else 0,
    }


def _one(args: argparse.Namespace) -> None:
    with PeakRSS() as mem:
        if args.one == "numpy":
            res = run_numpy(args.parquet)
        elif args.one == "flow":
            res = run_flow(args.jsonl, args.records)
        else:
            engine, workers = args.one.split(":")
            res = run_engine(args.parquet, engine, int(workers))
    res["peak_mb"] = mem.peak / 2**20
    print("RESULT " + json.dumps(res), flush=True)


def _spawn(which: str, parquet: Path, jsonl: Path, records: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.batch", "--one", which, "--parquet", str(parquet)]
    cmd += ["--jsonl", str(jsonl), "--records", str(records)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__)
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--sensors", type=int, default=10_000)
    ap.add_argument("--engines", default="dask,ray,spark")
    ap.add_argument("--workers", default="1,2", help="local worker counts per engine")
    ap.add_argument("--no-flow", action="store_true", help="skip the streaming flow row")
    ap.add_argument("--data", type=Path, default=ROOT / "out" / "bench-batch")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--parquet", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        _one(args)
        return 0
    command = "python -m benchmarks.batch " + " ".join(argv if argv is not None else sys.argv[1:])
    parquet, jsonl = make_data(args.records, args.sensors, args.data)
    rows: list[tuple[str, dict[str, Any]]] = [("numpy (ceiling)", {})]
    if not args.no_flow:
        rows.append(("flow x1", {}))
    for eng in args.engines.split(","):
        for w in args.workers.split(","):
            rows.append((f"{eng} x{w}", {}))
    results = []
    for label, _ in rows:
        which = (
            "numpy"
            if label.startswith("numpy")
            else "flow"
            if label.startswith("flow")
            else label.replace(" x", ":")
        )
        try:
            res = _spawn(which, parquet, jsonl, args.records)
        except RuntimeError as exc:  # one engine failing (memory, JVM) ends only its row
            print(f"{label:<16} failed: {str(exc)[-500:]}", flush=True)
            continue
        res["rate"] = res["records"] / res["seconds"]
        results.append((label, res))
        if args.out:  # as the rows come, so a long run leaves what it measured
            args.out.write_text(json.dumps({"command": command, **dict(results)}, indent=2))
        print(
            f"{label:<16} {res['rate']:>12,.0f} records/s  {res['seconds']:7.1f}s  "
            f"start {res.get('start_s', 0):5.1f}s  peak {res['peak_mb']:7,.0f} MB  "
            f"alerts {res['alerts']:,}",
            flush=True,
        )
    ceiling = results[0][1]["rate"]
    print(f"\n{args.records:,} records, {args.sensors:,} sensors ({parquet.name})")
    print("| run | records/s | vs ceiling per worker | detect s | start s | peak MB | alerts |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, res in results:
        w = int(label.rsplit("x", 1)[1]) if " x" in label else 1
        print(
            f"| {label} | {res['rate']:,.0f} | {res['rate'] / w / ceiling:.0%} | "
            f"{res['seconds']:.1f} | {res.get('start_s', 0):.1f} | {res['peak_mb']:,.0f} | "
            f"{res['alerts']:,} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"command": command, **dict(results)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
