"""The default detector: calibrated novelty + regime-change ensemble with alert suppression.

Per record (all causal, one key):

1. **Novelty** (a seasonal, robust density model): the value is expressed as a robust
   z-score against a reference median/MAD learned from the first ``warm`` values, squashed
   with ``asinh`` (log resolution for spikes of any size, so the same bins serve any units
   and heavy-tailed counts) and binned. A decaying histogram of bins, conditioned on time
   of day (``n_tod`` buckets, shrunk towards the marginal histogram), gives
   ``u = -log P(bin | time of day)`` before the value is learned.
2. **Regime**: an exponential moving average of ``u`` (level shifts, density changes and
   other sustained novelty that single points do not show).
3. **Likelihood-style calibration**: each component's raw surprise is replaced by how
   rare that surprise level is *for this key*: ``-log P(past surprise >= current)`` from
   a histogram of its own history (an empirical version of Numenta's anomaly likelihood),
   plus the excess over the largest surprise seen so far. This puts every series on one
   scale, so one global threshold fits all keys.
4. **Cadence**: a key that reads more often than every ``ref_step`` seconds would see
   more rare-per-record events per day; its calibrated surprise is lowered by
   ``log(ref_step / step)`` (``step``: the median spacing of its warm-up readings), so
   alerts per day do not grow with the sampling rate.
5. **Combination and suppression** (the rest period of CAD OSE): ``m = max(novelty,
   regime)``. A record keeps its score only if it exceeds every calibrated score of the
   previous ``suppress_blocks`` blocks of ``block_s`` seconds (a sliding maximum, blocks
   counted in readings at the key's warm-up cadence); otherwise it scores 0 (one alert
   per episode, new peaks still alert). The rest period lasts the same time at any
   cadence, so slow keys (hourly, short series) are not silenced for days.
   Output ``score = 1 - exp(-m / score_scale)`` in [0, 1).

``explain`` says which component fired, the expected range of values at that time of
day and the kind of change (spike, level shift, variance change, broken pattern).

Per-key state (defaults): the time-of-day histogram as uint16 (24 x 81), the marginal and
per-bucket counts and two calibration histograms, plus scalars; about 6.2 KB pickled (a
warm-up buffer of values and timestamps exists only during the first ``warm`` values).
``pack_state`` (``detectors.ensemble_codec``) stores it in ~0.5-1.6 KB (only the bin range
seen so far, counts as uint8/16, no trailing zeros).

``score_batch`` bins every key's values in one vectorised numpy call, then runs the
sequential per-record loop per key on its state in place; it gives results bit-identical
to ``score`` (the same float operations in the same order).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from detectors import ensemble_codec as codec
from detectors.base import BaseDetector
from detectors.kernels import MAD_TO_SIGMA, MEANAD_TO_SIGMA
from detectors.xp import asnumpy, get_xp

_SMALL = 16  # batches of at most this many values are binned with Python scalars
#: One key's work for ``EnsembleDetector._run``: state (updated in place), output positions,
#: value bins (-1: warm-up record), time-of-day buckets.
_Job = tuple[dict[str, Any], Sequence[int], list[int], list[int]]


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
        # values that fix the reference median/scale (scored 0): ~8 h at 5-min readings,
        # 4 days hourly, so short series are scored soon
        "warm": 100,
        # further values only learned (scored 0), so the calibration has a tail to rank by
        "cal_warm": 100,
        # binning: bins per unit of asinh(z / zdiv), 2k+1 bins; ~0.5 sigma resolution near
        # the reference, log resolution beyond (scale-free for spikes of any size)
        "bin_c": 2.0,
        "bin_k": 40,
        "zdiv": 2.0,
        "n_tod": 24,  # time-of-day buckets (hourly: the daily cycle of most metrics)
        # tuned by benchmarks/nab/grid.json under the CV protocol (benchmarks/nab/README.md):
        "tod_prior": 2.0,  # pseudo-count pulling P(bin | tod) towards P(bin): young buckets
        "dist_scale": 6.0,  # unseen bins d bins outside the seen range: prior * e^(-d/scale)
        "bin_prior": 0.5,  # pseudo-count per bin of the marginal histogram
        "hist_cap": 5000,  # halve the value histograms above this count (forget slowly)
        "regime_alpha": 0.1,  # EMA weight of the regime component (~10 records of memory)
        "cal_step": 0.5,  # calibration histogram bin width (nats)
        "cal_bins": 48,  # 24 nats of range; the excess beyond is added exactly
        "cal_prior": 1.0,  # pseudo-count: never more certain than 1 / (n + 1)
        # members (ablation: each must earn its place under CV; benchmarks/nab/README.md)
        "members": "novelty+regime",
        "ref_step": 300.0,  # seconds: faster readings do not raise alerts per day (0: off)
        # rest period after an alert, in time (the same hours at any cadence): blocks of
        # block_s seconds (in readings at the key's warm-up cadence, at least one); a peak
        # suppresses lower scores for suppress_blocks blocks (0: off); 16.7 h in all
        "block_s": 6000.0,
        "suppress_blocks": 10,
        "score_scale": 10.0,  # nats of calibrated surprise at which the score is 1 - 1/e
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
        members = str(p["members"]).split("+")
        if not members or set(members) - {"novelty", "regime"}:
            raise ValueError("ensemble: members is novelty+regime, novelty or regime")
        self._members = ("novelty" in members, "regime" in members)
        self._seed: dict[str, Any] | None = None
        self._warm, self._batch = int(p["warm"]), self._xp is np
        self._bin_args = (float(p["bin_c"]), int(p["bin_k"]), float(p["zdiv"]), int(p["n_tod"]))
        n_tod, nb, cb = int(p["n_tod"]), self._nbins, int(p["cal_bins"])
        nblk = max(int(p["suppress_blocks"]), 1)
        # dtypes and shapes of a state's arrays (``pack_state`` packs states that match)
        self._sig = codec.signature(n_tod, nb, cb, nblk)

    def load_model(self, model: dict[str, Any]) -> None:
        """Params override defaults; an optional ``seed`` state warm-starts new keys."""
        super().load_model(model)
        seed = model.get("seed")
        self._seed = codec.state_from_json(seed) if seed else None

    def init_state(self) -> dict[str, Any]:
        """A fresh per-key state (from the trained seed, if any)."""
        if self._seed is not None:
            return {
                k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self._seed.items()
            }
        p = self.params
        nb, cb = self._nbins, int(p["cal_bins"])
        return {
            "n": 0,
            "warm": np.empty(0),
            "warm_t": np.empty(0),
            "m0": 0.0,
            "s0": 1.0,
            "step": 0.0,
            "ct": np.zeros((int(p["n_tod"]), nb), dtype=np.uint16),
            "nt": np.zeros(int(p["n_tod"]), dtype=np.int64),
            "cm": np.zeros(nb, dtype=np.int64),
            "regime": 0.0,
            "lvl": 0.0,
            "dev": 0.0,
            "lo": nb,
            "hi": -1,
            "umax_nov": 0.0,
            "umax_reg": 0.0,
            "cal_nov": np.zeros(cb),
            "cal_reg": np.zeros(cb),
            "blocks": np.full(max(int(p["suppress_blocks"]), 1), -np.inf),
            "cur_max": -np.inf,
        }

    def score(
        self, state: dict[str, Any], values: np.ndarray, timestamps: np.ndarray
    ) -> tuple[dict[str, Any], np.ndarray]:
        """Score one key's values in order (see ``detectors.base.Detector``)."""
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
        fast = [st["n"] >= warm for st in sts]
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
                    jobs.append((st, pos[f : f + kf], bins[f : f + kf], tods[f : f + kf]))
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
        """The compact format of ``ensemble_codec`` (first byte 2, ~0.5-1.6 KB); states it
        does not fit exactly (unexpected keys, types, dtypes or shapes) use the default
        pickle + zlib.
        """
        try:
            return codec.pack(state, self._sig)
        except (AttributeError, KeyError, OverflowError, TypeError, ValueError, struct.error):
            return super().pack_state(state)

    def unpack_state(self, data: bytes) -> Any:
        """Reads the compact formats 2 and 1 and the default one; older states are
        upgraded to the current fields.
        """
        if data[:1] in (codec.TAG, codec.TAG_V1):
            return codec.unpack(data)
        st = super().unpack_state(data)
        return codec.upgrade(st) if isinstance(st, dict) else st

    def explain(self, state: dict[str, Any], value: float, ts: float) -> dict[str, Any]:
        """Component: ``novelty`` or ``regime``, whichever calibrated surprise is larger
        for ``value`` (with its own count taken out of the state). Expected: the values
        holding the central 98% of P(bin | time of day). Reason, for novelty: ``spike`` (a
        value outside the expected range and outside every value seen), else ``pattern``
        (rare at this time of day); for regime: ``level_shift`` (the recent level is
        unusual now and outside the range usual at any time of day), ``pattern`` (unusual
        now but usual at other times), ``variance_change`` (recent spread under half or
        over twice the usual), else ``pattern``.
        """
        p = self.params
        if state["n"] < self._warm or not math.isfinite(value) or not math.isfinite(ts):
            return {"component": "warm-up", "expected": None, "reason": None}
        c, k_max, zdiv, n_tod = self._bin_args
        b_arr, td_arr = novelty_bins(
            np, np.array([value]), np.array([ts]), state["m0"], state["s0"], *self._bin_args
        )
        b, td = int(b_arr[0]), int(td_arr[0])
        ct = state["ct"][td].astype(np.float64)
        cm = state["cm"].astype(np.float64)
        nt = float(state["nt"][td])
        if ct[b] > 0 and cm[b] > 0:  # take the value's own count out again
            ct[b], cm[b], nt = ct[b] - 1, cm[b] - 1, nt - 1
        lo_seen, hi_seen = (
            (int(np.flatnonzero(cm)[0]), int(np.flatnonzero(cm)[-1])) if cm.any() else (b, b)
        )
        idx = np.arange(self._nbins)
        dist = np.maximum(np.maximum(lo_seen - idx, idx - hi_seen), 0)
        prior = float(p["bin_prior"]) * np.exp(-dist / float(p["dist_scale"]))
        pm = (cm + prior) / (cm.sum() + float(p["bin_prior"]) * self._nbins)
        tod_prior = float(p["tod_prior"])
        pt = (ct + tod_prior * pm) / (nt + tod_prior)
        u = -math.log(pt[b])
        # this time of day's own histogram once it holds enough values, else the model's mix
        w_td = ct if nt >= EXPLAIN_MIN_COUNT else pt
        cdf = np.cumsum(w_td / w_td.sum())
        b_lo = int(np.searchsorted(cdf, 0.01))
        b_hi = min(int(np.searchsorted(cdf, 0.99)), self._nbins - 1)

        def to_value(bin_edge: float) -> float:
            z = zdiv * math.sinh((bin_edge - k_max) / c)
            return float(state["m0"] + state["s0"] * z)

        expected = [to_value(b_lo - 0.5), to_value(b_hi + 0.5)]
        # calibrated levels of both components, from the key's own history
        step, cprior = float(p["cal_step"]), float(p["cal_prior"])
        ctop = int(p["cal_bins"]) - 1
        nov, reg = state["cal_nov"], state["cal_reg"]
        denom = float(nov.sum()) + cprior
        m_nov = -math.log((float(nov[min(int(u / step), ctop) :].sum()) + cprior) / denom)
        m_nov += max(u - state["umax_nov"], 0.0)
        regime = float(state["regime"])
        m_reg = -math.log((float(reg[min(int(regime / step), ctop) :].sum()) + cprior) / denom)
        # this time of day's usual level and spread (bins), and the range usual at any time
        w = w_td / w_td.sum()
        centre = float((w * idx).sum())
        usual = max(float((w * np.abs(idx - centre)).sum()), 0.5)
        cdf_all = np.cumsum(cm / cm.sum()) if cm.any() else cdf
        a_lo, a_hi = int(np.searchsorted(cdf_all, 0.01)), int(np.searchsorted(cdf_all, 0.99))
        lvl, dev = float(state["lvl"]) + k_max, float(state["dev"])
        outside = b < b_lo or b > b_hi
        use_nov, use_reg = self._members
        if (m_nov >= m_reg or not use_reg) and use_nov:
            component = "novelty"
            reason = "spike" if outside and (b < lo_seen or b > hi_seen) else "pattern"
        else:
            component = "regime"
            if abs(lvl - centre) > max(2.0 * usual, 1.0):  # recent level unusual now
                reason = "pattern" if a_lo - 0.5 <= lvl <= a_hi + 0.5 else "level_shift"
            elif not 0.5 * usual <= dev <= 2.0 * usual:
                reason = "variance_change"
            else:
                reason = "pattern"
        return {"component": component, "expected": expected, "reason": reason}

    def _prepare(
        self, st: dict[str, Any], x: np.ndarray, t: np.ndarray
    ) -> tuple[list[int], list[int]]:
        """Per-key preparation of finite values ``x``: warm-up collection (bin -1: learn
        nothing, score 0), then bins and time-of-day buckets.
        """
        xp = self._xp
        n = x.shape[0]
        warm = self._warm
        # Warm-up: collect values until the reference scale and cadence are fixed.
        j = 0
        if st["n"] < warm:
            j = min(warm - st["n"], n)
            st["warm"] = np.concatenate([st["warm"], x[:j]])
            st["warm_t"] = np.concatenate([st["warm_t"], t[:j]])
            if st["warm"].shape[0] == warm:
                st["m0"], st["s0"] = reference_scale(st["warm"])
                st["step"] = median_step(st["warm_t"])
                st["warm"], st["warm_t"] = np.empty(0), np.empty(0)
        bins, tods = [-1] * j, [0] * j
        if j < n:
            b, td = novelty_bins(
                xp, xp.asarray(x[j:]), xp.asarray(t[j:]), st["m0"], st["s0"], *self._bin_args
            )
            bins += asnumpy(b).tolist()
            tods += asnumpy(td).tolist()
        return bins, tods

    def _run(self, jobs: list[_Job], out: list[float]) -> None:
        """The sequential part, per key: histogram updates, calibration, suppression.
        Updates each job's state in place and writes its scores to ``out[idx[i]]``.
        """
        p = self.params
        nb, k_max = self._nbins, int(p["bin_k"])
        tod_prior, bin_prior = float(p["tod_prior"]), float(p["bin_prior"])
        bin_norm = bin_prior * nb
        cap, alpha = int(p["hist_cap"]), float(p["regime_alpha"])
        step, ctop, cprior = float(p["cal_step"]), int(p["cal_bins"]) - 1, float(p["cal_prior"])
        dist_scale = float(p["dist_scale"])
        block_s, nblk = float(p["block_s"]), int(p["suppress_blocks"])
        ref_step = float(p["ref_step"])
        use_nov, use_reg = self._members
        quiet = int(p["warm"]) + int(p["cal_warm"])
        scale = float(p["score_scale"])
        exp, log = math.exp, math.log
        for st, idx, bins, tods in jobs:
            ct, cm, nt = st["ct"], st["cm"], st["nt"]
            lo, hi = st["lo"], st["hi"]
            umax_nov, umax_reg = st["umax_nov"], st["umax_reg"]
            regime, cur_max, count = st["regime"], st["cur_max"], st["n"]
            lvl, dev = st["lvl"], st["dev"]
            # the key's cadence (unknown before warm-up ends, or in older states: ref_step)
            kstep = st["step"] if st["step"] > 0.0 else (ref_step if ref_step > 0.0 else 300.0)
            shift = max(log(ref_step / kstep), 0.0) if ref_step > 0.0 else 0.0
            block = max(int(round(block_s / kstep)), 1)
            # Python lists are faster than numpy for these small per-record reductions.
            nov_a, reg_a = st["cal_nov"], st["cal_reg"]
            cal_nov, cal_reg = nov_a.tolist(), reg_a.tolist()
            blocks = st["blocks"]
            bmax = max(blocks.tolist()) if nblk > 0 else 0.0
            total = int(cm.sum())
            cal_n = float(sum(cal_nov))
            bn = br = 0
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
                    # recent level and spread in bin units (for explanations)
                    lvl += alpha * (b - k_max - lvl)
                    dev += alpha * (abs(b - k_max - lvl) - dev)
                else:
                    u = 0.0
                regime += alpha * (u - regime)
                # Calibrate: -log P(history >= current) per component, then learn it;
                # beyond the largest surprise seen, the excess is added in full.
                bn = min(int(u / step), ctop)
                br = min(int(regime / step), ctop)
                denom = cal_n + cprior
                m_nov = -log((sum(cal_nov[bn:]) + cprior) / denom) + max(u - umax_nov, 0.0)
                m_reg = -log((sum(cal_reg[br:]) + cprior) / denom) + max(regime - umax_reg, 0.0)
                umax_nov, umax_reg = max(umax_nov, u), max(umax_reg, regime)
                m = max(m_nov if use_nov else 0.0, m_reg if use_reg else 0.0)
                cal_nov[bn] += 1.0
                cal_reg[br] += 1.0
                cal_n += 1.0
                # Suppression: sliding max over the previous blocks and the current block.
                if nblk > 0 and count >= quiet:  # scored records only
                    prev = max(bmax, cur_max)
                    cur_max = max(cur_max, m)
                    if m <= prev:
                        m = 0.0
                    if (count + 1) % block == 0:
                        blocks[:-1] = blocks[1:]
                        blocks[-1] = cur_max
                        cur_max = -math.inf
                        bmax = max(blocks.tolist())
                m -= shift
                out[idx[q]] = 1.0 - exp(-m / scale) if count >= quiet and m > 0.0 else 0.0
                count += 1
            st["regime"], st["cur_max"], st["n"] = regime, cur_max, count
            st["lo"], st["hi"], st["umax_nov"], st["umax_reg"] = lo, hi, umax_nov, umax_reg
            st["lvl"], st["dev"] = lvl, dev
            if k == 1:  # write back only the touched calibration bins
                nov_a[bn], reg_a[br] = cal_nov[bn], cal_reg[br]
            else:
                nov_a[:], reg_a[:] = cal_nov, cal_reg


EXPLAIN_MIN_COUNT = 20  # values a time-of-day bucket needs before its own range is shown


def median_step(ts: np.ndarray) -> float:
    """The median positive spacing of ``ts`` in seconds (0.0: none)."""
    d = np.diff(ts)
    d = d[np.isfinite(d) & (d > 0)]
    return float(np.median(d)) if d.size else 0.0


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
    model["seed"] = codec.state_to_json(state)
    return model
