"""Behaviour of the default ensemble detector."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import detectors
from detectors.ensemble import EnsembleDetector

T0 = 1.4e9


def _noise(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return 10 + rng.normal(0, 1, n), T0 + 300.0 * np.arange(n)


def test_quiet_during_warm_up_then_flags_a_huge_spike() -> None:
    v, t = _noise(2000)
    v[1500] += 40.0
    det = detectors.get_detector("ensemble")
    _, s = det.score(det.init_state(), v, t)
    assert np.all(s[:200] == 0.0)  # warm + cal_warm records are only learned
    assert s[1500] == s.max() or s[1500] > np.quantile(s, 0.999)


def test_level_shift_and_missing_daily_pattern_are_flagged() -> None:
    n = 288 * 14
    t = T0 - T0 % 86400 + 300.0 * np.arange(n)
    rng = np.random.default_rng(1)
    high = ((t % 86400) >= 36000) & ((t % 86400) < 64800)
    v = np.where(high, 80.0, 20.0) + rng.normal(0, 1, n)
    day = slice(288 * 10, 288 * 11)
    v[day] = 20.0 + rng.normal(0, 1, 288)  # the daily "high" phase never comes
    det = detectors.get_detector("ensemble")
    _, s = det.score(det.init_state(), v, t)
    normal = s[288 * 3 : 288 * 10]
    assert s[day].max() > normal.max()
    v2 = v.copy()
    v2[288 * 12 :] += 100.0
    _, s2 = det.score(det.init_state(), v2, t)
    assert s2[288 * 12 : 288 * 12 + 20].max() > s2[288 * 3 : 288 * 12].max()


def test_recurring_spikes_stop_being_alarming() -> None:
    v, t = _noise(6000, seed=2)
    spikes = np.arange(600, 6000, 250)
    v[spikes] += 30.0
    det = detectors.get_detector("ensemble", {"suppress_blocks": 0})
    _, s = det.score(det.init_state(), v, t)
    assert s[spikes[0]] > s[spikes[-5:]].max()


def test_suppression_keeps_only_new_peaks() -> None:
    v, t = _noise(1500, seed=3)
    v[1000:1010] += np.linspace(20, 25, 10)
    on = detectors.get_detector("ensemble")
    off = detectors.get_detector("ensemble", {"suppress_blocks": 0})
    _, s_on = on.score(on.init_state(), v, t)
    _, s_off = off.score(off.init_state(), v, t)
    alarms = lambda s: int(np.sum(s[1000:1010] > 0.3))  # noqa: E731
    assert alarms(s_on) < alarms(s_off)
    assert s_on[1000] == s_off[1000] > 0.3


def test_fit_seed_warm_starts_exactly() -> None:
    v, t = _noise(3000, seed=4)
    full = detectors.get_detector("ensemble")
    _, s_full = full.score(full.init_state(), v, t)
    model = json.loads(json.dumps(detectors.fit("ensemble", v[:2000], t[:2000])))
    det = detectors.get_detector("ensemble")
    det.load_model(model)
    _, s_rest = det.score(det.init_state(), v[2000:], t[2000:])
    np.testing.assert_array_equal(s_rest, s_full[2000:])


def test_default_state_size_is_a_few_kb() -> None:
    v, t = _noise(3000)
    det = EnsembleDetector()
    state, _ = det.score(det.init_state(), v, t)
    assert len(pickle.dumps(state)) < 7000


def test_cadence_shift_lowers_scores_of_fast_keys_only() -> None:
    from detectors.ensemble import median_step

    assert median_step(np.array([0.0, 60.0, 60.0, 120.0, 180.0])) == 60.0  # repeats skipped
    assert median_step(np.array([5.0, 5.0])) == 0.0  # no positive spacing
    v, _ = _noise(3000, seed=5)
    v[2500] += 30.0
    # no time-of-day (the same bins) and no rest period (its length in readings differs)
    det = detectors.get_detector("ensemble", {"n_tod": 1, "suppress_blocks": 0})
    _, slow = det.score(det.init_state(), v, T0 + 300.0 * np.arange(3000))
    _, fast = det.score(det.init_state(), v, T0 + 60.0 * np.arange(3000))
    m_slow = -10.0 * np.log1p(-slow)
    expected = np.where(slow > 0, 1.0 - np.exp(-np.maximum(m_slow - np.log(5.0), 0) / 10.0), 0)
    np.testing.assert_allclose(fast, expected, atol=1e-12)
    assert fast.max() > 0.3 and np.all(fast <= slow) and fast.sum() < slow.sum()
    hourly = detectors.get_detector("ensemble", {"n_tod": 1, "suppress_blocks": 0})
    _, s_h = hourly.score(hourly.init_state(), v, T0 + 3600.0 * np.arange(3000))
    np.testing.assert_array_equal(s_h, slow)  # slower than ref_step: no shift


def test_rest_period_lasts_the_same_time_at_any_cadence() -> None:
    det = detectors.get_detector("ensemble")
    restless = detectors.get_detector("ensemble", {"suppress_blocks": 0})
    for step in (60.0, 300.0, 900.0):
        v, _ = _noise(6000, seed=6)
        v[3000] += 40.0
        v[3000 + int(3 * 3600 / step)] += 8.0  # a lower peak 3 h later: suppressed
        v[3000 + int(24 * 3600 / step)] -= 40.0  # a new kind of spike a day later: alerts
        _, s = det.score(det.init_state(), v, T0 + step * np.arange(6000))
        assert s[3000] > 0.5, step
        assert s[3000 + int(3 * 3600 / step)] == 0.0, step
        _, s0 = restless.score(restless.init_state(), v, T0 + step * np.arange(6000))
        assert s0[3000 + int(3 * 3600 / step)] > 0.4, step  # what the rest period hides
        assert s[3000 + int(24 * 3600 / step)] > 0.4, step


def test_explain_tells_a_spike_from_a_broken_daily_pattern() -> None:
    rng = np.random.default_rng(0)
    v, t = _noise(3000)
    v[2000] += 30.0
    det = detectors.get_detector("ensemble")
    st, s = det.score(det.init_state(), v[:2001], t[:2001])
    why = det.explain(st, float(v[2000]), float(t[2000]))
    assert s[-1] > 0.5 and why["component"] == "novelty" and why["reason"] == "spike"
    assert why["expected"][0] < 10.0 < why["expected"][1] < v[2000]
    # the daily "high" phase (10:00-18:00) does not come on day 10
    tt = T0 - T0 % 86400 + 300.0 * np.arange(288 * 14)
    high = ((tt % 86400) >= 36000) & ((tt % 86400) < 64800)
    pv = np.where(high, 80.0, 20.0) + rng.normal(0, 1, tt.size)
    pv[288 * 10 : 288 * 11] = 20.0 + rng.normal(0, 1, 288)
    st, s = det.score(det.init_state(), pv[: 288 * 10], tt[: 288 * 10])
    for i in range(288 * 10, 288 * 11):
        st, s = det.score(st, pv[i : i + 1], tt[i : i + 1])
        if s[0] > 0.5:
            break
    why = det.explain(st, float(pv[i]), float(tt[i]))
    assert high[i] and why["reason"] == "pattern"  # a value usual at other times of day
    assert why["expected"][0] <= 80.0 <= why["expected"][1]


def test_warm_up_surprises_do_not_silence_the_first_alerts() -> None:
    # at one reading a minute the rest period spans 1000 readings: the (unscored)
    # calibration warm-up (readings 100-199) must not start it
    v, _ = _noise(1200, seed=5)
    v[230] += 30.0
    det = detectors.get_detector("ensemble")
    _, s = det.score(det.init_state(), v, T0 + 60.0 * np.arange(1200))
    assert s[230] > 0.3 and s[230] == s.max()


def test_members_ablation() -> None:
    v, t = _noise(1500, seed=7)
    v[1200:] += 4.0  # a level shift the regime member sees build up
    both = detectors.get_detector("ensemble")
    _, s_both = both.score(both.init_state(), v, t)
    outs = {}
    for m in ("novelty", "regime"):
        det = detectors.get_detector("ensemble", {"members": m})
        st, outs[m] = det.score(det.init_state(), v, t)
        assert det.explain(st, float(v[-1]), float(t[-1]))["component"] == m
    assert not np.array_equal(outs["novelty"], outs["regime"])
    assert np.all(s_both >= 0) and s_both[1200:].max() > 0
    with pytest.raises(ValueError, match="members"):
        detectors.get_detector("ensemble", {"members": "novelty+mad"})
