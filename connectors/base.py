"""Types shared by every connector: raw input records, output records, URLs.

Sources emit *batches*: ``next_batch`` returns ``[list[RawRecord]]`` or
``[MessageBatch]`` (one item that is a whole batch) or ``[]``, so the hot path
downstream works per batch, not per record.
Sinks receive ``(key, OutRecord)`` pairs; ``key`` routes the record to a partition.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any
from urllib.parse import parse_qs, urlsplit

from schemas.values import parse_bool, parse_duration

__all__ = [
    "RawRecord",
    "MessageBatch",
    "as_raw",
    "register_message_type",
    "OutRecord",
    "SourceURL",
    "ConnectorContext",
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
        """Build a record from its fields (``key`` defaults to None)."""
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
    knows it.

    Args:
        values: the records' values (``None`` for a record without one).
        items: the client's message objects, in the same order.
        source: the records' ``RawRecord.source`` (``kafka:<topic>``, …).
        group: the key group of the batch's input partition, where the source knows it.
        homes: each sensor's home key group (a :class:`connectors.kafka_keys.Homes`),
            where the source knows its producers' partitioning.
    """

    __slots__ = ("values", "items", "source", "group", "homes")

    def __init__(
        self,
        values: list[bytes | None],
        items: list[Any],
        source: str,
        group: str | None = None,
        homes: Any = None,
    ) -> None:
        self.values = values
        self.items = items
        self.source = source
        self.group = group
        self.homes = homes

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[RawRecord]:
        return map(as_raw, self.items)

    def __reduce__(self) -> tuple:
        # between processes (a stateful step keyed by partition on another worker) the
        # client's messages travel as RawRecords
        items = [as_raw(i) for i in self.items]
        return (MessageBatch, (self.values, items, self.source, self.group, self.homes))


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
        """``host:port``, or just the host when the URL names no port."""
        return f"{self.host}:{self.port}" if self.port else self.host

    @property
    def names(self) -> list[str]:
        """Comma-separated names in the path (topics, streams)."""
        return [n for n in self.path.strip("/").split(",") if n]

    def param(self, name: str, default: str | None = None) -> str | None:
        """The raw text of parameter ``name`` (``default`` when absent)."""
        return self.params.get(name, default)

    def text(self, name: str, default: str) -> str:
        """Parameter ``name`` as text; ``default`` when absent or empty."""
        return self.params.get(name) or default

    def int(self, name: str, default: builtins.int, minimum: builtins.int = 0) -> builtins.int:
        """Parameter ``name`` as an integer ≥ ``minimum``; ``default`` when absent or empty."""
        return self._typed(name, default, builtins.int, f"an integer >= {minimum}", minimum)

    def float(self, name: str, default: builtins.float) -> builtins.float:
        """Parameter ``name`` as a number ≥ 0; ``default`` when absent or empty."""
        return self._typed(name, default, builtins.float, "a number >= 0", 0.0)

    def bool(self, name: str, default: builtins.bool) -> builtins.bool:
        """Parameter ``name`` as ``true``/``false``; ``default`` when absent or empty."""
        return self._typed(name, default, lambda s: parse_bool(s, default), "true or false")

    def duration(self, name: str, default: builtins.float | str) -> builtins.float:
        """Parameter ``name`` as seconds (``500ms``, ``30s``, ``5m``…); ``default`` when absent."""
        return self._typed(name, parse_duration(default), parse_duration, "a duration", 0.0)

    def _typed(
        self, name: str, default: Any, conv: Callable[[str], Any], what: str, minimum: Any = None
    ) -> Any:
        raw = self.params.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = conv(raw)
        except ValueError:
            value = None
        if value is None or (minimum is not None and value < minimum):
            example = f"{default}" if not isinstance(default, builtins.bool) else "true"
            raise ValueError(
                f"URL parameter {name}={raw!r} of {self.redacted} must be {what}; "
                f"e.g. {self.scheme}://…?{name}={example}"
            )
        return value

    @property
    def redacted(self) -> str:
        """The URL with secrets (passwords, tokens, keys) masked, for messages and logs."""
        parts = urlsplit(self.raw)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = "&".join(
            f"{k}=***" if k.lower() in SECRET_PARAMS else f"{k}={v}" for k, v in self.params.items()
        )
        return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


#: URL parameters whose values are secrets (never printed)
SECRET_PARAMS = frozenset({"password", "token", "secret", "key", "sasl.password"})


@dataclass(frozen=True)
class ConnectorContext:
    """What a connector factory knows of the flow besides its URL.

    Args:
        flow_id: the flow's identity (transactional ids, consumer groups, dedup keys).
        kafka: librdkafka settings passed to every Kafka client (``AD_KAFKA_*``).
        format: the input format (``json``, ``csv``, …): file sources pass a CSV
            file's header line along with its records.
        fresh: no execution ran with this recovery store before (nothing to resume), so
            sinks that start afresh (a file in ``mode=truncate``) may clear old output.
        process_id: this process's index in the cluster (one process does start-up
            work such as clearing a file).
    """

    flow_id: str = "anomaly-detector"
    kafka: Mapping[str, str] = field(default_factory=dict)
    format: str = "json"
    fresh: bool = True
    process_id: int = 0


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
