"""Hand-checkable behaviour of the rolling median/MAD baseline."""

from __future__ import annotations

import numpy as np

import detectors
from detectors.kernels import MAD_TO_SIGMA
from detectors.mad import MadDetector


def test_mad_score_matches_hand_computation() -> None:
    det = detectors.get_detector("mad", {"window": 5, "min_periods": 3, "z_scale": 2.0})
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 13.0])
    _, s = det.score(det.init_state(), v, np.arange(6.0))
    assert np.all(s[:3] == 0.0)  # fewer than min_periods predecessors
    # value 4 vs [1, 2, 3]: median 2, MAD 1 -> z = 2 / 1.4826
    assert np.isclose(s[3], 1 - np.exp(-(2 / MAD_TO_SIGMA) / 2.0))
    # value 13 vs [1..5]: median 3, MAD 1 -> z = 10 / 1.4826
    assert np.isclose(s[5], 1 - np.exp(-(10 / MAD_TO_SIGMA) / 2.0))


def test_constant_window_gives_finite_high_score() -> None:
    det = detectors.get_detector("mad", {"window": 10, "min_periods": 3})
    v = np.r_[np.full(20, 7.0), 8.0]
    _, s = det.score(det.init_state(), v, np.arange(21.0))
    assert np.all(s[:20] == 0.0) and 0.99 < s[20] <= 1.0


def test_state_is_bounded_by_window() -> None:
    det = detectors.get_detector("mad", {"window": 32})
    state, _ = det.score(det.init_state(), np.arange(1000.0), np.arange(1000.0))
    assert state["hist"].shape == (32,) and state["n"] == 1000


def test_fit_calibrates_z_scale() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(0, 1, 3000)
    model = detectors.fit("mad", v, np.arange(3000.0))
    det = detectors.get_detector("mad")
    det.load_model(model)
    _, s = det.score(det.init_state(), v, np.arange(3000.0))
    assert abs(np.quantile(s[16:], 0.999) - 0.5) < 0.02


def test_explain_level_shift_after_a_few_values() -> None:
    rng = np.random.default_rng(1)
    v = 10 + rng.normal(0, 1, 400)
    v[390:] += 20.0
    t = 1.4e9 + 60.0 * np.arange(400)
    det = MadDetector()
    st, _ = det.score(det.init_state(), v[:391], t[:391])
    assert det.explain(st, float(v[390]), float(t[390]))["reason"] == "spike"
    st, _ = det.score(det.init_state(), v, t)
    why = det.explain(st, float(v[399]), float(t[399]))
    assert why["reason"] == "level_shift" and why["expected"][1] < 20.0
