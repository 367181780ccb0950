"""Redis Streams source and sink.

Source URL: ``redis://host:port/stream1,stream2?tail=false&count=1000&start=0&field=value``
Sink URL:   ``redis://host:port/alerts?maxlen=100000&dedup_ttl=7d&partitions=1``

Source: one Bytewax partition per stream; reads with a *non-blocking* ``XREAD`` (no
``BLOCK`` argument at all: ``block=0`` would block forever in redis-py); resume state is
the last stream ID emitted. A lost connection (e.g. Redis restarting) is retried with
exponential backoff through ``next_awake``; redis-py reconnects on the next command.

Sink: each alert is written by one atomic Lua script that does ``SET dedup-key NX EX ttl``
and, only if that succeeded, ``XADD``; replays after a crash are therefore dropped by
Redis itself (effectively-once, within the dedup TTL and as durable as Redis' own
persistence settings).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectors.base import (
    ConnectorContext,
    OutRecord,
    RawRecord,
    SourceURL,
)

__all__ = ["RedisStreamSource", "RedisStreamSink", "source_from_url", "sink_from_url"]

log = logging.getLogger(__name__)

_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def _parse_id(sid: str) -> tuple[int, int]:
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _client(host: str, port: int, db: int, password: str | None) -> redis.Redis:
    return redis.Redis(
        host=host,
        port=port,
        db=db,
        password=password,
        socket_connect_timeout=0.5,
        socket_timeout=2.0,
        health_check_interval=0,
        # No client-side retries (redis-py 6+ retries with sleeps by default): the source
        # backs off through next_awake and the sink has its own loop.
        retry=Retry(NoBackoff(), 0),
    )


class _RedisStreamPartition(StatefulSourcePartition[list[RawRecord], str]):
    """Reads one stream; state is the last emitted stream ID (``"0-0"`` = from the start)."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        last_id: str,
        end_id: str | None,
        count: int,
        field: str,
        poll: float,
    ) -> None:
        self._client = client
        self._stream = stream
        self._source = f"redis:{stream}"
        self._last_id = last_id
        self._end = _parse_id(end_id) if end_id is not None else None
        self._count = count
        self._field = field.encode()
        self._poll = timedelta(seconds=poll)
        self._awake: datetime | None = None
        self._failures = 0
        self._eof = False

    def _done(self) -> bool:
        return self._eof or (self._end is not None and _parse_id(self._last_id) >= self._end)

    def next_batch(self) -> list[list[RawRecord]]:
        if self._done():
            raise StopIteration
        try:
            # [(stream, [(id, {field: value})])], all bytes (the client does not decode)
            resp: Any = self._client.xread({self._stream: self._last_id}, count=self._count)
        except _TRANSIENT as exc:
            self._failures += 1
            delay = min(0.05 * 2**self._failures, 2.0)
            log.warning("redis stream %s: %s; retrying in %.2fs", self._stream, exc, delay)
            self._awake = datetime.now(UTC) + timedelta(seconds=delay)
            return []
        self._failures = 0
        if not resp:
            # Nothing new: poll again shortly (XREAD without BLOCK never waits).
            self._awake = datetime.now(UTC) + self._poll
            return []
        self._awake = None
        entries = resp[0][1]
        batch: list[RawRecord] = []
        for eid, fields in entries:
            sid = eid.decode()
            if self._end is not None and _parse_id(sid) > self._end:
                # The end entry was deleted meanwhile; everything up to it has been read.
                self._eof = True
                break
            value = fields.get(self._field)
            if value is None:
                # Entries written without our field keep their content, for the DLQ.
                text = {
                    k.decode(errors="replace"): v.decode(errors="replace")
                    for k, v in fields.items()
                }
                value = json.dumps(text).encode()
            key = fields.get(b"key")
            batch.append(RawRecord(value, self._source, self._stream, sid, key))
            self._last_id = sid
        return [batch] if batch else []

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> str:
        return self._last_id

    def close(self) -> None:
        self._client.close()


class RedisStreamSource(FixedPartitionedSource[list[RawRecord], str]):
    """Read Redis streams, one partition per stream, emitting batches of `RawRecord`.

    Resume state (per partition = stream name): the ID of the last entry emitted, a string
    such as ``"1718000000000-3"``; reading resumes strictly after it. Without resume state
    reading starts after ``start`` (``"0"`` = the beginning; ``"$"`` = the last entry
    present when the partition is built).

    With ``tail=False`` each partition stops at the last ID present when it is built.
    Entries trimmed away (``MAXLEN``) before they were read are skipped silently.

    Args:
        host: the Redis host.
        port: the Redis port.
        streams: the streams read, one partition each.
        tail: keep reading new entries (``False``: stop at the last ID present at the start).
        start: where a stream without resume state starts: ``0`` or ``$``.
        count: the most entries per ``XREAD``.
        field: the entry field that holds the record's value.
        poll: seconds to wait before reading again after an empty read.
        db: the Redis database number.
        password: the Redis password, if any.
    """

    def __init__(
        self,
        host: str,
        port: int,
        streams: list[str],
        *,
        tail: bool = True,
        start: str = "0",
        count: int = 1000,
        field: str = "value",
        poll: float = 0.01,
        db: int = 0,
        password: str | None = None,
    ) -> None:
        if not streams:
            raise ValueError("no stream names; e.g. redis://127.0.0.1:6379/sensors")
        self._host, self._port, self._db, self._password = host, port, db, password
        self._streams = streams
        self._tail = tail
        self._start = start
        self._count = count
        self._field = field
        self._poll = poll

    def list_parts(self) -> list[str]:
        """One partition per stream."""
        return list(self._streams)

    def _last_present(self, client: redis.Redis, stream: str) -> str:
        entries: Any = client.xrevrange(stream, count=1)  # [(id bytes, fields)]
        return entries[0][0].decode() if entries else "0-0"

    def build_part(
        self, step_id: str, for_part: str, resume_state: str | None
    ) -> _RedisStreamPartition:
        """A reader of one stream, resumed after the saved entry id."""
        client = _client(self._host, self._port, self._db, self._password)
        if resume_state is not None:
            last_id = resume_state
        elif self._start == "$":
            last_id = self._last_present(client, for_part)
        else:
            last_id = self._start
        end_id = None if self._tail else self._last_present(client, for_part)
        return _RedisStreamPartition(
            client, for_part, last_id, end_id, self._count, self._field, self._poll
        )


# KEYS[1] = stream, KEYS[2] = dedup key; ARGV = alert_id, ttl_s, sensor_id, value, maxlen
_XADD_ONCE = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[2])) then
  return false
end
if tonumber(ARGV[5]) > 0 then
  return redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[5], '*',
                    'id', ARGV[1], 'key', ARGV[3], 'value', ARGV[4])
end
return redis.call('XADD', KEYS[1], '*', 'id', ARGV[1], 'key', ARGV[3], 'value', ARGV[4])
"""


class _RedisStreamSinkPartition(StatefulSinkPartition[OutRecord, None]):
    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        dedup_prefix: str,
        ttl_s: int,
        maxlen: int,
        retry_for: float,
    ) -> None:
        self._client = client
        self._stream = stream
        self._prefix = dedup_prefix
        self._ttl = ttl_s
        self._maxlen = maxlen
        self._retry_for = retry_for
        self._script = client.register_script(_XADD_ONCE)
        self.written = 0  # entries actually added (not deduplicated); for tests and metrics

    def write_batch(self, values: list[OutRecord]) -> None:
        deadline = time.monotonic() + self._retry_for
        delay = 0.05
        while True:
            try:
                pipe = self._client.pipeline(transaction=False)
                for rec in values:
                    self._script(
                        keys=[self._stream, self._prefix + rec.id],
                        args=[rec.id, self._ttl, rec.key, rec.value, self._maxlen],
                        client=pipe,
                    )
                results = pipe.execute()
                self.written += sum(1 for r in results if r)
                return
            except _TRANSIENT as exc:
                # Safe to resend everything: the script is idempotent per alert_id.
                if time.monotonic() > deadline:
                    raise
                log.warning("redis sink %s: %s; retrying in %.2fs", self._stream, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def snapshot(self) -> None:
        # write_batch returns only after Redis answered every XADD; nothing is buffered.
        return None

    def close(self) -> None:
        self._client.close()


class RedisStreamSink(FixedPartitionedSink[OutRecord, None]):
    """Append alerts to one Redis stream, idempotently by alert id.

    Entry fields: ``id`` (alert id), ``key`` (sensor id), ``value`` (JSON bytes).
    Dedup key: ``ad:dedup:{<stream>}:<flow_id>:<alert_id>`` with a TTL (``dedup_ttl``,
    default 7 days); the hash tag keeps it in the stream's Redis Cluster slot.

    Resume state: none (``None``); dedup happens in Redis, not in the snapshot.

    Args:
        host: the Redis host.
        port: the Redis port.
        stream: the stream appended to.
        flow_id: the flow's identity (part of the dedup key).
        maxlen: the stream is trimmed to this many entries (``MAXLEN``; ``0``: never).
        dedup_ttl: seconds a dedup key lives.
        partitions: how many Bytewax partitions write.
        db: the Redis database number.
        password: the Redis password, if any.
        retry_for: seconds to keep retrying a failed write before the flow fails.
    """

    def __init__(
        self,
        host: str,
        port: int,
        stream: str,
        flow_id: str,
        *,
        maxlen: int = 0,
        dedup_ttl: float = 7 * 86400,
        partitions: int = 1,
        db: int = 0,
        password: str | None = None,
        retry_for: float = 60.0,
    ) -> None:
        self._host, self._port, self._db, self._password = host, port, db, password
        self._stream = stream
        self._prefix = f"ad:dedup:{{{stream}}}:{flow_id}:"
        self._ttl = max(1, int(dedup_ttl))
        self._maxlen = maxlen
        self._parts = partitions
        self._retry_for = retry_for

    def list_parts(self) -> list[str]:
        """The configured number of writer partitions."""
        return [str(i) for i in range(self._parts)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _RedisStreamSinkPartition:
        """A writer partition with its own Redis client."""
        client = _client(self._host, self._port, self._db, self._password)
        return _RedisStreamSinkPartition(
            client, self._stream, self._prefix, self._ttl, self._maxlen, self._retry_for
        )


def _common(url: SourceURL) -> dict:
    return {
        "host": url.host or "127.0.0.1",
        "port": url.port or 6379,
        "db": url.int("db", 0),
        "password": url.param("password"),
    }


def source_from_url(url: SourceURL, ctx: ConnectorContext) -> RedisStreamSource:
    """``redis://host:port/s1,s2?tail=false&count=1000&start=0|$&field=value&poll=10ms``."""
    return RedisStreamSource(
        streams=url.names,
        tail=url.bool("tail", True),
        start=url.text("start", "0"),
        count=url.int("count", 1000, minimum=1),
        field=url.text("field", "value"),
        poll=url.duration("poll", "10ms"),
        **_common(url),
    )


def sink_from_url(url: SourceURL, ctx: ConnectorContext) -> RedisStreamSink:
    """``redis://host:port/alerts?maxlen=N&dedup_ttl=7d&partitions=1``."""
    names = url.names
    if len(names) != 1:
        raise ValueError(
            f"a Redis sink URL names exactly one stream: {url.raw!r}; "
            "e.g. redis://127.0.0.1:6379/alerts"
        )
    return RedisStreamSink(
        stream=names[0],
        flow_id=ctx.flow_id,
        maxlen=url.int("maxlen", 0),
        dedup_ttl=url.duration("dedup_ttl", "7d"),
        partitions=url.int("partitions", 1, minimum=1),
        **_common(url),
    )
