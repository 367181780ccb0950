"""The ensemble detector's state at rest: a compact binary format and a JSON form.

Packed (little-endian, format 2, first byte 2): a header of sizes and scalars, then the
time-of-day histogram's columns ``[c0, c1)`` (uint8, or uint16 if flag 2), ``nt`` and
``cm[d0:d1]`` as uint16, the calibration histograms up to their last non-zero bin,
``blocks``, ``warm`` and ``warm_t`` as float64. Unpacked float arrays (and ``nt``/``cm``)
are views of one buffer each.

Readable as well: format 1 (first byte 1, before the cadence, level and spread fields
and without the removed rolling-MAD component) and the default format (zlib, 0x78).
:func:`upgrade` fills the fields older states lack, so their keys resume scoring
(the scores differ from those of the release that wrote them).
"""

from __future__ import annotations

import math
import struct
import sys
from typing import Any

import numpy as np

TAG = b"\x02"
TAG_V1 = b"\x01"
KEYS = (
    "n",
    "warm",
    "warm_t",
    "m0",
    "s0",
    "step",
    "ct",
    "nt",
    "cm",
    "regime",
    "lvl",
    "dev",
    "lo",
    "hi",
    "umax_nov",
    "umax_reg",
    "cal_nov",
    "cal_reg",
    "blocks",
    "cur_max",
)
#: fields added by format 2, with the value an older state resumes with
_NEW = {"warm_t": None, "step": 0.0, "lvl": 0.0, "dev": 0.0}
# tag, flags, n_tod, bins, cal bins, blocks, c0, c1, d0, d1, kept cal_nov/cal_reg prefixes,
# len(warm), n, lo, hi, m0, s0, step, regime, lvl, dev, umax_nov, umax_reg, cur_max
_HEAD = struct.Struct("<BBHHHHHHHHHHIqhh9d")
_SCALARS = (int, int, int, float, float, float, float, float, float, float, float, float)
U16, I64, F64 = np.dtype(np.uint16), np.dtype(np.int64), np.dtype(np.float64)
_LITTLE = sys.byteorder == "little"


def upgrade(st: dict[str, Any]) -> dict[str, Any]:
    """A state in the current layout: older states gain the new fields (in place)."""
    if all(k in st for k in KEYS) and "mad_hist" not in st and "cal_mad" not in st:
        return st
    st.pop("mad_hist", None)
    st.pop("cal_mad", None)
    for k, v in _NEW.items():
        if k not in st:
            st[k] = np.empty(0) if v is None else v
    out = {k: st[k] for k in KEYS if k in st}
    out.update((k, v) for k, v in st.items() if k not in out)  # unknown keys stay
    return out


def signature(n_tod: int, nbins: int, cal_bins: int, blocks: int) -> tuple[Any, ...]:
    """The dtypes and shapes a state must have for :func:`pack`."""
    return (
        U16,
        (n_tod, nbins),
        I64,
        (n_tod,),
        I64,
        (nbins,),
        F64,
        (cal_bins,),
        F64,
        (cal_bins,),
        F64,
        (blocks,),
        F64,
        1,
        F64,
        1,
    )


def pack(st: dict[str, Any], sig: tuple[Any, ...]) -> bytes:
    """Pack ``st`` if its arrays have the dtypes and shapes in ``sig``; raises otherwise."""
    if not (_LITTLE and tuple(st) == KEYS):
        raise ValueError("unexpected state layout")
    sc = (
        st["n"],
        st["lo"],
        st["hi"],
        st["m0"],
        st["s0"],
        st["step"],
        st["regime"],
        st["lvl"],
        st["dev"],
        st["umax_nov"],
        st["umax_reg"],
        st["cur_max"],
    )
    if tuple(map(type, sc)) != _SCALARS:
        raise TypeError("unexpected scalar types")
    ct, nt, cm, nov, reg = st["ct"], st["nt"], st["cm"], st["cal_nov"], st["cal_reg"]
    blk, warm, warm_t = st["blocks"], st["warm"], st["warm_t"]
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
        warm_t.dtype,
        warm_t.ndim,
    ) != sig or warm_t.shape != warm.shape:
        raise TypeError("unexpected dtypes or shapes")
    (n_tod, nb), cb, nblk, nw = ct.shape, nov.shape[0], blk.shape[0], warm.shape[0]
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
    head = _HEAD.pack(2, wide << 1, n_tod, nb, cb, nblk, c0, c1, d0, d1, kn, kr, nw, *sc)
    return b"".join(
        (
            head,
            raw if wide else raw[::2],
            ints,
            novb[: 8 * kn],
            regb[: 8 * kr],
            blk.tobytes(),
            warm.tobytes(),
            warm_t.tobytes(),
        )
    )


def unpack(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack`; also reads format 1 (upgraded)."""
    if data[:1] == TAG_V1:
        return upgrade(_unpack_v1(data))
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
        nw,
        n,
        lo,
        hi,
        m0,
        s0,
        step,
        regime,
        lvl,
        dev,
        umax_nov,
        umax_reg,
        cur_max,
    ) = _HEAD.unpack_from(data)
    o = _HEAD.size
    ct, o = _read_ct(data, o, n_tod, nb, c0, c1, flags & 2)
    iv, o = _read_ints(data, o, n_tod, nb, d0, d1)
    a, b = o + 8 * kn, o + 8 * (kn + kr)
    c = b + 8 * (nblk + 2 * nw)
    f = np.frombuffer(
        bytearray().join(
            (data[o:a], bytes(8 * (cb - kn)), data[a:b], bytes(8 * (cb - kr)), data[b:c])
        ),
        np.float64,
    )
    e = 2 * cb + nblk
    return {
        "n": n,
        "warm": f[e : e + nw],
        "warm_t": f[e + nw : e + 2 * nw],
        "m0": m0,
        "s0": s0,
        "step": step,
        "ct": ct,
        "nt": iv[:n_tod],
        "cm": iv[n_tod:],
        "regime": regime,
        "lvl": lvl,
        "dev": dev,
        "lo": lo,
        "hi": hi,
        "umax_nov": umax_nov,
        "umax_reg": umax_reg,
        "cal_nov": f[:cb],
        "cal_reg": f[cb : 2 * cb],
        "blocks": f[2 * cb : e],
        "cur_max": cur_max,
    }


def _read_ct(
    data: bytes, o: int, n_tod: int, nb: int, c0: int, c1: int, wide: int
) -> tuple[np.ndarray, int]:
    ct = np.zeros((n_tod, nb), dtype=np.uint16)
    if c1 > c0:
        size = n_tod * (c1 - c0)
        ct[:, c0:c1] = np.frombuffer(data, U16 if wide else np.uint8, size, o).reshape(
            n_tod, c1 - c0
        )
        o += 2 * size if wide else size
    return ct, o


def _read_ints(
    data: bytes, o: int, n_tod: int, nb: int, d0: int, d1: int
) -> tuple[np.ndarray, int]:
    a, b = o + 2 * n_tod, o + 2 * (n_tod + d1 - d0)
    iv = np.frombuffer(
        b"".join((data[o:a], bytes(2 * d0), data[a:b], bytes(2 * (nb - d1)))), U16
    ).astype(np.int64)
    return iv, b


_HEAD_V1 = struct.Struct("<BBHHHHHHHHHHHIIqhh6d")


def _unpack_v1(data: bytes) -> dict[str, Any]:
    """Format 1, as the release before the cadence field wrote it."""
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
    ) = _HEAD_V1.unpack_from(data)
    o = _HEAD_V1.size
    ct, o = _read_ct(data, o, n_tod, nb, c0, c1, flags & 2)
    iv, o = _read_ints(data, o, n_tod, nb, d0, d1)
    a, b = o + 8 * kn, o + 8 * (kn + kr)
    c = b + 8 * (nblk + nw)
    f = np.frombuffer(
        bytearray().join(
            (data[o:a], bytes(8 * (cb - kn)), data[a:b], bytes(8 * (cb - kr)), data[b:c])
        ),
        np.float64,
    )
    return {
        "n": n,
        "warm": f[2 * cb + nblk :],
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
        "blocks": f[2 * cb : 2 * cb + nblk],
        "cur_max": cur_max,
    }


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
    """Inverse of ``state_to_json`` (older seeds are upgraded)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict) and "dtype" in v:
            arr = np.asarray(v["data"], dtype=v["dtype"]).reshape(v["shape"])
            out[k] = np.where(arr <= -1e308, -np.inf, arr) if arr.dtype.kind == "f" else arr
        else:
            out[k] = -np.inf if isinstance(v, float) and v <= -1e308 else v
    return upgrade(out)
