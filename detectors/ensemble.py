"""The default detector: calibrated novelty + regime-change ensemble with alert suppression.

Per record (all causal, one key):

1. **Novelty** (a seasonal, robust density model): the value is expressed as a robust
   z-score against a reference median/MAD learned from the first ``warm`` values, squashed
   with ``asinh`` (log resolution for spikes of any size) and binned. A decaying histogram
   of bins, conditioned on time of day (``n_tod`` buckets, shrunk towards the marginal
   histogram), gives ``u = -log P(bin | time of day)`` before the value is learned.
2. **Regime**: an exponential moving average of ``u`` (level shifts, density changes and
   other sustained novelty that single points do not show).
3. **Optional robust baseline**: rolling median/MAD z (``w_mad > 0``; off by default).
4. **Likelihood-style calibration**: each component's raw surprise is replaced by how
   rare that surprise level is *for this key*: ``-log P(past surprise >= current)`` from
   a histogram of its own history (an empirical version of Numenta's anomaly likelihood).
   This puts every series on one scale, so one global threshold fits all keys.
5. **Combination and suppression**: ``m = max(novelty, regime) + w_mad * mad``. A record
   keeps its score only if it exceeds every calibrated score of the previous
   ``suppress_blocks`` blocks of ``block`` records (a sliding maximum); otherwise it is
   scaled by ``suppressed_factor`` (0: one alert per episode, new peaks still alert).
   Output ``score = 1 - exp(-m / score_scale)`` in [0, 1).

Per-key state (defaults): the time-of-day histogram as uint16 (24 x 81 bins), the
marginal and per-bucket counts and two calibration histograms, plus scalars (a 100-value
warm-up buffer exists only during the first 100 values). ``pack_state`` stores only the
bin range seen so far, counts as uint8/16 and no trailing zeros, so a state at rest is a
fraction of its pickle and packs and unpacks without pickle's per-object work.

Speed: ``score_batch`` bins every key's values in one vectorised numpy call, then runs the
sequential per-record loop per key on its state in place, so the per-call overhead of
numpy is paid once per batch rather than once per key. ``score`` and ``score_batch`` give
bit-identical results (the same float operations in the same order).
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from detectors.base import BaseDetector
from detectors.kernels import MAD_TO_SIGMA, MEANAD_TO_SIGMA, rolling_robust_z
from detectors.xp import asnumpy, get_xp

_SMALL = 16  # batches of at most this many values are binned with Python scalars
#: One key's work for ``EnsembleDetector._run``: state (updated in place), output positions,
#: value bins (-1: warm-up record), time-of-day buckets, rolling-MAD surprise (or None).
_Job = tuple[dict[str, Any], Sequence[int], list[int], list[int], list[float] | None]


def novelty_bins(
    xp: Any, values: Any, ts: Any, m0: Any, s0: Any, c: float, k_max: int, zdiv: float, n_tod: int
) -> tuple[Any, Any]:
    """Vectorised binning: (value bin in [0, 2 k_max], time-of-day bucket) per record
    (``m0``/``s0``: the reference scale, scalars or one per record).
    """
    z = (values - m0) / s0
    b = xp.clip(xp.rint(c * xp.arcsinh(z / zdiv)), -k_max, k_max).astype(xp.int64) + k_max
    tod = xp.floor(xp.remainder(ts, 86400.0) / (86400.0 / n_tod)).astype(xp.int64)
    return b, xp.clip(tod, 0, n_tod - 1)


def bins_py(
    x: list[float],
    ts: list[float],
    m0: list[float],
    s0: list[float],
    c: float,
    k_max: int,
    zdiv: float,
    n_tod: int,
) -> tuple[list[int], list[int]]:
    """``novelty_bins`` for a few values with scalar Python arithmetic (bit-identical: the same
    IEEE operations, numpy's ``arcsinh``, ``round`` rounds half to even like ``rint``).
    Raises ``ValueError``/``OverflowError`` for non-finite timestamps or scales.
    """
    a = np.arcsinh(
        np.array([(v - m) / s / zdiv for v, m, s in zip(x, m0, s0, strict=True)], dtype=np.float64)
    ).tolist()
    bins = [
        (k_max if y >= k_max else -k_max if y <= -k_max else round(y)) + k_max
        for y in (c * e for e in a)
    ]
    width, top = 86400.0 / n_tod, n_tod - 1
    tods = [min(max(math.floor(tv % 86400.0 / width), 0), top) for tv in ts]
    return bins, tods


def reference_scale(warm: np.ndarray) -> tuple[float, float]:
    """Median and robust sigma of the warm-up values (MAD, else mean abs. deviation)."""
    m0 = float(np.median(warm))
    d = np.abs(warm - m0)
    s0 = max(
        float(np.median(d)) * MAD_TO_SIGMA,
        float(np.mean(d)) * MEANAD_TO_SIGMA,
        1e-9 * max(1.0, abs(m0)),
    )
    return m0, s0


class EnsembleDetector(BaseDetector):
    """Novelty + regime surprise, self-calibrated per key, with alert suppression."""

    name: ClassVar[str] = "ensemble"
    defaults: ClassVar[dict[str, Any]] = {
        "warm": 100,  # values used to fix the reference median/scale (scored 0)
        "cal_warm": 100,  # further values only learned (scored 0) so calibration has data
        "bin_c": 2.0,  # bins per unit of asinh(z / zdiv)
        "bin_k": 40,  # bins on each side of the reference (2k+1 in all)
        "zdiv": 2.0,
        "n_tod": 24,  # time-of-day buckets the histogram is conditioned on
        "tod_prior": 5.0,  # pseudo-count pulling P(bin | tod) towards P(bin)
        "bin_prior": 0.5,  # pseudo-count per bin of the marginal histogram
        "dist_scale": 2.0,  # unseen bins d bins outside the seen range: prior * e^(-d/scale)
        "hist_cap": 5000,  # halve the value histograms when they hold more than this
        "regime_alpha": 0.1,  # EMA weight of the regime component
        "cal_step": 0.5,  # calibration histogram bin width (nats)
        "cal_bins": 48,
        "cal_prior": 1.0,
        "cal_cap": 0,  # halve calibration histograms above this count (0: never)
        "cal_extrapolate": True,  # beyond the largest surprise seen, add the excess
        "w_mad": 0.0,  # weight of the rolling median/MAD component (0: off)
        "mad_window": 256,
        "block": 20,  # suppression: block length (records)
        "suppress_blocks": 10,  # blocks a peak suppresses lower scores for (0: off)
        "suppressed_factor": 0.0,
        "score_scale": 10.0,
        "xp": "numpy",
    }

    def _configure(self) -> None:
        p = self.params
        self._xp = get_xp(p["xp"])
        self._nbins = 2 * int(p["bin_k"]) + 1
        if int(p["warm"]) < 2 or int(p["n_tod"]) < 1 or float(p["score_scale"]) <= 0:
            raise ValueError("ensemble: need warm >= 2, n_tod >= 1, score_scale > 0")
        if int(p["hist_cap"]) > 60000:
            raise ValueError("ensemble: hist_cap must stay below 60000 (uint16 counts)")
        self._seed: dict[str, Any] | None = None
        self._warm, self._mad, self._batch = int(p["warm"]), float(p["w_mad"]) > 0, self._xp is np
        self._bin_args = (float(p["bin_c"]), int(p["bin_k"]), float(p["zdiv"]), int(p["n_tod"]))
        n_tod, nb, cb = int(p["n_tod"]), self._nbins, int(p["cal_bins"])
        nblk = max(int(p["suppress_blocks"]), 1)
        # dtypes and shapes of a state's arrays (``pack_state`` packs states that match)
        self._sig = (
            _U16,
            (n_tod, nb),
            _I64,
            (n_tod,),
            _I64,
            (nb,),
            _F64,
            (cb,),
            _F64,
            (cb,),
            _F64,
            (nblk,),
            _F64,
            1,
        )

    def load_model(self, model: dict[str, Any]) -> None:
        """Params override defaults; an optional ``seed`` state warm-starts new keys."""
        super().load_model(model)
        seed = model.get("seed")
        self._seed = state_from_json(seed) if seed else None

    def init_state(self) -> dict[str, Any]:
        """A fresh state, or a copy of the seeded one when a model was loaded."""
        if self._seed is not None:
            return {
                k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._seed.items()
            }
        p = self.params
        nb, cb = self._nbins, int(p["cal_bins"])
        state: dict[str, Any] = {
            "n": 0,
            "warm": np.empty(0),
            "m0": 0.0,
            "s0": 1.0,
            "ct": np.zeros((int(p["n_tod"]), nb), dtype=np.uint16),
            "nt": np.zeros(int(p["n_tod"]), dtype=np.int64),
            "cm": np.zeros(nb, dtype=np.int64),
            "regime": 0.0,
            "lo": nb,
            "hi": -1,
            "umax_nov": 0.0,
            "umax_reg": 0.0,
            "cal_nov": np.zeros(cb),
            "cal_reg": np.zeros(cb),
            "blocks": np.full(max(int(p["suppress_blocks"]), 1), -np.inf),
            "cur_max": -np.inf,
        }
        if float(p["w_mad"]) > 0:
            state["mad_hist"] = np.empty(0)
            state["cal_mad"] = np.zeros(cb)
        return state

    def score(
        self, state: dict[str, Any], values: np.ndarray, timestamps: np.ndarray
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Score one key's records; see :meth:`Detector.score`."""
        st = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
        if self._batch:
            return st, self.score_batch([st], [values], [timestamps])[1][0]
        values = np.asarray(values, dtype=np.float64)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        ok = np.isfinite(values)
        out = [0.0] * values.shape[0]
        if ok.any():
            job = (st, np.flatnonzero(ok).tolist(), *self._prepare(st, values[ok], timestamps[ok]))
            self._run([job], out)
        return st, np.array(out, dtype=np.float64)

    def score_batch(
        self, states: list[Any | None], values: list[np.ndarray], timestamps: list[np.ndarray]
    ) -> tuple[list[Any], list[np.ndarray]]:
        """``score`` for many keys; the binning of every key that is past warm-up runs as
        one vectorised call, the per-record loop then runs per key on its state in place
        (the given states are consumed).
        """
        if not self._batch:
            return super().score_batch(states, values, timestamps)
        sts: list[dict[str, Any]] = [self.init_state() if s is None else s for s in states]
        if not sts:
            return sts, []
        lens = [len(v) for v in values]
        x = np.concatenate(values, dtype=np.float64)
        t = np.concatenate(timestamps, dtype=np.float64)
        if len(lens) != len(sts) or t.shape != x.shape:
            raise ValueError("score_batch: states, values and timestamps do not match")
        warm = self._warm
        fast = [False] * len(sts) if self._mad else [st["n"] >= warm for st in sts]
        ok = np.isfinite(x)
        sel = ok if all(fast) else ok & np.repeat(np.array(fast, dtype=bool), lens)
        nsel = int(np.count_nonzero(sel))
        allsel = nsel == x.shape[0]
        bins: list[int] = []
        tods: list[int] = []
        pos: Sequence[int] = range(x.shape[0])
        cnt: list[int] = lens
        if nsel:
            m0l, s0l = [st["m0"] for st in sts], [st["s0"] for st in sts]
            if not allsel:
                pos = np.flatnonzero(sel).tolist()
                csum = np.concatenate([[0], np.cumsum(sel)])
                ends = np.cumsum(lens)
                cnt = (csum[ends] - csum[ends - np.asarray(lens)]).tolist()
            binned = None
            if x.shape[0] <= _SMALL:  # few values: bin in Python (same result, less overhead)
                own = [i for i, k in enumerate(lens) for _ in range(k)]
                xl, tl = x.tolist(), t.tolist()
                try:
                    binned = bins_py(
                        [xl[q] for q in pos],
                        [tl[q] for q in pos],
                        [m0l[own[q]] for q in pos],
                        [s0l[own[q]] for q in pos],
                        *self._bin_args,
                    )
                except (ValueError, OverflowError):  # non-finite timestamps or scale
                    binned = None
            if binned is None:
                m0 = np.repeat(np.array(m0l, dtype=np.float64), lens)
                s0 = np.repeat(np.array(s0l, dtype=np.float64), lens)
                xs, ts = (x, t) if allsel else (x[sel], t[sel])
                if not allsel:
                    m0, s0 = m0[sel], s0[sel]
                b, td = novelty_bins(np, xs, ts, m0, s0, *self._bin_args)
                binned = b.tolist(), td.tolist()
            bins, tods = binned
        jobs: list[_Job] = []
        a = f = 0
        for i, st in enumerate(sts):
            k = lens[i]
            if fast[i]:
                kf = cnt[i]
                if kf:
                    jobs.append((st, pos[f : f + kf], bins[f : f + kf], tods[f : f + kf], None))
                    f += kf
            elif k:
                okk = ok[a : a + k]
                idx = np.flatnonzero(okk)
                if idx.size:
                    x_ok, t_ok = x[a : a + k][okk], t[a : a + k][okk]
                    jobs.append((st, (idx + a).tolist(), *self._prepare(st, x_ok, t_ok)))
            a += k
        out = [0.0] * x.shape[0]
        self._run(jobs, out)
        res = np.array(out, dtype=np.float64)
        outs: list[np.ndarray] = []
        a = 0
        for k in lens:
            outs.append(res[a : a + k])
            a += k
        return sts, outs

    def pack_state(self, state: Any) -> bytes:
        """A compact binary format (first byte 1); states it does not fit exactly
        (unexpected keys, types, dtypes or shapes) use the default pickle + zlib.
        """
        try:
            return _pack(state, self._sig)
        except (AttributeError, KeyError, OverflowError, TypeError, ValueError, struct.error):
            return super().pack_state(state)

    def unpack_state(self, data: bytes) -> Any:
        """Read the compact format, or the default pickle + zlib one."""
        return _unpack(data) if data[:1] == _TAG else super().unpack_state(data)

    def _prepare(
        self, st: dict[str, Any], x: np.ndarray, t: np.ndarray
    ) -> tuple[list[int], list[int], list[float] | None]:
        """Per-key preparation of finite values ``x``: warm-up collection (bin -1: learn
        nothing, score 0), bins and time-of-day buckets, rolling MAD surprise.
        """
        p, xp = self.params, self._xp
        n = x.shape[0]
        warm = self._warm
        # Warm-up: collect values until the reference scale is fixed.
        j = 0
        if st["n"] < warm:
            j = min(warm - st["n"], n)
            st["warm"] = np.concatenate([st["warm"], x[:j]])
            if st["warm"].shape[0] == warm:
                st["m0"], st["s0"] = reference_scale(st["warm"])
                st["warm"] = np.empty(0)
        bins, tods = [-1] * j, [0] * j
        if j < n:
            b, td = novelty_bins(
                xp, xp.asarray(x[j:]), xp.asarray(t[j:]), st["m0"], st["s0"], *self._bin_args
            )
            bins += asnumpy(b).tolist()
            tods += asnumpy(td).tolist()
        mad_u = None
        if self._mad:
            z, hist = rolling_robust_z(
                xp, xp.asarray(st["mad_hist"]), xp.asarray(x), int(p["mad_window"]), 16
            )
            st["mad_hist"] = asnumpy(hist)
            mad_u = np.log1p(np.abs(asnumpy(z))).tolist()
        return bins, tods, mad_u

    def _run(self, jobs: list[_Job], out: list[float]) -> None:
        """The sequential part, per key: histogram updates, calibration, suppression.
        Updates each job's state in place and writes its scores to ``out[idx[i]]``.
        """
        p = self.params
        nb = self._nbins
        tod_prior, bin_prior = float(p["tod_prior"]), float(p["bin_prior"])
        bin_norm = bin_prior * nb
        cap, alpha = int(p["hist_cap"]), float(p["regime_alpha"])
        step, ctop, cprior = float(p["cal_step"]), int(p["cal_bins"]) - 1, float(p["cal_prior"])
        cal_cap, w_mad = float(p["cal_cap"]), float(p["w_mad"])
        dist_scale, extrap = float(p["dist_scale"]), bool(p["cal_extrapolate"])
        block, nblk = int(p["block"]), int(p["suppress_blocks"])
        quiet = int(p["warm"]) + int(p["cal_warm"])
        factor, scale = float(p["suppressed_factor"]), float(p["score_scale"])
        exp, log = math.exp, math.log
        for st, idx, bins, tods, mad_u in jobs:
            ct, cm, nt = st["ct"], st["cm"], st["nt"]
            lo, hi = st["lo"], st["hi"]
            umax_nov, umax_reg = st["umax_nov"], st["umax_reg"]
            regime, cur_max, count = st["regime"], st["cur_max"], st["n"]
            # Python lists are faster than numpy for these small per-record reductions.
            nov_a, reg_a = st["cal_nov"], st["cal_reg"]
            cal_nov, cal_reg = nov_a.tolist(), reg_a.tolist()
            mad_a = st.get("cal_mad")
            cal_mad = mad_a.tolist() if mad_a is not None else None
            blocks = st["blocks"]
            bmax = max(blocks.tolist()) if nblk > 0 else 0.0
            total = int(cm.sum())
            cal_n = float(sum(cal_nov))
            halved = False
            bn = br = bm = 0
            k = len(bins)
            for q in range(k):
                b = bins[q]
                if b >= 0:
                    td = tods[q]
                    c, ntd, cmb = ct.item(td, b), nt.item(td), cm.item(b)
                    dist = lo - b if b < lo else (b - hi if b > hi else 0)
                    if hi < 0:
                        dist = 0
                    prior = bin_prior * exp(-dist / dist_scale) if dist > 0 else bin_prior
                    pm = (cmb + prior) / (total + bin_norm)
                    u = -log((c + tod_prior * pm) / (ntd + tod_prior))
                    ct[td, b] = c + 1  # < 2**16: hist_cap <= 60000
                    nt[td] = ntd + 1
                    cm[b] = cmb + 1
                    lo, hi = min(lo, b), max(hi, b)
                    total += 1
                    if total > cap:
                        ct >>= 1
                        cm[:] = ct.sum(axis=0)
                        nt[:] = ct.sum(axis=1)
                        total = int(cm.sum())
                else:
                    u = 0.0
                regime += alpha * (u - regime)
                # Calibrate: -log P(history >= current) per component, then learn it.
                bn = min(int(u / step), ctop)
                br = min(int(regime / step), ctop)
                denom = cal_n + cprior
                m_nov = -log((sum(cal_nov[bn:]) + cprior) / denom)
                m_reg = -log((sum(cal_reg[br:]) + cprior) / denom)
                if extrap:
                    m_nov += max(u - umax_nov, 0.0)
                    m_reg += max(regime - umax_reg, 0.0)
                    umax_nov, umax_reg = max(umax_nov, u), max(umax_reg, regime)
                m = max(m_nov, m_reg)
                cal_nov[bn] += 1.0
                cal_reg[br] += 1.0
                if cal_mad is not None and mad_u is not None:
                    bm = min(int(mad_u[q] / step), ctop)
                    m += w_mad * -log((sum(cal_mad[bm:]) + cprior) / denom)
                    cal_mad[bm] += 1.0
                cal_n += 1.0
                if cal_cap and cal_n > cal_cap:
                    cal_nov = [v * 0.5 for v in cal_nov]
                    cal_reg = [v * 0.5 for v in cal_reg]
                    if cal_mad is not None:
                        cal_mad = [v * 0.5 for v in cal_mad]
                    cal_n *= 0.5
                    halved = True
                # Suppression: sliding max over the previous blocks and the current block.
                if nblk > 0:
                    prev = max(bmax, cur_max)
                    cur_max = max(cur_max, m)
                    if m <= prev:
                        m *= factor
                    if (count + 1) % block == 0:
                        blocks[:-1] = blocks[1:]
                        blocks[-1] = cur_max
                        cur_max = -math.inf
                        bmax = max(blocks.tolist())
                out[idx[q]] = 1.0 - exp(-m / scale) if count >= quiet else 0.0
                count += 1
            st["regime"], st["cur_max"], st["n"] = regime, cur_max, count
            st["lo"], st["hi"], st["umax_nov"], st["umax_reg"] = lo, hi, umax_nov, umax_reg
            if k == 1 and not halved:  # write back only the touched calibration bins
                nov_a[bn], reg_a[br] = cal_nov[bn], cal_reg[br]
                if mad_a is not None and cal_mad is not None and mad_u is not None:
                    mad_a[bm] = cal_mad[bm]
            else:
                nov_a[:], reg_a[:] = cal_nov, cal_reg
                if mad_a is not None and cal_mad is not None:
                    mad_a[:] = cal_mad


def state_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """A JSON-serialisable copy of an ensemble state (for model seeds)."""
    out: dict[str, Any] = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            arr = np.where(np.isinf(v), -1e308, v) if v.dtype.kind == "f" else v
            out[k] = {"dtype": str(v.dtype), "shape": list(v.shape), "data": arr.ravel().tolist()}
        else:
            out[k] = -1e308 if isinstance(v, float) and math.isinf(v) else v
    return out


def state_from_json(obj: dict[str, Any]) -> dict[str, Any]:
    """Inverse of ``state_to_json``."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict) and "dtype" in v:
            arr = np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"])
            out[k] = np.where(arr <= -1e308, -np.inf, arr) if arr.dtype.kind == "f" else arr
        else:
            out[k] = -np.inf if isinstance(v, float) and v <= -1e308 else v
    return out


def fit_ensemble(
    values: np.ndarray, timestamps: np.ndarray | None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Learn a warm-start model from history: run the detector over ``values`` and export
    its final state as ``seed`` (reference scale, value and calibration histograms), so a
    new or rebuilt key starts as if it had streamed the history. JSON-serialisable.
    """
    det = EnsembleDetector(params)
    values = np.asarray(values, dtype=np.float64)
    if timestamps is None:
        timestamps = np.arange(values.shape[0], dtype=np.float64) * 300.0
    state, _ = det.score(det.init_state(), values, np.asarray(timestamps, dtype=np.float64))
    model = det.to_model()
    model["version"] = f"fit-{values.shape[0]}"
    model["seed"] = state_to_json(state)
    return model


# Packed state (little-endian): header, then the time-of-day histogram's columns [c0, c1)
# (uint8, or uint16 if flag 2), ``nt`` and ``cm[d0:d1]`` as uint16, the calibration
# histograms up to their last non-zero bin, ``blocks``, ``warm`` and ``mad_hist`` (flag 1,
# with ``cal_mad``) as float64. Unpacked float arrays (and ``nt``/``cm``) are views of one
# buffer each. The default format (zlib) starts with 0x78, so both stay readable.
_TAG = b"\x01"
_KEYS = (
    "n",
    "warm",
    "m0",
    "s0",
    "ct",
    "nt",
    "cm",
    "regime",
    "lo",
    "hi",
    "umax_nov",
    "umax_reg",
    "cal_nov",
    "cal_reg",
    "blocks",
    "cur_max",
)
_MAD_KEYS = (*_KEYS, "mad_hist", "cal_mad")
# tag, flags, n_tod, bins, cal bins, blocks, c0, c1, d0, d1, kept cal_nov/cal_reg/cal_mad
# prefixes, len(warm), len(mad_hist), n, lo, hi, m0, s0, regime, umax_nov, umax_reg, cur_max
_HEAD = struct.Struct("<BBHHHHHHHHHHHIIqhh6d")
_SCALARS = (int, int, int, float, float, float, float, float, float)
_U16, _I64, _F64 = np.dtype(np.uint16), np.dtype(np.int64), np.dtype(np.float64)
_LITTLE = sys.byteorder == "little"


def _pack(st: dict[str, Any], sig: tuple[Any, ...]) -> bytes:
    """Pack ``st`` if its arrays have the dtypes and shapes in ``sig``; raises otherwise."""
    keys = tuple(st)
    mad = keys == _MAD_KEYS
    if not (_LITTLE and (mad or keys == _KEYS)):
        raise ValueError("unexpected state layout")
    sc = (
        st["n"],
        st["lo"],
        st["hi"],
        st["m0"],
        st["s0"],
        st["regime"],
        st["umax_nov"],
        st["umax_reg"],
        st["cur_max"],
    )
    if tuple(map(type, sc)) != _SCALARS:
        raise TypeError("unexpected scalar types")
    ct, nt, cm, nov, reg = st["ct"], st["nt"], st["cm"], st["cal_nov"], st["cal_reg"]
    blk, warm = st["blocks"], st["warm"]
    if (
        ct.dtype,
        ct.shape,
        nt.dtype,
        nt.shape,
        cm.dtype,
        cm.shape,
        nov.dtype,
        nov.shape,
        reg.dtype,
        reg.shape,
        blk.dtype,
        blk.shape,
        warm.dtype,
        warm.ndim,
    ) != sig:
        raise TypeError("unexpected dtypes or shapes")
    (n_tod, nb), cb, nblk, nw = ct.shape, nov.shape[0], blk.shape[0], warm.shape[0]
    histb = madb = b""
    if mad:
        hist, cmad = st["mad_hist"], st["cal_mad"]
        if (hist.dtype, hist.ndim, cmad.dtype, cmad.shape) != (_F64, 1, _F64, (cb,)):
            raise TypeError("unexpected dtypes or shapes")
        histb, madb = hist.tobytes(), cmad.tobytes()
    lo, hi = st["lo"], st["hi"]
    c0, c1 = (lo, hi + 1) if 0 <= lo <= hi < nb else (0, 0)  # the bins seen so far
    d0, d1 = c0, c1
    sub = ct[:, c0:c1]
    if np.count_nonzero(sub) != np.count_nonzero(ct):
        c0, c1, sub = 0, nb, ct
    raw = sub.tobytes()
    wide = raw[1::2].count(0) != len(raw) >> 1  # some count >= 256
    cms = cm[d0:d1].tolist()
    if np.count_nonzero(cm) != len(cms) - cms.count(0):
        d0, d1, cms = 0, nb, cm.tolist()
    ints = struct.pack(f"<{n_tod + d1 - d0}H", *nt.tolist(), *cms)  # struct.error if > 65535
    novb, regb = nov.tobytes(), reg.tobytes()
    # float64 arrays without their trailing zero entries
    kn, kr = (len(novb.rstrip(b"\0")) + 7) >> 3, (len(regb.rstrip(b"\0")) + 7) >> 3
    km = (len(madb.rstrip(b"\0")) + 7) >> 3
    head = _HEAD.pack(
        1,
        mad | wide << 1,
        n_tod,
        nb,
        cb,
        nblk,
        c0,
        c1,
        d0,
        d1,
        kn,
        kr,
        km,
        nw,
        len(histb) >> 3,
        *sc,
    )
    return b"".join(
        (
            head,
            raw if wide else raw[::2],
            ints,
            novb[: 8 * kn],
            regb[: 8 * kr],
            blk.tobytes(),
            warm.tobytes(),
            histb,
            madb[: 8 * km],
        )
    )


def _unpack(data: bytes) -> dict[str, Any]:
    (
        _,
        flags,
        n_tod,
        nb,
        cb,
        nblk,
        c0,
        c1,
        d0,
        d1,
        kn,
        kr,
        km,
        nw,
        nh,
        n,
        lo,
        hi,
        m0,
        s0,
        regime,
        umax_nov,
        umax_reg,
        cur_max,
    ) = _HEAD.unpack_from(data)
    o = _HEAD.size
    ct = np.zeros((n_tod, nb), dtype=np.uint16)
    if c1 > c0:
        size, wide = n_tod * (c1 - c0), flags & 2
        ct[:, c0:c1] = np.frombuffer(data, _U16 if wide else np.uint8, size, o).reshape(
            n_tod, c1 - c0
        )
        o += 2 * size if wide else size
    a, b = o + 2 * n_tod, o + 2 * (n_tod + d1 - d0)
    iv = np.frombuffer(
        b"".join((data[o:a], bytes(2 * d0), data[a:b], bytes(2 * (nb - d1)))), _U16
    ).astype(np.int64)
    o = b
    mad = flags & 1
    a, b = o + 8 * kn, o + 8 * (kn + kr)
    c = b + 8 * (nblk + nw + nh)
    f = np.frombuffer(
        bytearray().join(
            (
                data[o:a],
                bytes(8 * (cb - kn)),
                data[a:b],
                bytes(8 * (cb - kr)),
                data[b:c],
                data[c : c + 8 * km],
                bytes(8 * (cb - km) if mad else 0),
            )
        ),
        np.float64,
    )
    blocks, warm = f[2 * cb : 2 * cb + nblk], f[2 * cb + nblk : 2 * cb + nblk + nw]
    st = {
        "n": n,
        "warm": warm,
        "m0": m0,
        "s0": s0,
        "ct": ct,
        "nt": iv[:n_tod],
        "cm": iv[n_tod:],
        "regime": regime,
        "lo": lo,
        "hi": hi,
        "umax_nov": umax_nov,
        "umax_reg": umax_reg,
        "cal_nov": f[:cb],
        "cal_reg": f[cb : 2 * cb],
        "blocks": blocks,
        "cur_max": cur_max,
    }
    if mad:
        e = 2 * cb + nblk + nw
        st["mad_hist"], st["cal_mad"] = f[e : e + nh], f[e + nh :]
    return st
