"""Robust baseline: rolling median / MAD z-score of each value against its recent past.

Per-key state: the last ``window`` finite values (float64) and a counter, i.e.
``8 * window`` bytes (2 KiB for the default 256) plus a small dict.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from detectors.base import BaseDetector
from detectors.kernels import finite_mask, rolling_robust_z, z_to_score
from detectors.xp import asnumpy, get_xp


class MadDetector(BaseDetector):
    """Score = ``1 - exp(-|x - median| / (sigma_MAD * z_scale))`` over a trailing window."""

    name: ClassVar[str] = "mad"
    defaults: ClassVar[dict[str, Any]] = {
        "window": 256,  # trailing values the median/MAD is taken over
        "min_periods": 16,  # score 0 until this many earlier values are seen
        "z_scale": 4.0,  # |z| at which the score reaches 1 - 1/e (~0.63)
        "xp": "numpy",  # array module: numpy, cupy or auto
    }

    def _configure(self) -> None:
        p = self.params
        if int(p["window"]) < 2 or int(p["min_periods"]) < 2 or float(p["z_scale"]) <= 0:
            raise ValueError("mad: need window >= 2, min_periods >= 2, z_scale > 0")
        self._xp = get_xp(p["xp"])

    def init_state(self) -> dict[str, Any]:
        """Empty history."""
        return {"hist": np.empty(0, dtype=np.float64), "n": 0}

    def zscores(
        self, state: dict[str, Any], values: np.ndarray
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Signed robust z-scores (0 for non-finite values); also returns the next state."""
        values = np.asarray(values, dtype=np.float64)
        ok = finite_mask(values)
        xp = self._xp
        w, mp = int(self.params["window"]), int(self.params["min_periods"])
        z_ok, hist = rolling_robust_z(xp, xp.asarray(state["hist"]), xp.asarray(values[ok]), w, mp)
        z = np.zeros(values.shape[0], dtype=np.float64)
        z[ok] = asnumpy(z_ok)
        return {"hist": asnumpy(hist), "n": int(state["n"]) + int(ok.sum())}, z

    def score(
        self, state: dict[str, Any], values: np.ndarray, timestamps: np.ndarray
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Score by robust z-score against the rolling history; see :meth:`Detector.score`."""
        new_state, z = self.zscores(state, values)
        return new_state, z_to_score(np, z, float(self.params["z_scale"]))


def fit_mad(
    values: np.ndarray,
    timestamps: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
    target_quantile: float = 0.999,
) -> dict[str, Any]:
    """Learn ``z_scale`` from history so the ``target_quantile`` of |z| scores 0.5.

    Returns a JSON-serialisable model dict for ``MadDetector.load_model``.
    """
    det = MadDetector(params)
    _, z = det.zscores(det.init_state(), np.asarray(values, dtype=np.float64))
    z = np.abs(z[int(det.params["min_periods"]) :])
    q = float(np.quantile(z, target_quantile)) if z.size else 0.0
    model = det.to_model()
    if q > 0 and np.isfinite(q):
        model["params"]["z_scale"] = float(q / np.log(2.0))
    model["version"] = f"fit-{len(values)}"
    return model
