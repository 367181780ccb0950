"""History as columns for batch detection: sensor ids, event times (epoch ms), values.

Reads what ``control.history`` reads (Parquet, CSV, JSON lines: paths, globs,
``file://``; ``kafka://`` topics from start to their end offsets at the time of
reading) plus ``s3://bucket/key`` (Parquet or JSON lines, through pyarrow's S3
filesystem; ``AWS_ENDPOINT_URL`` for an S3-compatible store). Parquet is read as
columns, without a Python object per row.

Records are checked as the flow's decoder checks them, so batch detection sees the
readings the flow would: event time is an RFC 3339 string with an offset or an epoch
number read with the flow's ``AD_TIMESTAMP_UNIT`` and ``AD_EARLIEST_TIME``
(``schemas.timestamps``; vectorised for numeric Parquet columns), the value a finite
number, the sensor id a non-empty string. Records failing these are counted as bad and
dropped (the flow dead-letters them).
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from control.history import Fields, HistoryError, ReadStats, iter_records
from flows.decode import _TENANT_ID as tenant_ok  # the flow's own check of a tenant id
from flows.decode import BadRecord, parse_timestamp
from flows.records import KEY_SEP, sensor_key
from schemas.timestamps import EARLIEST_MS, LATEST_MS

__all__ = ["Readings", "default_tenant_of", "flow_decoder", "read_readings"]


@dataclass
class Readings:
    """Valid readings in input order, as columns; each reading's state key (the sensor
    id, or ``tenant<US>sensor`` as the flow keys state: ``flows.records.sensor_key``) as
    a code into ``names`` (sorted), so no string object exists per reading.
    """

    names: np.ndarray  # object: state keys, sorted, unique
    codes: np.ndarray  # int32 index into names
    ts: np.ndarray  # int64 epoch ms
    vals: np.ndarray  # float64, finite
    tenants: np.ndarray  # object: str | None
    stats: ReadStats = field(default_factory=ReadStats)
    #: int64 per reading: its index into ``raws`` (-1: read without its raw record)
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    #: the raw records read through the flow's own source and decoder (for dead letters)
    raws: list[Any] = field(default_factory=list)
    #: the flow's dead letters of records that failed to decode or validate, each with
    #: its position among the raw records: ``(position, (key, OutRecord))``
    dead: list[tuple[int, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ts)

    def select(self, mask: np.ndarray) -> Readings:
        """The readings where ``mask`` is true (raw records and dead letters shared)."""
        return Readings(
            self.names,
            self.codes[mask],
            self.ts[mask],
            self.vals[mask],
            self.tenants[mask],
            self.stats,
            self.rows[mask],
            self.raws,
            self.dead,
        )


class _Cols:
    """Column chunks as they are read; sensor ids interned into one dictionary."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.codes: list[np.ndarray] = []
        self.ts: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.tenants: list[Any] = []
        self.rows: list[np.ndarray] = []
        self.raws: list[Any] = []
        self.dead: list[tuple[int, Any]] = []

    def _push(self, codes: np.ndarray, ts: Any, vals: Any, tenants: Any, rows: Any = None) -> None:
        if rows is None:
            rows = np.full(len(codes), -1, dtype=np.int64)
        self.rows.append(np.asarray(rows, dtype=np.int64))
        self.codes.append(codes)
        self.ts.append(np.asarray(ts, dtype=np.int64))
        self.vals.append(np.asarray(vals, dtype=np.float64))
        self.tenants.append(np.asarray(tenants, dtype=object))

    def add_coded(
        self, names: list[str], codes: np.ndarray, ts: Any, vals: Any, tenants: Any
    ) -> None:
        """A chunk whose ids are ``names[codes]``."""
        index = self.index
        remap = np.fromiter(
            (index.setdefault(n, len(index)) for n in names), dtype=np.int32, count=len(names)
        )
        self._push(remap[codes], ts, vals, tenants)

    def add(self, sids: list[str], ts: Any, vals: Any, tenants: Any, rows: Any = None) -> None:
        index = self.index
        codes = np.fromiter(
            (index.setdefault(s, len(index)) for s in sids), dtype=np.int32, count=len(sids)
        )
        self._push(codes, ts, vals, tenants, rows)

    def done(self, stats: ReadStats) -> Readings:
        def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

        names = np.empty(len(self.index), dtype=object)
        names[:] = list(self.index)
        order = np.argsort(names, kind="stable")
        rank = np.empty(len(names), dtype=np.int32)
        rank[order] = np.arange(len(names), dtype=np.int32)
        codes = cat(self.codes, np.int32)
        return Readings(
            names[order],
            rank[codes],
            cat(self.ts, np.int64),
            cat(self.vals, np.float64),
            cat(self.tenants, object),
            stats,
            cat(self.rows, np.int64),
            self.raws,
            self.dead,
        )


def _s3_paths(url: str) -> tuple[Any, list[str]]:
    from pyarrow import fs

    s3, path = fs.FileSystem.from_uri(url)
    if any(c in path for c in "*?["):
        base = path.split("*")[0].split("?")[0].split("[")[0].rsplit("/", 1)[0]
        infos = s3.get_file_info(fs.FileSelector(base, recursive=True))
        paths = sorted(i.path for i in infos if i.is_file and fnmatch.fnmatch(i.path, path))
    else:
        paths = [path]
    if not paths:
        raise HistoryError(f"no objects match {url}; e.g. s3://bucket/history/*.parquet")
    return s3, paths


def _parquet(
    table: Any,
    f: Fields,
    cols: _Cols,
    stats: ReadStats,
    unit: str,
    earliest: int,
    default_tenant: str | None,
    dead: tuple[str, Any, str] | None = None,
) -> None:
    """Columns of a Parquet table, checked without a Python object per row where the
    types allow (string ids, integer-millisecond or timestamp times, numeric values).
    With ``dead`` = ``(origin, the flow's decoder, flow id)``, each refused row becomes
    a dead letter: the row as JSON, with the reason the flow's decoder gives it.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = set(table.column_names)
    missing = [c for c in (f.key, f.time, f.value) if c not in names]
    if missing:
        raise HistoryError(
            f"Parquet history lacks column(s) {missing}; give --key-field/--time-field/"
            "--value-field, e.g. --time-field ts"
        )
    n = table.num_rows
    stats.records += n
    sid = table.column(f.key)
    t = table.column(f.time)
    v = table.column(f.value)
    ok = np.ones(n, dtype=bool)
    if pa.types.is_dictionary(sid.type):  # e.g. a pandas categorical
        sid = pc.cast(sid, pa.string())
    if not pa.types.is_string(sid.type) and not pa.types.is_large_string(sid.type):
        stats.bad_records += n  # the flow needs a string id
        return
    ok &= pc.fill_null(pc.greater(pc.utf8_length(sid), 0), False).to_numpy(zero_copy_only=False)
    enc = pc.dictionary_encode(sid).combine_chunks()
    sid_names = enc.dictionary.to_pylist()
    sid_codes = pc.fill_null(enc.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    if sid_names:
        ok &= np.array([KEY_SEP not in s for s in sid_names])[sid_codes]
    if pa.types.is_timestamp(t.type):
        t_ms = pc.cast(pc.cast(t, pa.timestamp("ms")), pa.int64())
        tf = pc.fill_null(pc.cast(t_ms, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        ts_np = _in_range(tf, earliest)
    elif pa.types.is_integer(t.type) or pa.types.is_floating(t.type):
        tf = pc.fill_null(pc.cast(t, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
        ts_np = _in_range(_to_ms(tf, unit), earliest)
    else:  # text: the flow's parser, per row
        ts_np = np.fromiter(
            (_ts_or_bad(x, unit, earliest) for x in t.to_pylist()), dtype=np.int64, count=n
        )
    ok &= ts_np >= 0
    if not (pa.types.is_integer(v.type) or pa.types.is_floating(v.type)):
        stats.bad_records += n
        return
    vals = pc.cast(v, pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN
    ok &= np.isfinite(vals)
    # tenants: each distinct one checked as the flow checks it; none -> the default
    ten_names: list[str] = []
    ten_codes = np.full(n, -1, dtype=np.int64)
    if "tenant_id" in names:
        ten = table.column("tenant_id")
        if pa.types.is_dictionary(ten.type):
            ten = pc.cast(ten, pa.string())
        if not pa.types.is_string(ten.type) and not pa.types.is_large_string(ten.type):
            stats.bad_records += n  # the flow needs a string tenant id
            return
        tenc = pc.dictionary_encode(ten).combine_chunks()
        ten_names = tenc.dictionary.to_pylist()
        ten_codes = pc.fill_null(tenc.indices, -1).to_numpy(zero_copy_only=False)
        ten_codes = ten_codes.astype(np.int64)
    valid = np.array([bool(tenant_ok(x)) for x in ten_names] + [True])
    ok &= valid[ten_codes]
    stats.bad_records += int(n - ok.sum())
    if dead is not None and not ok.all():
        _dead_rows(table, np.flatnonzero(~ok), cols, *dead)
    if not sid_names or not ok.any():
        return
    ten_vals = [*ten_names, default_tenant]  # code -1: the default (or None)
    pair = (ten_codes[ok] + 1) * len(sid_names) + sid_codes[ok]
    uniq, inverse = np.unique(pair, return_inverse=True)
    keys = [
        sensor_key(sid_names[p % len(sid_names)], ten_vals[p // len(sid_names) - 1])
        for p in uniq.tolist()
    ]
    tenants = np.array(ten_vals, dtype=object)[ten_codes[ok]]
    cols.add_coded(keys, inverse.ravel(), ts_np[ok], vals[ok], tenants)


def _dead_rows(
    table: Any, bad: np.ndarray, cols: _Cols, origin: str, decoder: Any, flow_id: str
) -> None:
    """The flow's dead letters of Parquet rows ``bad``: each row as JSON (its bytes),
    ``origin`` as source, its 1-based row number as offset, the decoder's reason.
    """
    import orjson

    from connectors.base import RawRecord
    from flows.records import dead_letter

    for i, row in zip(bad.tolist(), table.take(bad).to_pylist(), strict=True):
        raw = RawRecord(orjson.dumps(row, default=str), origin, "0", str(i + 1))
        try:
            decoder.decode_one(raw)
            reason, error = "bad_type", "refused by the Parquet reader's checks"
        except BadRecord as exc:
            reason, error = exc.reason, str(exc)
        cols.dead.append((-1, dead_letter(raw, reason, error, flow_id)))


def _to_ms(numbers: np.ndarray, unit: str) -> np.ndarray:
    """``schemas.timestamps.to_millis`` over an array of numbers (before its range check):
    with unit ``auto``, the same magnitudes decide (``schemas.timestamps.unit_of``).
    """
    scale = {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 0.000001}
    if unit != "auto":
        return numbers * scale[unit]
    size = np.abs(numbers)
    with np.errstate(invalid="ignore"):
        factor = np.where(
            size < 1e11, 1000.0, np.where(size < 1e14, 1.0, np.where(size < 1e17, 0.001, 1e-6))
        )
    return numbers * factor


def _in_range(ms: np.ndarray, earliest: int) -> np.ndarray:
    """Rounded milliseconds where ``earliest <= ms < 2200``, else -1 (bad)."""
    with np.errstate(invalid="ignore"):
        good = (ms >= earliest) & (ms < LATEST_MS)
    return np.where(good, np.round(np.where(good, ms, 0.0)), -1).astype(np.int64)


def _ts_or_bad(x: Any, unit: str, earliest: int) -> int:
    try:
        return parse_timestamp(x, unit, earliest) if x is not None else -1
    except BadRecord:
        return -1


def _rows(
    records: Iterator[dict[str, Any]],
    f: Fields,
    cols: _Cols,
    stats: ReadStats,
    unit: str,
    earliest: int,
    default_tenant: str | None,
) -> None:
    """Rows (dicts) checked one by one, as the flow's decoder does."""
    sids: list[str] = []
    ts: list[int] = []
    vals: list[float] = []
    tenants: list[str | None] = []
    for rec in records:
        stats.records += 1
        sid, t, v = rec.get(f.key), rec.get(f.time), rec.get(f.value)
        ten = rec.get("tenant_id") or None
        try:
            if isinstance(v, str):  # CSV cells are text
                v = float(v)
            if isinstance(t, str) and t.strip().lstrip("-").isdigit():
                t = int(t)
            if (
                not isinstance(sid, str)
                or not sid
                or isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or KEY_SEP in sid
                or (ten is not None and not (isinstance(ten, str) and tenant_ok(ten)))
            ):
                raise BadRecord("bad_type", "")
            ms = parse_timestamp(t, unit, earliest)
        except (BadRecord, ValueError, OverflowError):
            stats.bad_records += 1
            continue
        ten = ten or default_tenant
        sids.append(sensor_key(sid, ten))
        ts.append(ms)
        vals.append(float(v))
        tenants.append(ten)
    cols.add(sids, ts, vals, tenants)


def default_tenant_of(tenant: str, registry: str) -> str:
    """The tenant of records without one, as the flow decides it: ``AD_DEFAULT_TENANT``
    (``tenant``), else the default tenant of the ``AD_TENANTS`` registry, else none.
    """
    if tenant or not registry:
        return tenant
    from state.tenants import load_registry

    return load_registry(registry).default_tenant or ""


def flow_decoder(settings: Any, fmt: str | None = None) -> Any:
    """The flow's own decoder for ``settings`` (as ``flows.detector`` builds it, with the
    tenant registry of ``AD_TENANTS``), in format ``fmt`` (default: the settings').
    """
    from flows.decode import decoder_for
    from state.tenants import load_registry

    registry = load_registry(settings.tenants) if settings.tenants else None
    return decoder_for(settings, registry, fmt)


def _flow_url(src: str) -> tuple[str, bool]:
    """The flow's source URL for a history source, and whether it is CSV."""
    if src.startswith("kafka://"):
        sep = "&" if "?" in src else "?"
        extra = [p for p in ("tail=false", "start=earliest") if p.split("=")[0] not in src]
        return (src + sep + "&".join(extra) if extra else src), False
    local = src[len("file://") :] if src.startswith("file://") else src
    csv = local.lower().removesuffix(".gz").endswith(".csv")
    return "file://" + os.path.abspath(local), csv


def _flow_records(src: str, settings: Any, cols: _Cols, stats: ReadStats) -> None:
    """Read ``src`` with the flow's own source connector and decoder: the readings, and
    the dead letters of records the flow would refuse (same bodies as the flow's).
    """
    import time

    from connectors import make_source
    from flows.records import Columns

    url, csv = _flow_url(src)
    ctx = settings.connector_context()
    fmt = "csv" if csv else settings.format
    if csv:
        ctx = replace(ctx, format="csv")
    try:
        source = make_source(url, ctx)
    except ValueError as exc:
        raise HistoryError(str(exc)) from None
    decoder = flow_decoder(settings, fmt)
    cache: dict[str, str] = {}
    stats.sources.append(src)
    for name in source.list_parts():
        part = source.build_part("adctl-detect", name, None)
        try:
            while True:
                try:
                    batches = part.next_batch()
                except StopIteration:
                    break
                if not batches:
                    time.sleep(0.02)
                    continue
                for batch in batches:
                    base = len(cols.raws)
                    stats.records += len(batch)
                    groups, bad = decoder.decode_grouped(batch, 1, cache)
                    stats.bad_records += len(bad)
                    cols.dead.extend((base, b) for b in bad)
                    for piece in groups.get("0", ()):
                        if type(piece) is not Columns:
                            stats.skipped_markers += 1  # a model switch: see --model
                            continue
                        rows = np.arange(len(cols.raws), len(cols.raws) + len(piece.raws))
                        cols.raws.extend(piece.raws)
                        cols.add(piece.sids, piece.ts, piece.vals, piece.tenants, rows)
        finally:
            part.close()


def read_readings(
    sources: list[str],
    *,
    fields: Fields | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    kafka_conf: dict[str, str] | None = None,
    timestamp_unit: str = "auto",
    earliest_ms: int = EARLIEST_MS,
    default_tenant: str = "",
    settings: Any = None,
) -> Readings:
    """Every valid reading of ``sources`` (in source order) within ``[since, until)``;
    timestamps read as the flow reads them with ``AD_TIMESTAMP_UNIT`` and
    ``AD_EARLIEST_TIME`` (``timestamp_unit``, ``earliest_ms``), readings without a tenant
    given ``AD_DEFAULT_TENANT`` (``default_tenant``).

    With the flow's ``settings`` (and the default field names), JSON-lines/CSV files
    and Kafka topics are read by the flow's own source connector and decoder: the
    readings are exactly the flow's, each keeps its raw record (``rows``/``raws``), and
    the records the flow would refuse are its dead letters (``dead``).
    """
    fields = fields or Fields()
    rules = (timestamp_unit, earliest_ms, default_tenant or None)
    stats = ReadStats()
    cols = _Cols()
    for src in sources:
        if src.startswith("s3://"):
            stats.sources.append(src)
            s3, paths = _s3_paths(src)
            for p in paths:
                if p.endswith(".parquet"):
                    import pyarrow.parquet as pq

                    _parquet(pq.read_table(p, filesystem=s3), fields, cols, stats, *rules)
                else:
                    with s3.open_input_stream(p) as fh:
                        data = fh.read().splitlines()
                    _rows(_json_lines(data, stats), fields, cols, stats, *rules)
            continue
        local = src[len("file://") :] if src.startswith("file://") else src
        paths = sorted(glob.glob(local)) if any(c in local for c in "*?[") else [local]
        if not src.startswith("kafka://") and all(p.endswith(".parquet") for p in paths):
            import pyarrow.parquet as pq

            stats.sources.append(src)
            for p in paths:
                if not Path(p).is_file():
                    raise HistoryError(f"history file not found: {p}")
                dead = None
                if settings is not None:
                    dead = (
                        f"parquet:{Path(p).name}",
                        flow_decoder(settings, "json"),
                        settings.flow_id,
                    )
                _parquet(pq.read_table(p), fields, cols, stats, *rules, dead=dead)
            continue
        if settings is not None and fields == Fields():
            _flow_records(src, settings, cols, stats)
            continue
        since = None if since_ms is None else since_ms / 1000.0
        _rows(
            iter_records([src], since=since, stats=stats, kafka_conf=kafka_conf),
            fields,
            cols,
            stats,
            *rules,
        )
    out = cols.done(stats)
    if since_ms is not None or until_ms is not None:
        keep = np.ones(len(out), dtype=bool)
        if since_ms is not None:
            keep &= out.ts >= since_ms
        if until_ms is not None:
            keep &= out.ts < until_ms
        stats.out_of_range += int(len(out) - keep.sum())
        out = out.select(keep)
    return out


def _json_lines(lines: list[bytes], stats: ReadStats) -> Iterator[dict[str, Any]]:
    import orjson

    for line in lines:
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            stats.bad_records += 1
            continue
        if isinstance(rec, dict):
            yield rec
        else:
            stats.bad_records += 1
