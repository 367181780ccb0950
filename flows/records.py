"""Records that flow between the steps: decoded readings, dead letters, output JSON."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson

from connectors.base import OutRecord, RawRecord

__all__ = ["Reading", "Control", "dead_letter", "iso", "stable_id", "REASONS"]

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
    """One valid sensor reading. ``ts`` is event time in epoch milliseconds (int)."""

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
    """

    __slots__ = ("body", "raw")

    def __init__(self, body: dict[str, Any], raw: RawRecord) -> None:
        self.body = body
        self.raw = raw


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
        "value_b64": base64.b64encode(raw.value).decode(),
        "flow_id": flow_id,
    }
    key = f"{raw.source}/{raw.partition}"
    return key, OutRecord(dlq_id, key, orjson.dumps(body))
