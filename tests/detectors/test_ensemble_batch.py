"""``score_batch`` and ``pack_state``/``unpack_state``: bit-identical to ``score`` and exact."""

from __future__ import annotations

import copy
import json
import pickle
import zlib
from typing import Any

import numpy as np
import pytest

import detectors
from detectors.ensemble import EnsembleDetector, bins_py, fit_ensemble, novelty_bins

CONFIGS: list[dict[str, Any]] = [
    {},
    {"suppress_blocks": 0},
    {"hist_cap": 25, "ref_step": 0.0},
    {"warm": 5, "cal_warm": 3, "hist_cap": 12, "block_s": 900.0, "suppress_blocks": 2},
    {"n_tod": 7, "bin_k": 10, "ref_step": 3600.0},
]


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)
    for k, x in a.items():
        y = b[k]
        assert type(x) is type(y), k
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert x.tobytes() == y.tobytes(), k  # bit for bit (-inf, -0.0, NaN payloads)
        else:
            assert x == y, (k, x, y)


def assert_same_scores(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype == np.float64 and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def _series(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy daily seasonality, spikes, maybe a level shift, NaN/inf mixed in."""
    rng = np.random.default_rng(seed)
    t = 1.4e9 + 300.0 * np.arange(n) + rng.uniform(0, 60, n)
    v = 50 + 10 * np.sin(2 * np.pi * t / 86400) + rng.normal(0, rng.choice([0.2, 1, 4]), n)
    v[rng.random(n) < 0.02] += rng.normal(0, 40)
    if seed % 2:
        v[n // 2 :] += 25.0
    v[rng.random(n) < 0.04] = np.nan
    v[rng.random(n) < 0.01] = rng.choice([np.inf, -np.inf])
    return v, t


def _detector(cfg: dict[str, Any], seeded: bool) -> EnsembleDetector:
    det = EnsembleDetector(cfg)
    if seeded:
        v, t = _series(99, 400)
        det.load_model(json.loads(json.dumps(fit_ensemble(v, t, cfg))))
    return det


@pytest.mark.parametrize("seeded", [False, True])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_score_batch_equals_score_per_key(cfg: dict[str, Any], seeded: bool) -> None:
    det = _detector(cfg, seeded)
    keys = 14
    series = [_series(100 * k + len(cfg), 700) for k in range(keys)]
    rng = np.random.default_rng(len(cfg) + 7 * seeded)
    # keys start fresh (None), mid warm-up, or from their own history
    states: list[Any] = []
    pos = []
    for k in range(keys):
        start = [0, 0, 3, 50, 99, 120, 300][k % 7]
        st = None if start == 0 and k % 2 else det.init_state()
        if start:
            st, _ = det.score(det.init_state(), *(a[:start] for a in series[k]))
        states.append(st)
        pos.append(start)
    for _ in range(60):
        sizes = rng.integers(0, 6, keys)
        vals = [series[k][0][pos[k] : pos[k] + sizes[k]] for k in range(keys)]
        ts = [series[k][1][pos[k] : pos[k] + sizes[k]] for k in range(keys)]
        before = copy.deepcopy(states)
        ref = [
            det.score(det.init_state() if s is None else s, v, t)
            for s, v, t in zip(states, vals, ts, strict=True)
        ]
        for s, b in zip(states, before, strict=True):
            if s is not None:
                assert_same_state(s, b)  # score leaves its input alone
        new_states, scores = det.score_batch(states, vals, ts)
        assert len(new_states) == len(scores) == keys
        for k in range(keys):
            assert_same_state(new_states[k], ref[k][0])
            assert_same_scores(scores[k], ref[k][1])
            if states[k] is not None:
                assert new_states[k] is states[k]  # consumed: updated in place
        states = new_states
        pos = [p + int(s) for p, s in zip(pos, sizes, strict=True)]
        # packed states continue exactly
        states = [
            det.unpack_state(det.pack_state(s)) if k % 3 == 0 else s for k, s in enumerate(states)
        ]


def test_score_batch_one_big_batch_equals_split_calls() -> None:
    det = EnsembleDetector({"hist_cap": 300})
    series = [_series(k, 2000) for k in range(5)]
    states, scores = det.score_batch([None] * 5, [v for v, _ in series], [t for _, t in series])
    for k, (v, t) in enumerate(series):
        st, parts = det.init_state(), []
        for i in range(0, 2000, 37):
            st, s = det.score(st, v[i : i + 37], t[i : i + 37])
            parts.append(s)
        assert_same_state(states[k], st)
        assert_same_scores(scores[k], np.concatenate(parts))


def test_score_batch_edge_cases() -> None:
    det = EnsembleDetector()
    assert det.score_batch([], [], []) == ([], [])
    states, scores = det.score_batch([None, None], [np.empty(0), [np.nan]], [np.empty(0), [1.0]])
    for st, s in zip(states, scores, strict=True):
        assert_same_state(st, det.init_state())
        assert np.all(s == 0.0)
    with pytest.raises(ValueError):
        det.score_batch([None], [np.ones(3)], [np.ones(2)])


def test_non_finite_timestamps_bin_like_numpy() -> None:
    det = EnsembleDetector()
    v, t = _series(4, 400)
    st, _ = det.score(det.init_state(), v[:300], t[:300])
    t2 = t[300:].copy()
    t2[[1, 5]] = [np.nan, np.inf]
    with np.errstate(invalid="ignore"):
        ref = [det.score(st, v[300 + i : 303 + i], t2[i : i + 3]) for i in range(0, 60, 3)]
        states, scores = det.score_batch(
            [copy.deepcopy(st) for _ in ref],
            [v[300 + i : 303 + i] for i in range(0, 60, 3)],
            [t2[i : i + 3] for i in range(0, 60, 3)],
        )
    for (rs, rsc), s, sc in zip(ref, states, scores, strict=True):
        assert_same_state(s, rs)
        assert_same_scores(sc, rsc)


def test_score_batch_fallback_loops_over_score() -> None:
    det, ref = EnsembleDetector(), EnsembleDetector()
    det._batch = False  # what an ``xp`` other than numpy does
    v, t = _series(3, 400)
    st0, _ = ref.score(ref.init_state(), v[:250], t[:250])
    states, scores = det.score_batch(
        [copy.deepcopy(st0), None, None], [v[250:], v[:9], v], [t[250:], t[:9], t]
    )
    for st, s, (rs, rsc) in zip(
        states,
        scores,
        [
            ref.score(st0, v[250:], t[250:]),
            ref.score(ref.init_state(), v[:9], t[:9]),
            ref.score(ref.init_state(), v, t),  # through the warm-up's end
        ],
        strict=True,
    ):
        assert_same_state(st, rs)
        assert_same_scores(s, rsc)


def test_python_binning_equals_numpy_binning() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.standard_cauchy(3000) * 10.0 ** rng.integers(-3, 4, 3000), [1e308, -1e308, 0.0, 5.0]]
    )
    t = rng.uniform(-2e9, 2e9, x.size)
    t[:20] = np.arange(20) * 3600.0  # bucket boundaries
    m0, s0 = rng.normal(0, 5, x.size), rng.uniform(1e-6, 10, x.size)
    for c, k, zdiv, n_tod in [(2.0, 40, 2.0, 24), (1.0, 10, 0.7, 7), (4.0, 3, 2.0, 1)]:
        b, td = novelty_bins(np, x, t, m0, s0, c, k, zdiv, n_tod)
        assert (b.tolist(), td.tolist()) == bins_py(
            x.tolist(), t.tolist(), m0.tolist(), s0.tolist(), c, k, zdiv, n_tod
        )
    # rint and round agree on ties (both round half to even)
    y = np.arange(-10.5, 10.5, 0.5)
    assert np.rint(y).astype(int).tolist() == [round(v) for v in y.tolist()]


def _states() -> list[tuple[EnsembleDetector, dict[str, Any]]]:
    out = []
    for cfg in [*CONFIGS, {"n_tod": 1, "hist_cap": 60000}]:
        for seeded in (False, True):
            det = _detector(cfg, seeded)
            out.append((det, det.init_state()))
            v, t = _series(len(cfg), 3000)
            st, i = det.init_state(), 0
            for n in (1, 3, 40, 150, 300, 1000, 3000):  # warm-up, calibration, mature
                st, _ = det.score(st, v[i:n], t[i:n])
                out.append((det, copy.deepcopy(st)))
                i = n
    return out


def test_pack_round_trip_is_exact() -> None:
    compact = wide = 0
    states = _states()
    for det, st in states:
        before = copy.deepcopy(st)
        blob = det.pack_state(st)
        assert_same_state(st, before)  # packing does not touch the state
        compact += blob[0] == 2
        wide += blob[0] == 2 and bool(blob[1] & 2)
        back = det.unpack_state(blob)
        assert_same_state(back, st)
        # old snapshots (pickle + zlib) keep loading
        assert_same_state(det.unpack_state(zlib.compress(pickle.dumps(st, -1), 1)), st)
        # an unpacked state scores exactly like the original
        v, t = _series(5, 30)
        s1, o1 = det.score(st, v, t)
        s2, o2 = det.score(back, v, t)
        assert_same_state(s1, s2)
        assert_same_scores(o1, o2)
    assert compact == len(states) and wide > 0


def test_packed_mature_state_is_small() -> None:
    det = EnsembleDetector()
    t = 1.4e9 + 300.0 * np.arange(300)
    v = 50 + 10 * np.sin(2 * np.pi * t / 86400) + np.random.default_rng(0).normal(0, 1, 300)
    st, _ = det.score(det.init_state(), v, t)
    assert len(det.pack_state(st)) < 650
    assert len(det.pack_state(det.init_state())) < 300


def test_unusual_states_fall_back_to_the_default_format() -> None:
    det = EnsembleDetector()
    v, t = _series(1, 400)
    st, _ = det.score(det.init_state(), v, t)
    odd = [
        dict(st, extra=1),
        dict(st, n=np.int64(st["n"])),
        dict(st, m0=int(st["m0"])),
        dict(st, cal_nov=st["cal_nov"].astype(np.float32)),
        dict(st, blocks=np.zeros(3)),
        {k: st[k] for k in reversed(list(st))},
        dict(st, lo=True),
    ]
    for o in odd:
        blob = det.pack_state(o)
        assert blob[0] == 0x78
        assert_same_state(det.unpack_state(blob), o)
    # counts outside the seen bin range [lo, hi] still round-trip (full width)
    for key in ("ct", "cm"):
        o = copy.deepcopy(st)
        o[key][..., 0] = 7
        blob = det.pack_state(o)
        assert blob[0] == 2
        assert_same_state(det.unpack_state(blob), o)
    blob = det.pack_state(dict(st, warm_t=np.zeros(3)))  # warm and warm_t differ in length
    assert blob[0] == 0x78
    # a state of another configuration still round-trips (default format)
    other = EnsembleDetector({"n_tod": 12})
    blob = other.pack_state(st)
    assert blob[0] == 0x78 and det.pack_state(st)[0] == 2
    assert_same_state(other.unpack_state(blob), st)
    # and the compact format is self-describing
    assert_same_state(other.unpack_state(det.pack_state(st)), st)


def test_mad_detector_default_pack_and_batch() -> None:
    det = detectors.get_detector("mad")
    v, t = _series(2, 500)
    st, _ = det.score(det.init_state(), v[:300], t[:300])
    blob = det.pack_state(st)
    assert blob == zlib.compress(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL), 1)
    back = det.unpack_state(blob)
    assert back["n"] == st["n"] and np.array_equal(back["hist"], st["hist"])
    states, scores = det.score_batch([back, None], [v[300:], v[:50]], [t[300:], t[:50]])
    for (s, sc), (rs, rsc) in zip(
        zip(states, scores, strict=True),
        [det.score(st, v[300:], t[300:]), det.score(det.init_state(), v[:50], t[:50])],
        strict=True,
    ):
        assert s["n"] == rs["n"] and s["hist"].tobytes() == rs["hist"].tobytes()
        assert_same_scores(sc, rsc)


# States packed by the previous release (format 1, first byte 1): a mature one (400 values)
# and one in warm-up (50 values), zlib-compressed here only to keep the text short.
V1_MATURE = (
    "eNpjZJBgCGQwYOBiUGfQAWN+BhYGBJjACKHVGbQZ9G+EMRuvd3V4evCEir+KsIPcyxTpnW9u2E/J4y1fsEvWYUXwe4c"
    "dWf/sITo+/GdgYGUHscRABB+I4GICEozcQIKJC0aA1XAyAwkeBijBxgZVxcIBJLiBTmDmhCkC8SAESBVEGYQPVgxi8g"
    "Bt5AOSxEJNBjsGY4Z0oA/B4EG6A5huiILSHhCawRxKq0BpBSgtAqU/QH3O4MCAFcDlGdDUQegDcVD7YqB0AlTe3mFn+"
    "NMLe6o+2Z/ue+rTbS/h0PQkqffJGkEHh1IB/UJhEYewi5dFH+5gd/j4cN1W10ouh5KQ6/H5gewO+WrVx7WDuBwmTDux"
    "ZCMnu4PsXD6/i6Jf7QH9wEm2"
)
V1_WARM = (
    "eNpjZJBgCGQwYOBigAFGIGRgMILyYHQgw///DCjggz0DTYCnAyr94T9lNAJcyln95q6ri0PAfafdqrIuDqWn8s49q3B"
    "xSNDrfHlB18Vh15m7Nx9cdXZgf9Pokujs4rCw5KaN03YXh+ncNm9yWl0cmooWrZi8ztnh0KqFL/YmOzv8VT24YNZmZ4"
    "d2xUVLP7G5OEzTtWP5cM3JIeTlEh/2J84OEr/eLl2R4OzAWMm0Qnaxs8Omum1SDXucHR4sPRs++7azw5yCIrlAaxeHU"
    "00Kv037XRyOiCz7wP/X2WGFL6/Z0QMuDj6BRadWHXR2YE646hvl6eLwSSxsouo0F4frKv8Wu5q6ODQzpSelXnR2+GNq"
    "uqjukLMDa7NyZiLQHUk9fYxWaS4O58QePyu55Oyw0F7mjwLQP3dMmcp8Q1wcAhf9cnXYCTTHSawlZbaLg/Ox/003gPy"
    "66cc/LwOGzyKP/8tcgfZ85l7510nS1SHxmYfx0iZXhyPns7yzDF0czMPbLnxZ7OrgoiVzoXueq8Pl6ZWWD9JcHSq5U6"
    "PPmLo6WMzceDPor4vDsxuHH2t8cnX4rSti+t7FzeHxR0PdSc5uDpMWCWxdK+HmAAClhMkG"
)


def test_format_1_states_still_load_and_resume() -> None:
    import base64

    from detectors.ensemble_codec import KEYS

    det = EnsembleDetector()
    mature = det.unpack_state(zlib.decompress(base64.b64decode(V1_MATURE)))
    assert tuple(mature) == KEYS
    assert mature["n"] == 400 and (mature["lo"], mature["hi"]) == (39, 43)
    assert abs(mature["m0"] - 43.36874429455235) < 1e-12 and int(mature["ct"].sum()) == 300
    assert mature["step"] == 0.0 and mature["warm_t"].size == 0
    warm = det.unpack_state(zlib.decompress(base64.b64decode(V1_WARM)))
    assert warm["n"] == 50 and warm["warm"].size == 50 and warm["warm_t"].size == 0
    v, t = _series(3, 200)
    for st in (mature, warm):
        st2, s = det.score(st, v, t)
        assert st2["n"] == st["n"] + int(np.isfinite(v).sum()) and np.all((s >= 0) & (s < 1))
        blob = det.pack_state(st2)
        assert blob[0] == 2
        assert_same_state(det.unpack_state(blob), st2)
