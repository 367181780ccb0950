"""GPU (CuPy) kernels must agree with numpy; skipped only when cupy is not installed."""

from __future__ import annotations

import numpy as np
import pytest

import detectors
from detectors.ensemble import novelty_bins
from detectors.kernels import rolling_robust_z

cupy = pytest.importorskip("cupy", reason="gpu tests need cupy (cupy-cuda12x)")
pytestmark = pytest.mark.gpu


def test_gpu_rolling_robust_z_matches_numpy_cupy() -> None:
    rng = np.random.default_rng(0)
    hist, x = rng.normal(size=40), rng.normal(size=500)
    z_np, h_np = rolling_robust_z(np, hist, x, 64, 8)
    z_cp, h_cp = rolling_robust_z(cupy, cupy.asarray(hist), cupy.asarray(x), 64, 8)
    np.testing.assert_allclose(cupy.asnumpy(z_cp), z_np, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cupy.asnumpy(h_cp), h_np)


def test_gpu_novelty_bins_match_numpy_cupy() -> None:
    rng = np.random.default_rng(1)
    x, t = rng.normal(5, 3, 1000), 1.4e9 + 300.0 * np.arange(1000)
    b_np, d_np = novelty_bins(np, x, t, 5.0, 3.0, 2.0, 40, 2.0, 24)
    b_cp, d_cp = novelty_bins(cupy, cupy.asarray(x), cupy.asarray(t), 5.0, 3.0, 2.0, 40, 2.0, 24)
    assert np.mean(cupy.asnumpy(b_cp) != b_np) < 1e-3  # rint ties may differ in the last ulp
    np.testing.assert_array_equal(cupy.asnumpy(d_cp), d_np)


@pytest.mark.parametrize("name", ["mad", "ensemble"])
def test_gpu_detector_scores_match_numpy_cupy(name: str) -> None:
    rng = np.random.default_rng(2)
    v, t = rng.normal(10, 1, 800), 1.4e9 + 300.0 * np.arange(800)
    cpu, gpu = detectors.get_detector(name), detectors.get_detector(name, {"xp": "cupy"})
    _, s_cpu = cpu.score(cpu.init_state(), v, t)
    _, s_gpu = gpu.score(gpu.init_state(), v, t)
    np.testing.assert_allclose(s_gpu, s_cpu, atol=1e-9)


def test_gpu_ensemble_score_batch_and_pack_cupy() -> None:
    """With ``xp="cupy"`` ``score_batch`` loops over ``score``; states stay host numpy and
    pack exactly; scores agree with the numpy detector's."""
    rng = np.random.default_rng(3)
    series = [(rng.normal(10, 1, 400), 1.4e9 + 300.0 * np.arange(400)) for _ in range(4)]
    cpu = detectors.get_detector("ensemble")
    gpu = detectors.get_detector("ensemble", {"xp": "cupy"})
    sl = [slice(0, 400), slice(0, 1), slice(0, 150), slice(0, 0)]
    s_gpu, o_gpu = gpu.score_batch(
        [None] * 4,
        [v[s] for (v, _), s in zip(series, sl, strict=True)],
        [t[s] for (_, t), s in zip(series, sl, strict=True)],
    )
    for (v, t), s, st, o in zip(series, sl, s_gpu, o_gpu, strict=True):
        _, ref = gpu.score(gpu.init_state(), v[s], t[s])
        np.testing.assert_array_equal(o, ref)
        np.testing.assert_allclose(o, cpu.score(cpu.init_state(), v[s], t[s])[1], atol=1e-9)
        back = gpu.unpack_state(gpu.pack_state(st))
        assert list(back) == list(st)
        for k, x in st.items():
            assert type(back[k]) is type(x)
            if isinstance(x, np.ndarray):
                assert back[k].dtype == x.dtype and back[k].tobytes() == x.tobytes()
            else:
                assert back[k] == x
