"""Decode and validate a batch of raw records (JSON, Avro, Protobuf, CSV).

``Decoder.decode_batch`` turns a list of :class:`RawRecord` into valid
:class:`Reading` objects, :class:`Control` markers, and dead letters with a reason.
It never raises on data.
"""

from __future__ import annotations

import csv as _csv
import io
import json
import math
import re
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec
import orjson

from connectors.base import MessageBatch, OutRecord, RawRecord, as_raw
from flows.records import KEY_SEP, Columns, Control, Reading, SubBatch, dead_letter, key_group
from schemas import AVRO_IDS, DEFAULT_AVRO, DEFAULT_PROTO, HERE
from schemas.markers import MARKER_PREFIX, MarkerInvalid, decode_marker
from schemas.timestamps import EARLIEST_MS, LATEST_MS, TimestampError, to_millis

__all__ = ["Decoder", "CONTROL_PREFIX", "decoder_for", "parse_timestamp"]

#: Input values starting with these bytes are control markers (schemas.markers).
CONTROL_PREFIX = MARKER_PREFIX
_STD_FIELDS = ("sensor_id", "timestamp", "value", "tenant_id")
#: a tenant id: what tenant registries accept, and safe in key names and sink URLs
_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}").fullmatch


class _Std(msgspec.Struct, forbid_unknown_fields=True):
    """The common JSON record, decoded and type-checked in C (the fast path)."""

    sensor_id: str
    timestamp: int
    value: float
    tenant_id: str | None = None


def _unicode_ok(text: str) -> bool:
    """False for strings with lone surrogates (from JSON escapes): not encodable."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class RegistryUnavailable(RuntimeError):
    """The schema registry cannot be reached: the flow stops (a restart resumes) rather
    than dead-letter records that are probably good.
    """


class BadRecord(Exception):
    """A record that goes to the dead-letter sink with ``reason``.

    Args:
        reason: the dead-letter reason (``undecodable``, ``missing_field``, …).
        error: what is wrong, for the dead letter's ``error``.
    """

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason


def parse_timestamp(ts: Any, unit: str = "auto", earliest: int = EARLIEST_MS) -> int:
    """Epoch milliseconds of a record's timestamp (``schemas.timestamps``); a bad one
    raises :class:`BadRecord` with its reason.
    """
    try:
        return to_millis(ts, unit, earliest)
    except TimestampError as exc:
        raise BadRecord(exc.reason, str(exc)) from None


def _validate(
    obj: Any, raw: RawRecord, unit: str = "ms", earliest: int = 0, lo: int = 0, hi: int = 0
) -> Reading:
    """Check a decoded mapping and build a Reading."""
    if type(obj) is dict:
        # fast path, the common record: exact types, no extra fields (same result as below)
        sensor = obj.get("sensor_id")
        ts = obj.get("timestamp")
        value = obj.get("value")
        n = len(obj)
        if (
            type(sensor) is str
            and sensor
            and type(ts) is int
            and type(value) is float
            and lo <= ts < hi
            and math.isfinite(value)
            and sensor.isascii()
            and KEY_SEP not in sensor
        ):
            if n == 3:
                return Reading(sensor, ts, value, None, None, raw)
            if n == 4:
                tenant = obj.get("tenant_id")
                if type(tenant) is str and _TENANT_ID(tenant):
                    return Reading(sensor, ts, value, tenant, None, raw)
    if not isinstance(obj, dict):
        raise BadRecord("schema_mismatch", f"expected an object, got {type(obj).__name__}")
    sensor = obj.get("sensor_id")
    ts = obj.get("timestamp")
    value = obj.get("value")
    for name, v in (("sensor_id", sensor), ("timestamp", ts), ("value", value)):
        if v is None:
            raise BadRecord("missing_field", f"missing required field {name!r}")
    if not isinstance(sensor, str) or not sensor:
        raise BadRecord("bad_type", "sensor_id must be a non-empty string")
    if not _unicode_ok(sensor):
        raise BadRecord("bad_type", "sensor_id is not valid Unicode (lone surrogate)")
    if KEY_SEP in sensor:
        raise BadRecord("bad_type", "sensor_id contains the control character U+001F")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRecord("bad_type", f"value must be a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise BadRecord("non_finite", "value is too large for a float") from None
    if not math.isfinite(value):
        raise BadRecord("non_finite", f"value is {value}")
    tenant = obj.get("tenant_id")
    if tenant is not None and not isinstance(tenant, str):
        raise BadRecord("bad_type", "tenant_id must be a string")
    if tenant is not None and not _TENANT_ID(tenant):
        raise BadRecord(
            "bad_type",
            f"tenant_id {tenant[:70]!r} is not a tenant id: 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit (e.g. acme)",
        )
    extra: dict[str, float] | None = None
    if len(obj) > 3 and (len(obj) > 4 or "tenant_id" not in obj):  # not just the std fields
        extra = obj.get("extra") if isinstance(obj.get("extra"), dict) else None
        for k, v in obj.items():
            if (
                k not in _STD_FIELDS
                and k != "extra"
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            ):
                extra = dict(extra or {})
                extra[k] = float(v)
    return Reading(sensor, parse_timestamp(ts, unit, earliest), value, tenant, extra or None, raw)


def _json_loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # orjson rejects NaN / Infinity / 1e999; the stdlib reads them, so they end as
        # "non_finite" rather than "undecodable" (slow path, bad records only)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise BadRecord("undecodable", f"invalid JSON: {exc}") from None


class _Avro:
    """Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body."""

    def __init__(self, reader_schema: str, registry: str) -> None:
        import fastavro

        self._fastavro: Any = fastavro  # schemaless_reader's result: a dict for a record
        self._reader = fastavro.parse_schema(_load_json(reader_schema or DEFAULT_AVRO))
        self._registry = registry.rstrip("/")
        self._writers: dict[int, Any] = {}

    def _writer(self, schema_id: int) -> Any:
        if schema_id not in self._writers:
            if self._registry:
                schema = self._fetch(schema_id)
            elif schema_id in AVRO_IDS:
                schema = _load_json(AVRO_IDS[schema_id])
            else:
                raise BadRecord("schema_mismatch", f"unknown Avro schema id {schema_id}")
            self._writers[schema_id] = self._fastavro.parse_schema(schema)
        return self._writers[schema_id]

    def _fetch(self, schema_id: int) -> Any:
        """Writer schema from the registry; 404 is bad data, other failures retry."""
        url = f"{self._registry}/schemas/ids/{schema_id}"
        for attempt in range(5):
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - the configured registry URL
                    return json.loads(json.loads(resp.read())["schema"])
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise BadRecord(
                        "schema_mismatch", f"schema id {schema_id} not in the registry"
                    ) from None
                err: Exception = exc
            except (OSError, ValueError, KeyError) as exc:
                err = exc
            time.sleep(0.2 * 2**attempt)
        # the registry is down: stop rather than dead-letter good data; a restart resumes
        raise RegistryUnavailable(f"schema registry {url} unavailable: {err}")

    def __call__(self, data: bytes) -> Any:
        if len(data) < 5 or data[0] != 0:
            raise BadRecord("undecodable", "not Confluent Avro wire format (magic byte 0)")
        (schema_id,) = struct.unpack(">I", data[1:5])
        writer = self._writer(schema_id)
        try:
            obj = self._fastavro.schemaless_reader(io.BytesIO(data[5:]), writer, self._reader)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad bytes
            raise BadRecord("schema_mismatch", f"Avro decode failed: {exc}") from None
        extra = obj.get("extra")
        if extra:
            obj = {**obj, **{k: v for k, v in extra.items() if k not in _STD_FIELDS}}
        obj.pop("extra", None)
        return obj


class _Protobuf:
    """Protobuf ``SensorReading`` (schemas/sensor_reading_v*.proto)."""

    def __init__(self, schema: str) -> None:
        from google.protobuf.message import DecodeError

        name = Path(schema or DEFAULT_PROTO).stem
        try:
            module = __import__(f"schemas.{name}_pb2", fromlist=["SensorReading"])
        except ImportError as exc:
            raise ValueError(f"no compiled Protobuf module for {schema!r}: {exc}") from exc
        self._cls = module.SensorReading
        self._error = DecodeError

    def __call__(self, data: bytes) -> Any:
        msg = self._cls()
        try:
            msg.ParseFromString(data)
        except (self._error, RuntimeWarning) as exc:
            raise BadRecord("undecodable", f"Protobuf decode failed: {exc}") from None
        which = msg.WhichOneof("time")
        obj: dict[str, Any] = {
            "sensor_id": msg.sensor_id or None,
            "timestamp": getattr(msg, which) if which else None,
            "value": msg.value if msg.HasField("value") else None,
            "tenant_id": msg.tenant_id if msg.HasField("tenant_id") else None,
        }
        for k, v in msg.extra.items():
            obj.setdefault(k, v)
        return obj


class _Csv:
    """CSV rows: the header comes with each record (a file's first line, as the file
    source passes it) or from ``columns``; ``mapping`` renames the standard fields
    (``{"timestamp": "ts"}``). Without a sensor column the sensor id is the file's name
    (without extensions). Times without a UTC offset are UTC.
    """

    def __init__(self, mapping: dict[str, str], columns: str | None) -> None:
        self._names = {f: mapping.get(f, f) for f in _STD_FIELDS}
        self._columns = columns.encode() if columns else None
        self._headers: dict[bytes, tuple[list[str], dict[str, int]]] = {}

    def _header(self, line: bytes) -> tuple[list[str], dict[str, int]]:
        got = self._headers.get(line)
        if got is None:
            names = [c.strip() for c in next(_csv.reader([line.decode("utf-8-sig")]))]
            where = {f: names.index(c) for f, c in self._names.items() if c in names}
            if "timestamp" not in where or "value" not in where:
                raise BadRecord(
                    "schema_mismatch",
                    f"CSV header {line[:120]!r} lacks {self._names['timestamp']!r} or "
                    f"{self._names['value']!r}; map columns with "
                    "?timestamp=<column>&value=<column>&sensor_id=<column>",
                )
            got = self._headers[line] = (names, where)
            if len(self._headers) > 1000:
                self._headers.clear()
        return got

    def __call__(self, raw: RawRecord) -> dict[str, Any]:
        header = self._columns or raw.key
        if not header:
            raise BadRecord("schema_mismatch", "CSV record without a header (give ?columns=a,b,c)")
        names, where = self._header(header)
        row = next(_csv.reader([raw.value.decode("utf-8")]))
        if len(row) != len(names):
            raise BadRecord(
                "schema_mismatch", f"CSV row has {len(row)} fields, the header {len(names)}"
            )
        obj: dict[str, Any] = {}
        for f, i in where.items():
            obj[f] = row[i].strip() or None
        if obj.get("sensor_id") is None and "sensor_id" not in where:
            obj["sensor_id"] = _file_stem(raw)
        if obj.get("value") is not None:
            obj["value"] = _csv_number(obj["value"], "value")
        ts = obj.get("timestamp")
        if ts is not None:
            try:
                obj["timestamp"] = _csv_number(ts, "timestamp")
            except BadRecord:
                if "+" not in ts[10:] and "-" not in ts[10:] and not ts.endswith("Z"):
                    obj["timestamp"] = ts + "+00:00"  # no offset: UTC
        used = set(where.values())
        for i, name in enumerate(names):
            if i not in used and row[i].strip():
                try:  # noqa: SIM105 - per-record path: contextlib.suppress costs a call each time
                    obj[name] = float(row[i])
                except ValueError:
                    pass
        return obj


def _csv_number(text: str, field: str) -> float | int:
    try:
        number = float(text)
    except ValueError:
        raise BadRecord("bad_type", f"{field} {text[:40]!r} is not a number") from None
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def _file_stem(raw: RawRecord) -> str:
    """The input file's name without extensions (``file:plant-7.csv`` -> ``plant-7``)."""
    offset = str(raw.offset)
    name = offset.rsplit(":", 1)[0] if ":" in offset else str(raw.source).split(":", 1)[-1]
    return name.split("/")[-1].split(".")[0] or name


@lru_cache(maxsize=16)
def _load_json(name: str) -> Any:
    path = Path(name)
    if not path.is_file():
        path = HERE / name
    return json.loads(path.read_text())


class Decoder:
    """Decode + validate batches; counts nothing itself (the flow does metrics).

    Args:
        fmt: the input format: ``json``, ``avro``, ``protobuf`` or ``csv``.
        schema: the reader schema file (Avro, Protobuf; empty: the default).
        registry: a Confluent schema registry URL for writer schemas (empty: ``schemas/``).
        max_bytes: larger records are dead letters ``oversize``.
        flow_id: the flow's identity.
        timestamp_unit: the unit of numeric timestamps (``auto``, ``s``, ``ms``, ``us``, ``ns``).
        earliest: records dated before this (epoch milliseconds) are ``bad_timestamp``.
        csv_mapping: CSV column names by standard field (and ``columns``: a header line).
        default_tenant: the tenant of records without a ``tenant_id`` (empty: none).
        control_key: the key that signs control markers (``None``: every marker is refused).
        model_store: the model store a marker's model must come from.
        tenants: the tenant ids a registry lists (``None``: every tenant is taken).
    """

    def __init__(
        self,
        fmt: str,
        schema: str = "",
        registry: str = "",
        max_bytes: int = 1 << 20,
        flow_id: str = "anomaly-detector",
        timestamp_unit: str = "auto",
        earliest: int = EARLIEST_MS,
        csv_mapping: dict[str, str] | None = None,
        default_tenant: str = "",
        control_key: bytes | None = None,
        model_store: str = "",
        tenants: frozenset[str] | None = None,
    ) -> None:
        self.max_bytes = max_bytes
        self.flow_id = flow_id
        self.default_tenant = default_tenant or None
        #: tenant ids already seen valid (a set lookup instead of a regex per record)
        self._valid_tenants: set[str] = set()
        #: readings of the last grouped batch away from their home partition (auto)
        self.away = 0
        #: one of them: (record, sensor id)
        self.away_sample: tuple[RawRecord, str] | None = None
        self.control_key = control_key or None
        self.model_store = model_store
        #: the tenants a registry lists (``None``: no registry, every tenant is taken)
        self.tenants = tenants
        self.unit = timestamp_unit
        self.earliest = earliest
        # epoch-ms integers the fast paths may take as they are: in range, and (auto) in
        # the magnitude that reads as milliseconds
        if timestamp_unit in ("ms", "auto"):
            self._lo = max(earliest, 0 if timestamp_unit == "ms" else 100_000_000_000)
            self._hi = LATEST_MS
        else:
            self._lo = self._hi = 0
        self._decode: Callable[[bytes], Any]
        self._fast: Callable[[bytes], Any] | None = None
        self._csv: _Csv | None = None
        if fmt == "json":
            self._decode = _json_loads
            self._fast = msgspec.json.Decoder(_Std).decode
        elif fmt == "avro":
            self._decode = _Avro(schema, registry)
        elif fmt == "protobuf":
            self._decode = _Protobuf(schema)
        elif fmt == "csv":
            mapping = dict(csv_mapping or {})
            self._csv = _Csv(mapping, mapping.pop("columns", None))
        else:
            raise ValueError(f"unknown format {fmt!r}")

    def decode_one(self, raw: RawRecord) -> Reading | Control:
        """One record, or :class:`BadRecord`: whatever a record holds, decoding it raises
        nothing else (a decoder library's own exception, ``RecursionError`` from deep
        nesting, ``MemoryError`` …), so no record can stop the flow.
        """
        try:
            return self._decode_one(raw)
        except (BadRecord, RegistryUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - hostile input: any failure is this record's
            raise BadRecord("undecodable", f"{type(exc).__name__}: {str(exc)[:200]}") from None

    def _decode_one(self, raw: RawRecord) -> Reading | Control:
        data = raw.value
        if data is None:
            raise BadRecord("undecodable", "empty record (tombstone)")
        if len(data) > self.max_bytes:
            raise BadRecord("oversize", f"{len(data)} bytes > max {self.max_bytes}")
        if data[:6] == CONTROL_PREFIX:
            try:
                body = decode_marker(data, self.control_key)
            except MarkerInvalid as exc:
                raise BadRecord("bad_control", str(exc)) from None
            assert body is not None  # noqa: S101 - narrowing: it has the prefix
            if body["type"] == "tenants":
                if self.tenants is None:
                    raise BadRecord("bad_control", "the flow has no tenant registry (AD_TENANTS)")
                self._check_store(str(body["registry_ref"]), "tenant registry")
            else:
                self._check_store(str(body.get("model_ref", "")))
            return Control(body, raw)
        obj = self._csv(raw) if self._csv is not None else self._decode(data)
        return _validate(obj, raw, self.unit, self.earliest, self._lo, self._hi)

    def _new_tenant(self, tenant: str) -> bool:
        """Whether ``tenant`` is a valid tenant id (remembered when it is)."""
        if not _TENANT_ID(tenant):
            return False
        if len(self._valid_tenants) < 100_000:
            self._valid_tenants.add(tenant)
        return True

    def _check_store(self, ref: str, what: str = "model") -> None:
        """A marker's model (or registry) must come from the configured store
        (``bad_control`` if not).
        """
        if not ref:
            return  # the built-in detector, under another version name
        store = self.model_store.rstrip("/")
        if not store:
            raise BadRecord("bad_control", f"the flow has no AD_MODEL_STORE to take a {what} from")
        if not ref.startswith(store + "/") or "/../" in ref or ref.endswith("/.."):
            raise BadRecord("bad_control", f"{what} {ref[:200]} is outside the model store")

    def decode_batch(
        self, batch: list[RawRecord]
    ) -> tuple[list[Reading | Control], list[tuple[str, OutRecord]]]:
        """Split a batch into decoded items (input order kept) and dead letters."""
        good: list[Reading | Control] = []
        bad: list[tuple[str, OutRecord]] = []
        decode = self.decode_one
        for raw in batch:
            try:
                good.append(decode(raw))
            except BadRecord as exc:
                bad.append(dead_letter(raw, exc.reason, str(exc), self.flow_id))
        return good, bad

    def decode_grouped(
        self,
        batch: list[RawRecord] | MessageBatch,
        groups: int,
        cache: dict[str, str],
        by_partition: bool = False,
        auto: bool = False,
        gate: Any = None,
    ) -> tuple[dict[str, SubBatch], list[tuple[str, OutRecord]]]:
        """Decode a batch straight into per-key-group :class:`SubBatch` columns.

        The same result as ``decode_batch`` followed by grouping (``key_group``; ``cache``
        memoises it): readings keep their input order within each key group, and a
        control marker is placed in every key group at its position. With
        ``by_partition`` the batch's whole partition is one key group (its
        ``MessageBatch.group``), which gets every reading and marker. With ``auto``, a
        batch whose source knows its sensors' home partitions (``MessageBatch.homes``,
        :mod:`connectors.kafka_keys`) puts each reading in its sensor's home key group
        (``cache`` memoises it), and every marker in every home group; readings away
        from home are counted in ``away`` (one of them kept in ``away_sample``). The
        common JSON
        record (the standard fields only, timestamp in epoch ms) is decoded and checked
        in C by msgspec, with no dict per record; anything else, and every record the
        fast path rejects, goes through ``decode_one`` and its exact error.

        ``gate`` (flows.quotas, one per input partition) applies tenant-registry switch
        markers at their position (``gate.switch``) and the quotas of the tenants in
        ``gate.limited`` to each reading in input order (``gate.admit``).
        """
        parts: dict[str, SubBatch] = {}
        cur: dict[str, Columns] = {}
        bad: list[tuple[str, OutRecord]] = []
        fast, maxb, lo, hi = self._fast, self.max_bytes, self._lo, self._hi
        default_tenant, known, valid = self.default_tenant, self.tenants, self._valid_tenants
        limited = gate.limited if gate is not None else None
        if type(batch) is MessageBatch:  # client messages: RawRecords only when needed
            values, items = batch.values, batch.items
        else:
            values, items = [r.value for r in batch], batch  # type: ignore[assignment]  # a list here
        fixed: str | None = None
        homes = batch.homes if auto and type(batch) is MessageBatch else None
        own = batch.group if homes is not None else None  # type: ignore[union-attr]  # a MessageBatch
        away = 0
        if by_partition:
            fixed = getattr(batch, "group", None)
            if not fixed:
                raise ValueError(
                    "key groups by partition need batches that name their "
                    "partition's group (a Kafka source)"
                )
        for data, raw in zip(values, items, strict=True):
            o = None
            if fast is not None and data is not None and len(data) <= maxb:
                try:  # noqa: SIM105 - per-record path: contextlib.suppress costs a call each time
                    o = fast(data)
                except Exception:  # noqa: BLE001, S110 - the general path reports it
                    pass
            if o is not None:  # each field read once (attribute reads are not free here)
                sid, t, v, ten = o.sensor_id, o.timestamp, o.value, o.tenant_id
            if o is None or not (
                sid
                and lo <= t < hi
                and v - v == 0.0
                and KEY_SEP not in sid
                and (ten is None or ten in valid or self._new_tenant(ten))
            ):  # everything the fast path does not take: the general path
                raw = as_raw(raw)
                try:
                    item = self.decode_one(raw)
                except BadRecord as exc:
                    bad.append(dead_letter(raw, exc.reason, str(exc), self.flow_id))
                    continue
                if type(item) is not Reading:  # a control marker: every key group, in position
                    if (
                        gate is not None
                        and type(item) is Control
                        and item.body["type"] == "tenants"
                    ):
                        failed = gate.switch(item.body)  # the registry, from this position
                        if failed is not None:
                            bad.append(dead_letter(raw, "bad_control", failed, self.flow_id))
                            continue
                        default_tenant, known = self.default_tenant, self.tenants
                        limited = gate.limited
                    if fixed is not None:
                        every = [fixed]  # type: list[str]
                    elif homes is not None:
                        every = homes.groups
                    else:
                        every = [str(g) for g in range(groups)]
                    for kg in every:
                        sub = parts.get(kg)
                        if sub is None:
                            sub = parts[kg] = SubBatch(kg)
                        sub.append(item)
                    cur.clear()
                    continue
                sid, t, v, ten = item.sensor_id, item.ts, item.value, item.tenant_id
            if ten is None:
                ten = default_tenant
            if ten is not None:  # state, key groups and alert ids by (tenant, sensor)
                if known is not None and ten not in known:
                    raw = as_raw(raw)
                    error = f"tenant {ten!r} is not in the tenant registry"
                    bad.append(dead_letter(raw, "unknown_tenant", error, self.flow_id))
                    continue
                if limited and ten in limited:  # quotas: in this partition's input order
                    refused = gate.admit(ten, sid, t)
                    if refused is not None:
                        reason, error = refused
                        bad.append(dead_letter(as_raw(raw), reason, error, self.flow_id))
                        continue
                key = f"{ten}\x1f{sid}"  # KEY_SEP
            else:
                key = sid
            if fixed is None:
                g = cache.get(key)
                if g is None:
                    g = cache[key] = key_group(key, groups) if homes is None else homes.group(sid)
                if own is not None and g != own:
                    if not away:
                        self.away_sample = (as_raw(raw), sid)
                    away += 1
            else:
                g = fixed
            sid = key
            c = cur.get(g)
            if c is None:
                c = cur[g] = Columns()
                sub = parts.get(g)
                if sub is None:
                    sub = parts[g] = SubBatch(g)
                sub.append(c)
            c.sids.append(sid)
            c.ts.append(t)
            c.vals.append(v)
            c.tenants.append(ten)
            c.raws.append(raw)
        if len(cache) > 1_000_000:
            cache.clear()
        self.away = away
        return parts, bad


def decoder_for(settings: Any, registry: Any = None, fmt: str | None = None) -> Decoder:
    """The flow's decoder for ``settings`` (``flows.settings.Settings``) and the tenant
    ``registry`` in force (or ``None``), in format ``fmt`` (default: the settings').
    """
    return Decoder(
        fmt or settings.format,
        settings.schema,
        settings.schema_registry,
        settings.max_record_bytes,
        settings.flow_id,
        settings.timestamp_unit,
        settings.earliest_ms,
        settings.csv_mapping(),
        settings.default_tenant or (registry.default_tenant if registry else "") or "",
        settings.control_key.encode() or None,
        settings.model_store,
        frozenset(registry.tenants) if registry is not None else None,
    )
