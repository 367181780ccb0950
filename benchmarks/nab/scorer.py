"""NAB v1 scoring (see the rules in the data split's README.md).

Per file of ``N`` rows: the first ``min(floor(0.15 N), 750)`` rows are probationary and
not scored. A window ``[L, R]`` (rows, width ``W``) earns ``A_TP * sig(-(R-i+1)/W) /
sig(-1)`` for its earliest detection ``i`` or costs ``-A_FN`` when undetected; a detection
outside every window costs ``A_FP * sig((i - R_prev) / (W_prev - 1))`` (``-A_FP`` when no
window precedes it), with ``sig(x) = 2 / (1 + e^(5x)) - 1`` and ``sig(x) = -1`` for x > 3.
One threshold per profile for the whole set; scores are normalised so that the null
detector (never fires) gets 0 and the perfect one 100.

``sweep`` finds the optimal threshold exactly in O(R log R) over all R scored rows: every
row/window contributes step changes ("events") to the total as the threshold decreases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROFILES: dict[str, dict[str, float]] = {
    "standard": {"tp": 1.0, "fn": 1.0, "fp": 0.11},
    "reward_low_FP_rate": {"tp": 1.0, "fn": 1.0, "fp": 0.22},
    "reward_low_FN_rate": {"tp": 1.0, "fn": 2.0, "fp": 0.11},
}


def load_profiles(obj: dict) -> dict[str, dict[str, float]]:
    """Convert NAB's ``profiles.json`` content to ``{name: {"tp", "fn", "fp"}}``."""
    out = {}
    for name, prof in obj.items():
        cm = prof["CostMatrix"]
        out[name] = {
            "tp": float(cm["tpWeight"]),
            "fn": float(cm["fnWeight"]),
            "fp": float(cm["fpWeight"]),
        }
    return out


def sig(x: np.ndarray | float) -> np.ndarray:
    """NAB's scaled sigmoid: ``2 / (1 + e^(5x)) - 1``, and ``-1`` where ``x > 3``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        y = 2.0 / (1.0 + np.exp(5.0 * x)) - 1.0
    return np.where(x > 3.0, -1.0, y)


def probation_length(n: int) -> int:
    """Rows at the start of a file that are not scored."""
    return min(math.floor(0.15 * n), 750)


@dataclass
class ScoredFile:
    """One file's anomaly scores and its windows as inclusive row ranges."""

    name: str
    scores: np.ndarray
    windows: list[tuple[int, int]]


def window_rows(
    timestamps: np.ndarray, windows: Sequence[tuple[object, object]]
) -> list[tuple[int, int]]:
    """Map ``[start, end]`` timestamps to inclusive row ranges ``(L, R)`` in file order.

    ``L`` is the first row at or after ``start``; ``R`` the last row of the run from ``L``
    whose timestamps stay ``<= end``. ``timestamps`` and bounds must be comparable
    (e.g. ``datetime64``).
    """
    ts = np.asarray(timestamps)
    out = []
    for start, end in windows:
        after = np.flatnonzero(ts >= start)
        if after.size == 0:
            continue
        left = int(after[0])
        beyond = np.flatnonzero(ts[left:] > end)
        right = left + (int(beyond[0]) if beyond.size else ts.size - left) - 1
        if right >= left:
            out.append((left, right))
    return out


def _row_weights(
    n: int, windows: list[tuple[int, int]], fp: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: window id (-1 outside) and the FP value of a detection there."""
    win_id = np.full(n, -1, dtype=np.int64)
    fp_val = np.full(n, -fp, dtype=np.float64)
    idx = np.arange(n)
    for k, (left, right) in enumerate(sorted(windows)):
        win_id[left : right + 1] = k
        width = right - left + 1
        after = idx > right
        fp_val[after] = fp * sig((idx[after] - right) / max(width - 1, 1))
    return win_id, fp_val


def _tp_value(i: int, right: int, width: int, tp: float) -> float:
    return float(tp * sig(-(right - i + 1) / width) / sig(-1.0))


def score_file(f: ScoredFile, threshold: float, profile: dict[str, float]) -> dict[str, float]:
    """Raw score and counts of one file at a fixed ``threshold`` (reference implementation)."""
    n = len(f.scores)
    prob = probation_length(n)
    wins = sorted(f.windows)
    win_id, fp_val = _row_weights(n, wins, profile["fp"])
    raw, tps, fps = 0.0, 0, 0
    detected: set[int] = set()
    for i in range(prob, n):
        if f.scores[i] < threshold:
            continue
        k = int(win_id[i])
        if k < 0:
            raw += float(fp_val[i])
            fps += 1
        elif k not in detected:
            detected.add(k)
            left, right = wins[k]
            raw += _tp_value(i, right, right - left + 1, profile["tp"])
            tps += 1
    fns = len(wins) - len(detected)
    raw -= profile["fn"] * fns
    return {"raw": raw, "tp": tps, "fp": fps, "fn": fns}


def _events(f: ScoredFile, profile: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(threshold, delta) pairs: total(t) = base + sum(delta for thr >= t)."""
    n = len(f.scores)
    prob = probation_length(n)
    wins = sorted(f.windows)
    win_id, fp_val = _row_weights(n, wins, profile["fp"])
    scored = np.arange(n) >= prob
    outside = scored & (win_id < 0)
    thr = [f.scores[outside]]
    delta = [fp_val[outside]]
    for left, right in wins:
        width = right - left + 1
        prev_val = -profile["fn"]
        seg = f.scores[max(left, prob) : right + 1]
        if seg.size == 0:
            continue
        # Record highs of the window: the earliest detection for any threshold.
        run_max = np.maximum.accumulate(seg)
        is_rec = np.r_[True, run_max[1:] > run_max[:-1]]
        rec_idx = np.flatnonzero(is_rec)
        vals = [_tp_value(max(left, prob) + int(j), right, width, profile["tp"]) for j in rec_idx]
        # Walking thresholds down from the maximum, detection moves to earlier records.
        for j, v in zip(rec_idx[::-1], vals[::-1], strict=True):
            thr.append(np.array([seg[j]]))
            delta.append(np.array([v - prev_val]))
            prev_val = v
    return np.concatenate(thr), np.concatenate(delta)


def sweep(files: Sequence[ScoredFile], profile: dict[str, float]) -> tuple[float, float]:
    """Best (threshold, raw score) over all thresholds for the whole set of files."""
    n_win = sum(len(f.windows) for f in files)
    base = -profile["fn"] * n_win
    parts = [_events(f, profile) for f in files]
    thr = np.concatenate([p[0] for p in parts]) if parts else np.empty(0)
    delta = np.concatenate([p[1] for p in parts]) if parts else np.empty(0)
    if thr.size == 0:
        return math.inf, base
    order = np.argsort(-thr, kind="stable")
    thr, delta = thr[order], delta[order]
    total = base + np.cumsum(delta)
    last_of_group = np.r_[thr[1:] != thr[:-1], True]
    cand_thr, cand_tot = thr[last_of_group], total[last_of_group]
    best = int(np.argmax(cand_tot))
    if cand_tot[best] <= base:
        return math.inf, base
    return float(cand_thr[best]), float(cand_tot[best])


def normalise(raw: float, n_windows: int, profile: dict[str, float]) -> float:
    """100 * (raw - null) / (perfect - null)."""
    perfect = n_windows * profile["tp"]
    null = -n_windows * profile["fn"]
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0


def evaluate(
    files: Sequence[ScoredFile],
    profiles: dict[str, dict[str, float]] | None = None,
    threshold: float | None = None,
) -> dict[str, dict[str, float]]:
    """Score every profile (optimised threshold, or the fixed ``threshold``)."""
    profiles = profiles or PROFILES
    n_win = sum(len(f.windows) for f in files)
    out: dict[str, dict[str, float]] = {}
    for name, prof in profiles.items():
        thr = sweep(files, prof)[0] if threshold is None else float(threshold)
        tot = {"raw": 0.0, "tp": 0, "fp": 0, "fn": 0}
        for f in files:
            for k, v in score_file(f, thr, prof).items():
                tot[k] += v
        out[name] = {"score": normalise(tot["raw"], n_win, prof), "threshold": thr, **tot}
    return out
