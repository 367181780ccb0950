"""Types shared by every connector: raw input records, output records, URLs.

Sources emit *batches*: ``next_batch`` returns ``[list[RawRecord]]`` or
``[MessageBatch]`` (one item that is a whole batch) or ``[]``, so the hot path
downstream works per batch, not per record.
Sinks receive ``(key, OutRecord)`` pairs; ``key`` routes the record to a partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "RawRecord",
    "MessageBatch",
    "as_raw",
    "register_message_type",
    "OutRecord",
    "SourceURL",
    "parse_url",
    "parse_bool",
    "parse_duration",
]


class RawRecord(tuple):
    """One undecoded input record and where it came from: ``value``, ``source``,
    ``partition``, ``offset``, ``key``.

    ``partition`` and ``offset`` are strings so every system fits (Kafka offsets,
    Kinesis sequence numbers, Redis stream IDs, Pub/Sub message ids). A tuple, so that
    a source's per-record loop can build one at C speed:
    ``tuple.__new__(RawRecord, (value, source, partition, offset, key))``: the fields are
    C-level item getters.
    """

    __slots__ = ()

    def __new__(
        cls, value: bytes | None, source: str, partition: str, offset: str, key: bytes | None = None
    ) -> RawRecord:
        return tuple.__new__(cls, (value, source, partition, offset, key))

    def __getnewargs__(self) -> tuple:
        return tuple(self)

    def __repr__(self) -> str:
        return "RawRecord(value={!r}, source={!r}, partition={!r}, offset={!r}, key={!r})".format(
            *self
        )

    value: bytes = property(itemgetter(0))  # type: ignore[assignment]
    source: str = property(itemgetter(1))  # type: ignore[assignment]
    partition: str = property(itemgetter(2))  # type: ignore[assignment]
    offset: str = property(itemgetter(3))  # type: ignore[assignment]
    key: bytes | None = property(itemgetter(4))  # type: ignore[assignment]


#: converters from a client library's message type to RawRecord (see MessageBatch)
_TO_RAW: dict[type, Callable[[Any], RawRecord]] = {}


def register_message_type(tp: type, to_raw: Callable[[Any], RawRecord]) -> None:
    """Let :func:`as_raw` turn a client's message objects (``tp``) into RawRecords."""
    _TO_RAW[tp] = to_raw


def as_raw(item: Any) -> RawRecord:
    """``item`` as a RawRecord: itself, or a registered client message converted."""
    return item if type(item) is RawRecord else _TO_RAW[type(item)](item)


class MessageBatch:
    """A source batch kept as the client's message objects (``items``, registered with
    :func:`register_message_type`) plus their ``values``: the hot path reads the values
    and keeps the objects; a RawRecord is made only when one is needed (a dead letter,
    a model switch's origin, a hop to another process). Iterating yields RawRecords, so
    it reads like a ``list[RawRecord]``. ``group`` names the key group of the batch's
    input partition (:func:`connectors.placement.partition_group`), where the source
    knows it."""

    __slots__ = ("values", "items", "source", "group")

    def __init__(
        self, values: list[bytes | None], items: list[Any], source: str, group: str | None = None
    ) -> None:
        self.values = values
        self.items = items
        self.source = source
        self.group = group

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RawRecord]:
        return map(as_raw, self.items)


@dataclass(slots=True)
class OutRecord:
    """One output record: ``id`` is the deterministic dedup key (``alert_id``)."""

    id: str
    key: str
    value: bytes


@dataclass(frozen=True)
class SourceURL:
    """A parsed connector URL such as ``kafka://127.0.0.1:9092/topic?tail=false``."""

    raw: str
    scheme: str
    host: str
    port: int | None
    path: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}" if self.port else self.host

    @property
    def names(self) -> list[str]:
        """Comma-separated names in the path (topics, streams)."""
        return [n for n in self.path.strip("/").split(",") if n]

    def param(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)


SCHEMES = ("kafka", "kinesis", "pubsub", "redis", "file", "demo", "stdout", "stderr")


def parse_url(raw: str) -> SourceURL:
    """Parse a connector URL; raise ``ValueError`` naming the problem and an example."""
    parts = urlsplit(raw)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"unknown URL scheme {parts.scheme!r} in {raw!r}; use one of "
            f"{', '.join(s + '://' for s in SCHEMES)} e.g. kafka://127.0.0.1:9092/sensors"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(
            f"bad port in {raw!r}: {exc}; e.g. kafka://127.0.0.1:9092/sensors"
        ) from exc
    params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    path = parts.path
    if parts.scheme in ("kinesis", "pubsub"):
        # kinesis://stream and pubsub://project/subscription keep their name in netloc
        path = "/" + parts.netloc + path
        return SourceURL(raw, parts.scheme, "", None, path, params)
    if parts.scheme == "file":
        path = parts.netloc + path
        if not path:
            raise ValueError(f"file URL {raw!r} has no path; e.g. file:///tmp/alerts.jsonl")
    return SourceURL(raw, parts.scheme, parts.hostname or "", port, path, params)


def parse_bool(text: str | None, default: bool = False) -> bool:
    if text is None or text == "":
        return default
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """Parse ``"250ms"``, ``"5s"``, ``"10m"``, ``"1h"``, ``"2d"`` or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    t = text.strip().lower()
    for unit in ("ms", "s", "m", "h", "d"):
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return float(t[: -len(unit)]) * _UNITS[unit]
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"not a duration: {text!r}; e.g. 500ms, 30s, 5m, 1h") from None
