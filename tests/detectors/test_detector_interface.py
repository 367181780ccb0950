"""Contract tests every registered detector must pass."""

from __future__ import annotations

import json
import pickle
import zlib

import numpy as np
import pytest

import detectors
from detectors.base import BUILTIN_VERSION

NAMES = list(detectors.DETECTORS)


def _run(det, v: np.ndarray, t: np.ndarray, sizes: list[int]) -> tuple[object, np.ndarray]:
    state, out, i, k = det.init_state(), [], 0, 0
    while i < len(v):
        n = sizes[k % len(sizes)]
        state, s = det.score(state, v[i : i + n], t[i : i + n])
        assert s.shape == (len(v[i : i + n]),)
        out.append(s)
        i, k = i + n, k + 1
    return state, np.concatenate(out)


def test_registry_has_required_names() -> None:
    assert {"mad", "ensemble"} <= set(detectors.DETECTORS)
    with pytest.raises(ValueError):
        detectors.get_detector("nope")
    with pytest.raises(ValueError):
        detectors.get_detector("mad", {"no_such_param": 1})


@pytest.mark.parametrize("name", NAMES)
def test_scores_in_unit_interval_and_flag_spike(name: str, series) -> None:
    v, t = series
    det = detectors.get_detector(name)
    assert det.name == name and det.version and det.model_version == BUILTIN_VERSION
    _, s = _run(det, v, t, [len(v)])
    assert np.all(np.isfinite(s)) and s.min() >= 0.0 and s.max() <= 1.0
    spike = len(v) // 2
    assert s[spike] > np.quantile(s[200:spike], 0.99)


@pytest.mark.parametrize("name", NAMES)
def test_batch_split_invariance(name: str, series) -> None:
    v, t = series
    det = detectors.get_detector(name)
    _, whole = _run(det, v, t, [len(v)])
    for sizes in ([1], [7, 1, 20, 3], [50, 13]):
        _, split = _run(det, v, t, sizes)
        np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("name", NAMES)
def test_no_look_ahead(name: str, series) -> None:
    v, t = series
    det = detectors.get_detector(name)
    _, full = _run(det, v, t, [64])
    cut = 900
    v2 = v.copy()
    v2[cut:] = np.random.default_rng(5).normal(1e3, 1e2, len(v) - cut)
    _, other = _run(det, v2, t, [64])
    np.testing.assert_array_equal(full[:cut], other[:cut])


@pytest.mark.parametrize("name", NAMES)
def test_state_pickles_resumes_and_is_small(name: str, series) -> None:
    v, t = series
    det = detectors.get_detector(name)
    _, whole = _run(det, v, t, [len(v)])
    state, first = det.score(det.init_state(), v[:1000], t[:1000])
    blob = pickle.dumps(state)
    assert len(blob) < 8192, len(blob)
    _, rest = det.score(pickle.loads(blob), v[1000:], t[1000:])
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_values_score_zero_and_are_skipped(name: str, series) -> None:
    v, t = series
    det = detectors.get_detector(name)
    v2 = np.insert(v[:600], 300, [np.nan, np.inf])
    t2 = np.insert(t[:600], 300, [t[299] + 1, t[299] + 2])
    _, s2 = det.score(det.init_state(), v2, t2)
    _, s = det.score(det.init_state(), v[:600], t[:600])
    assert s2[300] == 0.0 and s2[301] == 0.0
    np.testing.assert_array_equal(np.delete(s2, [300, 301]), s)


@pytest.mark.parametrize("name", NAMES)
def test_fit_returns_json_model_that_loads(name: str, series) -> None:
    v, t = series
    model = detectors.fit(name, v, t)
    model = json.loads(json.dumps(model))
    assert model["detector"] == name
    det = detectors.get_detector(name)
    det.load_model(model)
    assert det.model_version == model["version"] != BUILTIN_VERSION
    _, s = det.score(det.init_state(), v, t)
    assert np.all((s >= 0) & (s <= 1))
    with pytest.raises(ValueError):
        det.load_model({"detector": "other-detector", "params": {}})


def _same(a: object, b: object) -> bool:
    """Exact equality of (nested) states: arrays bit for bit, with dtypes and shapes."""
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("name", NAMES)
def test_score_batch_equals_score_per_key(name: str, series) -> None:
    v, t = series
    det = detectors.get_detector(name)
    cuts = [0, 1, 17, 150, 400, 999]
    mid = [det.score(det.init_state(), v[:c], t[:c])[0] for c in cuts]
    sl = [slice(c, c + 1 + k % 3) for k, c in enumerate(cuts)]
    ref = [det.score(st, v[s], t[s]) for st, s in zip(mid, sl, strict=True)]
    states, scores = det.score_batch([None, *mid[1:]], [v[s] for s in sl], [t[s] for s in sl])
    for (rs, rsc), st, sc in zip(ref, states, scores, strict=True):
        assert _same(st, rs)
        assert sc.dtype == rsc.dtype and sc.tobytes() == rsc.tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_pack_state_round_trips_and_reads_the_default_format(name: str, series) -> None:
    v, t = series
    det = detectors.get_detector(name)
    for n in (0, 5, 300, 1500):
        state, _ = det.score(det.init_state(), v[:n], t[:n])
        blob = det.pack_state(state)
        assert isinstance(blob, bytes) and len(blob) < 8192
        assert _same(det.unpack_state(blob), state)
        old = zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1)
        assert _same(det.unpack_state(old), state)


@pytest.mark.parametrize("name", NAMES)
def test_explain_names_component_range_and_reason(name: str, series) -> None:
    from detectors.base import REASONS

    v, t = series
    det = detectors.get_detector(name)
    spike = len(v) // 2
    state, _ = det.score(det.init_state(), v[: spike + 1], t[: spike + 1])
    before = pickle.dumps(state)
    why = det.explain(state, float(v[spike]), float(t[spike]))
    assert pickle.dumps(state) == before  # explaining does not change the state
    assert set(why) == {"component", "expected", "reason"}
    assert isinstance(why["component"], str) and why["reason"] == "spike"
    lo, hi = why["expected"]
    assert lo < hi and not lo <= v[spike] <= hi  # the spike is outside the expected range
    assert lo <= v[spike - 288] <= hi  # the same time a day earlier (5-minute steps)
    json.dumps(why)  # goes into the alert body as is
    # a level shift that has lasted a while is named as such
    shift = int(len(v) * 0.8) + 10
    state, _ = det.score(det.init_state(), v[: shift + 1], t[: shift + 1])
    assert det.explain(state, float(v[shift]), float(t[shift]))["reason"] in REASONS
    fresh = det.explain(det.init_state(), 1.0, float(t[0]))
    assert fresh["expected"] is None and fresh["reason"] is None


@pytest.mark.parametrize("name", NAMES)
def test_explain_in_batch_equals_one_record_at_a_time(name: str, series) -> None:
    from detectors.base import explain_in_batch, state_before_batch

    v, t = series
    det = detectors.get_detector(name)
    spike = len(v) // 2
    st0, _ = det.score(det.init_state(), v[: spike - 3], t[: spike - 3])
    vals, ts = v[spike - 3 : spike + 4].tolist(), t[spike - 3 : spike + 4].tolist()
    before = state_before_batch(det, st0, len(vals))
    assert before is not None and state_before_batch(det, st0, 1) is None
    after, _ = det.score(det.unpack_state(before), np.array(vals), np.array(ts))
    j = 3  # the spike, in the middle of the batch
    one, _ = det.score(det.unpack_state(before), np.array(vals[: j + 1]), np.array(ts[: j + 1]))
    expected = det.explain(one, vals[j], ts[j])
    assert explain_in_batch(det, after, before, vals, ts, j) == expected
    assert explain_in_batch(det, after, before, vals, ts, 6) == det.explain(after, vals[6], ts[6])
    fresh = state_before_batch(det, None, 2)
    assert fresh is not None and pickle.dumps(det.unpack_state(fresh)) == pickle.dumps(
        det.init_state()
    )
