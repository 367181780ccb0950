"""NAB scorer on small hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.nab.scorer import (
    PROFILES,
    ScoredFile,
    evaluate,
    normalise,
    probation_length,
    score_file,
    sig,
    sweep,
    window_rows,
)

STD = PROFILES["standard"]


def _sig(x: float) -> float:
    return -1.0 if x > 3 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def _file(n: int, hits: dict[int, float], windows: list[tuple[int, int]]) -> ScoredFile:
    s = np.zeros(n)
    for i, v in hits.items():
        s[i] = v
    return ScoredFile("f.csv", s, windows)


def test_sigmoid_and_probation() -> None:
    assert sig(0.0) == 0.0
    assert sig(3.5) == -1.0
    assert np.isclose(sig(-1.0), 2 / (1 + math.exp(-5)) - 1)
    assert probation_length(20) == 3 and probation_length(4032) == 604
    assert probation_length(10_000) == 750


def test_true_positive_is_earliest_detection_in_window() -> None:
    # rows 0..19, probation 3 rows, window rows 10..13 (W = 4); hits at 11 and 12.
    f = _file(20, {11: 0.9, 12: 0.95}, [(10, 13)])
    r = score_file(f, 0.5, STD)
    expected = _sig(-(13 - 11 + 1) / 4) / _sig(-1.0)
    assert r["tp"] == 1 and r["fp"] == 0 and r["fn"] == 0
    assert math.isclose(r["raw"], expected)


def test_false_positives_before_and_after_a_window() -> None:
    # FP at row 5 (no window before: -A_FP) and at row 15 (2 rows after R=13, W=4).
    f = _file(20, {5: 1.0, 15: 1.0}, [(10, 13)])
    r = score_file(f, 0.5, STD)
    expected = -0.11 + 0.11 * _sig((15 - 13) / (4 - 1)) - 1.0  # + missed window
    assert (r["tp"], r["fp"], r["fn"]) == (0, 2, 1)
    assert math.isclose(r["raw"], expected)


def test_probationary_detections_are_ignored_and_profiles_weigh_misses() -> None:
    f = _file(20, {1: 1.0}, [(10, 13)])
    assert score_file(f, 0.5, STD)["raw"] == -1.0
    assert score_file(f, 0.5, PROFILES["reward_low_FN_rate"])["raw"] == -2.0


def test_normalisation_null_and_perfect() -> None:
    assert normalise(-3.0, 3, STD) == 0.0
    assert normalise(3.0, 3, STD) == 100.0
    perfect = _file(30, {10: 1.0, 20: 1.0}, [(10, 13), (20, 25)])
    res = evaluate([perfect], {"standard": STD})["standard"]
    assert math.isclose(res["score"], 100.0) and res["threshold"] == 1.0


def test_sweep_matches_brute_force_over_thresholds() -> None:
    rng = np.random.default_rng(3)
    files = []
    for n, wins in ((200, [(60, 80), (140, 150)]), (150, [(100, 120)]), (120, [])):
        files.append(ScoredFile("x", rng.random(n) ** 4, wins))
    for prof in PROFILES.values():
        thr, best = sweep(files, prof)
        cands = np.unique(np.concatenate([f.scores for f in files]))
        brute = max(sum(score_file(f, t, prof)["raw"] for f in files) for t in cands)
        assert math.isclose(best, brute, abs_tol=1e-9)
        at_thr = sum(score_file(f, thr, prof)["raw"] for f in files)
        assert math.isclose(at_thr, best, abs_tol=1e-9)


def test_fixed_threshold_and_window_rows() -> None:
    ts = np.arange(10, dtype=np.float64) * 60
    assert window_rows(ts, [(120.0, 300.0), (530.0, 700.0)]) == [(2, 5), (9, 9)]
    f = _file(20, {11: 0.4}, [(10, 13)])
    assert evaluate([f], {"standard": STD}, threshold=0.5)["standard"]["fn"] == 1
    assert evaluate([f], {"standard": STD}, threshold=0.3)["standard"]["tp"] == 1


@pytest.mark.parametrize("name", list(PROFILES))
def test_never_firing_detector_scores_zero(name: str) -> None:
    f = _file(50, {}, [(20, 30)])
    assert evaluate([f], {name: PROFILES[name]})[name]["score"] == 0.0
