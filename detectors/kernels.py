"""Vectorised numeric kernels shared by the detectors (numpy or CuPy via ``xp``).

Every kernel is written against the array-module argument ``xp`` and uses only the
numpy API subset CuPy implements, so ``detectors.xp.get_xp()`` can move the work to a
GPU. Results for element ``i`` depend only on elements ``<= i`` (no look-ahead) and
on nothing else, which is what makes batch-splitting invariance hold.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution -> sigma
MEANAD_TO_SIGMA = 1.2533  # mean absolute deviation of a normal -> sigma


def trailing_windows(xp: ModuleType, combined: Any, start: int, stop: int, window: int) -> Any:
    """Rows ``combined[p - window:p]`` for ``p`` in ``[start, stop)`` (needs start >= window)."""
    view = xp.lib.stride_tricks.sliding_window_view(combined, window)
    return view[start - window : stop - window]


def robust_location_scale(xp: ModuleType, windows: Any, rel_floor: float = 1e-9) -> tuple[Any, Any]:
    """Per-row median and robust sigma (MAD, falling back to mean absolute deviation).

    ``windows`` is 2-D (rows = windows). The scale never drops below
    ``rel_floor * max(1, |median|)`` so constant windows give large, finite z-scores.
    """
    med = xp.median(windows, axis=1)
    dev = xp.abs(windows - med[:, None])
    mad = xp.median(dev, axis=1) * MAD_TO_SIGMA
    mean_ad = xp.mean(dev, axis=1) * MEANAD_TO_SIGMA
    scale = xp.where(mad > 0, mad, mean_ad)
    floor = rel_floor * xp.maximum(1.0, xp.abs(med))
    return med, xp.maximum(scale, floor)


def rolling_robust_z(
    xp: ModuleType, history: Any, x: Any, window: int, min_periods: int
) -> tuple[Any, Any]:
    """Robust z of each ``x[j]`` against the ``window`` values just before it.

    ``history`` holds up to ``window`` earlier values (chronological). Returns the signed
    z-scores (0 where fewer than ``min_periods`` earlier values exist) and the new
    history (last ``window`` values of history + x).
    """
    m, n = int(history.shape[0]), int(x.shape[0])
    combined = xp.concatenate([history, x])
    z = xp.zeros(n, dtype=xp.float64)
    # Warm-up rows (fewer than `window` predecessors) one by one, same 2-D reduction.
    p = m
    while p < min(m + n, window):
        if p >= min_periods:
            med, scale = robust_location_scale(xp, combined[None, :p])
            z[p - m] = (combined[p] - med[0]) / scale[0]
        p += 1
    if p < m + n:
        wins = trailing_windows(xp, combined, p, m + n, window)
        med, scale = robust_location_scale(xp, wins)
        z[p - m :] = (combined[p:] - med) / scale
    return z, combined[-window:].copy()


def z_to_score(xp: ModuleType, z: Any, z_scale: float) -> Any:
    """Map |z| monotonically to [0, 1): ``1 - exp(-|z| / z_scale)``."""
    return 1.0 - xp.exp(-xp.abs(z) / z_scale)


def finite_mask(values: np.ndarray) -> np.ndarray:
    """Boolean mask of finite values (NaN/inf are scored 0 and not learned from)."""
    return np.isfinite(values)
