"""NAB harness: stream every series through the real flow (or the detector directly),
write NAB-layout results, and score them with the NAB v1 rules.

``python -m benchmarks.nab --data ../shared/data/nab-dev --out DIR [--json PATH]
[--cv category|series] [--grid GRID.json]``
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.nab.cv import FOLD_KINDS, choose, cross_validate, format_cv
from benchmarks.nab.scorer import PROFILES, ScoredFile, evaluate, load_profiles, window_rows

REPO = Path(__file__).resolve().parents[2]
#: the hyper-parameter grid the ``ensemble`` defaults were chosen from (see README.md here)
DEFAULT_GRID = Path(__file__).with_name("grid.json")


@dataclass
class Series:
    """One NAB file: ``name`` is ``<category>/<file>.csv``."""

    name: str
    raw_ts: list[str]
    ts: np.ndarray  # epoch seconds, float64 (naive NAB timestamps read as UTC)
    values: np.ndarray
    windows: list[tuple[int, int]]


def _epoch(ts: Sequence[str]) -> np.ndarray:
    dt = np.array([t.strip().replace(" ", "T") for t in ts], dtype="datetime64[ms]")
    return dt.astype(np.int64).astype(np.float64) / 1000.0


def load_corpus(
    data_dir: Path, only: Sequence[str] | None = None, downsample: int = 1
) -> list[Series]:
    """Read ``data/<category>/<name>.csv`` and ``labels/combined_windows.json``.

    ``downsample`` > 1: every run of that many rows becomes one row (the mean value at the
    run's first timestamp), a shorter, coarser series with the same labelled windows (a
    stress test of warm-up on short series).
    """
    labels_path = data_dir / "labels" / "combined_windows.json"
    labels: dict[str, list[list[str]]] = json.loads(labels_path.read_text())
    out = []
    for path in sorted((data_dir / "data").glob("*/*.csv")):
        name = f"{path.parent.name}/{path.name}"
        if only and not any(o in name for o in only):
            continue
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        raw_ts = [r[0] for r in rows]
        ts = _epoch(raw_ts)
        values = np.array([float(r[1]) for r in rows], dtype=np.float64)
        if downsample > 1:
            k = len(values) // downsample * downsample
            values = values[:k].reshape(-1, downsample).mean(axis=1)
            raw_ts, ts = raw_ts[:k:downsample], ts[:k:downsample]
        wins = [(_epoch([a])[0], _epoch([b])[0]) for a, b in labels.get(name, [])]
        out.append(Series(name, raw_ts, ts, values, window_rows(ts, wins)))
    if not out:
        raise SystemExit(f"no series found under {data_dir / 'data'}")
    return out


def _rfc3339(epoch_s: float) -> str:
    dt = datetime.fromtimestamp(epoch_s, tz=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_ts_ms(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(round(float(value)))
    dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(round(dt.timestamp() * 1000))


def _merged_records(series: Sequence[Series]) -> Iterator[tuple[float, int, int]]:
    """(ts, series index, row) merged by time; each series keeps its file order."""

    def rows(k: int, s: Series) -> Iterator[tuple[float, int, int]]:
        for r, t in enumerate(s.ts.tolist()):
            yield t, k, r

    return heapq.merge(
        *(rows(k, s) for k, s in enumerate(series)), key=lambda rec: (rec[0], rec[1])
    )


def run_flow(
    series: Sequence[Series],
    detector: str,
    params: dict[str, Any] | None,
    workdir: Path,
    workers: int = 2,
    module: str = "flows.detector",
    timeout_s: float = 3600.0,
) -> dict[str, np.ndarray]:
    """Stream all series (one key each) through ``python -m bytewax.run <module>``.

    Returns each series' scores in file order; rows missing from the output (e.g. sent
    to the DLQ) score 0 and are reported on stderr.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    src, sink, dlq = workdir / "in.jsonl", workdir / "out.jsonl", workdir / "dlq.jsonl"
    for p in (sink, dlq):
        p.unlink(missing_ok=True)
    with src.open("w") as fh:
        for ts, k, r in _merged_records(series):
            rec = {
                "sensor_id": series[k].name,
                "timestamp": _rfc3339(ts),
                "value": float(series[k].values[r]),
            }
            fh.write(json.dumps(rec) + "\n")
    env = dict(os.environ)
    env.update(
        {
            "AD_SOURCE": f"file://{src}",
            "AD_SINK": f"file://{sink}",
            "AD_DLQ": f"file://{dlq}",
            "AD_WINDOW": "none",
            "AD_EMIT": "all",
            "AD_DETECTOR": detector,
            "AD_DETECTOR_PARAMS": json.dumps(params or {}),
            # NAB files have multi-day gaps and one backward clock jump (machine_temperature,
            # -55 min): accept both instead of dead-lettering them as future/late records.
            "AD_MAX_FUTURE": "3650d",
            "AD_ALLOWED_LATENESS": "1d",
        }
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "bytewax.run", module, "-w", str(workers)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"flow failed ({proc.returncode}): {proc.stderr[-4000:]}")
    return _collect(series, sink)


def _collect(series: Sequence[Series], sink: Path) -> dict[str, np.ndarray]:
    queues: dict[tuple[str, int], deque[float]] = defaultdict(deque)
    if sink.exists():
        with sink.open() as fh:
            for line in fh:
                if line.strip():
                    rec = json.loads(line)
                    key = (rec["sensor_id"], _parse_ts_ms(rec["window_start"]))
                    queues[key].append(float(rec["score"]))
    out, missing = {}, 0
    for s in series:
        scores = np.zeros(len(s.ts))
        for r, t in enumerate(s.ts):
            q = queues.get((s.name, int(round(t * 1000))))
            if q:
                scores[r] = q.popleft()
            else:
                missing += 1
        out[s.name] = scores
    extra = sum(len(q) for q in queues.values())
    if missing or extra:
        print(
            f"warning: {missing} input rows had no flow output (scored 0); "
            f"{extra} unmatched output records",
            file=sys.stderr,
        )
    return out


def run_direct(
    series: Sequence[Series], detector: str, params: dict[str, Any] | None, batch: int = 0
) -> dict[str, np.ndarray]:
    """Call ``detector.score`` in file order (``batch`` rows per call; 0 = whole series)."""
    from detectors import get_detector

    det = get_detector(detector, params)
    out = {}
    for s in series:
        state, parts = det.init_state(), []
        step = batch or len(s.values)
        for i in range(0, len(s.values), step):
            state, sc = det.score(state, s.values[i : i + step], s.ts[i : i + step])
            parts.append(np.asarray(sc, dtype=np.float64))
        out[s.name] = np.concatenate(parts)
    return out


def run_scores(
    series: Sequence[Series],
    detector: str,
    params: dict[str, Any],
    mode: str,
    workers: int = 2,
    batch: int = 0,
    module: str = "flows.detector",
    flow_dir: Path | None = None,
) -> dict[str, np.ndarray]:
    """Every series' scores through the flow (``mode="flow"``) or ``detector.score``."""
    if mode == "direct":
        return run_direct(series, detector, params, batch)
    with tempfile.TemporaryDirectory(prefix="nab-flow-") as tmp:
        return run_flow(series, detector, params, flow_dir or Path(tmp), workers, module)


def state_bytes(series: Sequence[Series], detector: str, params: dict[str, Any]) -> dict[str, int]:
    """Packed per-key state after each whole series: the largest and the mean, in bytes."""
    from detectors import get_detector

    det = get_detector(detector, params)
    sizes = []
    for s in series:
        state, _ = det.score(det.init_state(), s.values, s.ts)
        sizes.append(len(det.pack_state(state)))
    return {"max": max(sizes), "mean": round(sum(sizes) / len(sizes))}


def write_results(out_dir: Path, series: Sequence[Series], scores: dict[str, np.ndarray]) -> None:
    """``<out>/<category>/<name>.csv`` with ``timestamp,value,anomaly_score`` per input row."""
    for s in series:
        path = out_dir / s.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value", "anomaly_score"])
            for t, v, sc in zip(s.raw_ts, s.values, scores[s.name], strict=True):
                w.writerow([t, repr(float(v)), repr(float(sc))])


def score_corpus(
    series: Sequence[Series],
    scores: dict[str, np.ndarray],
    profiles: dict[str, dict[str, float]],
    threshold: float | None = None,
) -> dict[str, dict[str, float]]:
    files = [ScoredFile(s.name, scores[s.name], s.windows) for s in series]
    return evaluate(files, profiles, threshold)


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'profile':<20} {'score':>7} {'threshold':>10} {'TP':>4} {'FP':>5} {'FN':>4}"]
    for name, r in results.items():
        lines.append(
            f"{name:<20} {r['score']:>7.2f} {r['threshold']:>10.5f} "
            f"{int(r['tp']):>4} {int(r['fp']):>5} {int(r['fn']):>4}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nab", description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="folder with data/ and labels/")
    ap.add_argument("--out", type=Path, required=True, help="results folder (NAB layout)")
    ap.add_argument("--json", type=Path, help="write the summary JSON here")
    ap.add_argument("--threshold", type=float, help="score at this fixed threshold")
    ap.add_argument("--detector", default="ensemble")
    ap.add_argument("--params", default="{}", help="detector params (JSON)")
    ap.add_argument(
        "--mode",
        choices=["flow", "direct"],
        default="flow",
        help="flow: the real Bytewax flow (default); direct: detector.score",
    )
    ap.add_argument("--workers", type=int, default=2, help="Bytewax workers (flow mode)")
    ap.add_argument("--batch", type=int, default=0, help="rows per score call (direct mode)")
    ap.add_argument("--flow-module", default="flows.detector")
    ap.add_argument("--only", nargs="*", help="substrings: score only matching series")
    ap.add_argument("--flow-dir", type=Path, help="keep the flow's input/output/DLQ here")
    ap.add_argument(
        "--downsample",
        type=int,
        default=1,
        help="average every N rows into one (short, coarse series: a warm-up stress test)",
    )
    ap.add_argument(
        "--cv",
        choices=FOLD_KINDS,
        help="also report cross-validated scores: leave one category / one series out",
    )
    ap.add_argument(
        "--grid",
        type=Path,
        help="JSON list of parameter overrides tuned with the threshold (with --cv: per fold); "
        "default with --cv for the ensemble: benchmarks/nab/grid.json; 'none': threshold only",
    )
    args = ap.parse_args(argv)

    params = json.loads(args.params)
    series = load_corpus(args.data, args.only, args.downsample)
    prof_path = args.data / "profiles.json"
    profiles = load_profiles(json.loads(prof_path.read_text())) if prof_path.exists() else PROFILES
    grid = [params]
    if args.grid is None and args.cv and args.detector == "ensemble" and not params:
        args.grid = DEFAULT_GRID  # the defaults were tuned on it: the CV must tune it too
    if args.grid and str(args.grid) != "none":
        grid = [{**params, **g} for g in json.loads(args.grid.read_text())]
    t0 = time.perf_counter()
    all_scores = [
        run_scores(
            series,
            args.detector,
            g,
            args.mode,
            args.workers,
            args.batch,
            args.flow_module,
            args.flow_dir,
        )
        for g in grid
    ]
    elapsed = time.perf_counter() - t0
    cv = None
    cands = [[ScoredFile(s.name, sc[s.name], s.windows) for s in series] for sc in all_scores]
    main_profile = next(iter(profiles.values()))  # standard
    if args.cv:
        cv = cross_validate(cands, profiles, args.cv)
    if len(grid) > 1:  # the configuration chosen on all series, as each CV fold chooses
        params = grid[choose(cands, range(len(series)), main_profile)[0]]
    scores = all_scores[grid.index(params)]
    write_results(args.out, series, scores)
    results = score_corpus(series, scores, profiles, args.threshold)
    size = state_bytes(series, args.detector, params)
    n_rows = sum(len(s.ts) for s in series)
    summary = {
        "detector": args.detector,
        "params": params,
        "mode": args.mode,
        "data": str(args.data),
        "series": len(series),
        "windows": sum(len(s.windows) for s in series),
        "rows": n_rows,
        "stream_seconds": round(elapsed, 2),
        "state_bytes_per_key": size,
        "fixed_threshold": args.threshold,
        "results": {
            k: {**v, "threshold": v["threshold"] if np.isfinite(v["threshold"]) else None}
            for k, v in results.items()
        },
    }
    print(
        f"NAB: {len(series)} series, {summary['windows']} windows, {n_rows} rows; "
        f"{args.detector} via {args.mode} in {elapsed:.1f}s"
    )
    print(format_table(results))
    print(f"packed state per key: max {size['max']} B, mean {size['mean']} B")
    if cv is not None:
        summary["cv"] = {"folds": args.cv, "grid": grid, "results": cv}
        if args.grid:
            print(f"\ngrid: {args.grid} ({len(grid)} candidates); chosen on all series: {params}")
        print(f"\ncross-validation ({args.cv}; {len(grid)} candidate(s), tuned per fold):")
        print(format_cv(cv, args.cv))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    return summary
