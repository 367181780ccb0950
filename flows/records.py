"""Records that flow between the steps: decoded readings, dead letters, output JSON."""

from __future__ import annotations

import base64
import hashlib
import zlib
from datetime import UTC, datetime
from typing import Any

import orjson

from connectors.base import OutRecord, RawRecord, as_raw

__all__ = [
    "Reading",
    "Control",
    "Columns",
    "SubBatch",
    "dead_letter",
    "iso",
    "stable_id",
    "REASONS",
    "key_group",
]

#: Every reason a record can be dead-lettered for, with what it means.
REASONS = {
    "oversize": "record larger than AD_MAX_RECORD_BYTES",
    "undecodable": "bytes are not valid JSON / Avro / Protobuf",
    "schema_mismatch": "decoded, but not a record of the expected schema",
    "missing_field": "a required field (sensor_id, timestamp, value) is missing",
    "bad_type": "a field has the wrong type",
    "non_finite": "value is NaN or infinite",
    "bad_timestamp": "timestamp unparseable or outside 1970..2200",
    "late": "event time behind the sensor's watermark (its windows already closed)",
    "future": "event time too far ahead of the sensor's watermark (AD_MAX_FUTURE)",
    "bad_control": "a control marker that could not be applied",
}


class Reading:
    """One valid sensor reading. ``ts`` is event time in epoch milliseconds (int).

    Args:
        sensor_id: the sensor.
        ts: event time in epoch milliseconds.
        value: the reading.
        tenant_id: the tenant, if any.
        extra: further numeric fields of the record, if any.
        raw: the input record it was decoded from.
    """

    __slots__ = ("sensor_id", "ts", "value", "tenant_id", "extra", "raw")

    def __init__(
        self,
        sensor_id: str,
        ts: int,
        value: float,
        tenant_id: str | None,
        extra: dict[str, float] | None,
        raw: RawRecord,
    ) -> None:
        self.sensor_id = sensor_id
        self.ts = ts
        self.value = value
        self.tenant_id = tenant_id
        self.extra = extra
        self.raw = raw


class Control:
    """A control marker read from an input partition (e.g. a model switch).

    It applies to the sensors of ``raw.source``/``raw.partition`` from its position on.

    Args:
        body: the verified marker's content.
        raw: the input record it was read from.
    """

    __slots__ = ("body", "raw")

    def __init__(self, body: dict[str, Any], raw: RawRecord) -> None:
        self.body = body
        self.raw = raw


class Columns:
    """Valid readings in input order, as columns (the hot path: no object per reading).

    ``raws`` keeps each reading's :class:`RawRecord`, or the client message it can be
    made from (:func:`connectors.base.as_raw`), for dead letters (late, future) and for
    its origin partition (model switches). Between processes it pickles as columns.
    """

    __slots__ = ("sids", "ts", "vals", "tenants", "raws")

    def __init__(self) -> None:
        self.sids: list[str] = []
        self.ts: list[int] = []
        self.vals: list[float] = []
        self.tenants: list[str | None] = []
        self.raws: list[Any] = []  # RawRecord or a client message (as_raw)

    def __len__(self) -> int:
        return len(self.sids)

    def append(self, r: Reading) -> None:
        """Add one reading."""
        self.sids.append(sensor_key(r.sensor_id, r.tenant_id))
        self.ts.append(r.ts)
        self.vals.append(r.value)
        self.tenants.append(r.tenant_id)
        self.raws.append(r.raw)

    def readings(self) -> list[Reading]:
        """The batch as ``Reading`` objects."""
        return [
            Reading(split_key(key)[1], ts, val, tenant, None, as_raw(raw))
            for key, ts, val, tenant, raw in zip(
                self.sids, self.ts, self.vals, self.tenants, self.raws, strict=True
            )
        ]

    def __reduce__(self) -> tuple:
        raws = list(map(as_raw, self.raws))  # a part may mix RawRecords and messages
        # RawRecords are tuples: transposed into 5 columns in C
        raw_cols = list(zip(*raws, strict=True)) if raws else [(), (), (), (), ()]
        return (_rebuild_columns, (self.sids, self.ts, self.vals, self.tenants, *raw_cols))


def _rebuild_columns(sids: list, ts: list, vals: list, tenants: list, *raw_cols: list) -> Columns:
    c = Columns()
    c.sids, c.ts, c.vals, c.tenants = sids, ts, vals, tenants
    new = tuple.__new__
    c.raws = [new(RawRecord, r) for r in zip(*raw_cols, strict=True)]
    return c


class SubBatch(list):
    """One key group's share of an input batch: :class:`Columns` parts, split where a
    :class:`Control` marker stands (markers reach every key group, in position).

    Args:
        group: the key group.
        parts: the columns and control markers, in input order.
    """

    __slots__ = ("group",)

    def __init__(self, group: str, parts: Any = ()) -> None:
        super().__init__(parts)
        self.group = group

    def __reduce__(self) -> tuple:
        return (SubBatch, (self.group, list(self)))

    @classmethod
    def of(cls, group: str, items: list[Reading | Control]) -> SubBatch:
        """Build from readings and markers (tests, tools)."""
        out = cls(group)
        for it in items:
            if type(it) is Reading:
                if not out or type(out[-1]) is not Columns:
                    out.append(Columns())
                out[-1].append(it)
            else:
                out.append(it)
        return out

    def items(self) -> list[Reading | Control]:
        """The readings and markers in order (slow; tests and the general path)."""
        return [x for part in self for x in (part.readings() if type(part) is Columns else [part])]


#: between tenant and sensor in a state key (neither may contain it)
KEY_SEP = "\x1f"


def sensor_key(sensor_id: str, tenant: str | None) -> str:
    """The key of a sensor's state: ``tenant<US>sensor``, or the sensor id alone for
    records without a tenant (so tenants never share a state).
    """
    return sensor_id if tenant is None else tenant + KEY_SEP + sensor_id


def split_key(key: str) -> tuple[str | None, str]:
    """Inverse of :func:`sensor_key`: ``(tenant or None, sensor id)``."""
    tenant, sep, sensor = key.partition(KEY_SEP)
    return (tenant, sensor) if sep else (None, key)


def key_group(sensor_id: str, groups: int) -> str:
    """Stable key group of a sensor (crc32, the same in every process)."""
    return str(zlib.crc32(sensor_id.encode()) % groups)


def iso(ts_ms: int) -> str:
    """Epoch milliseconds to RFC 3339 with milliseconds, UTC."""
    dt = datetime.fromtimestamp(ts_ms / 1000.0, UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stable_id(*parts: object) -> str:
    """A deterministic 32-hex-digit id from its parts."""
    return hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def dead_letter(raw: RawRecord, reason: str, error: str, flow_id: str) -> tuple[str, OutRecord]:
    """The dead-letter output for ``raw``: original bytes, reason and origin."""
    dlq_id = stable_id("dlq", raw.source, raw.partition, raw.offset)
    body = {
        "dlq_id": dlq_id,
        "reason": reason,
        "error": error[:1000],
        "source": raw.source,
        "partition": raw.partition,
        "offset": raw.offset,
        "value_b64": base64.b64encode(raw.value or b"").decode(),  # "" for a tombstone
        "flow_id": flow_id,
    }
    key = f"{raw.source}/{raw.partition}"
    return key, OutRecord(dlq_id, key, orjson.dumps(body))
