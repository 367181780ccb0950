"""The Kinesis source: one partition per shard (see the package docstring)."""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import botocore.exceptions as bexc
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.base import (
    ConnectorContext,
    RawRecord,
    SourceURL,
)
from connectors.kinesis.client import (
    _CONNECTION_ERRORS,
    _THROTTLED,
    _code,
    _stream_name,
    iterator_since,
    list_shards,
    make_client,
)

log = logging.getLogger(__name__)


class ShardState(TypedDict):
    """Resume state of one shard: last sequence number, its time, whether drained."""

    seq: str | None
    at: float | None
    done: bool


# (step_id, stream, shard_id) -> drained?  Present once the partition is built here.
_REGISTRY: dict[tuple[str, str, str], bool] = {}


_REGISTRY_LOCK = threading.Lock()


class _KinesisShardPartition(StatefulSourcePartition[list[RawRecord], ShardState]):
    def __init__(
        self,
        client: Any,
        step_id: str,
        stream: str,
        shard: dict,
        parents: list[str],
        state: ShardState,
        start: str,
        tail: bool,
        batch: int,
        poll: float,
        parent_wait: float,
        fresh: bool,
    ) -> None:
        self._client = client
        self._stream = stream
        self._source = f"kinesis:{stream}"
        self._shard_id: str = shard["ShardId"]
        self._parents = parents
        self._seq = state["seq"]
        self._at = state["at"]
        self._fresh_latest = fresh and start == "LATEST"
        self._not_before = 0.0  # arrival-time filter when AT_TIMESTAMP had to be emulated
        self._done = state["done"]
        self._start = start
        self._tail = tail
        self._batch = batch
        self._poll = timedelta(seconds=poll)
        self._parent_wait = parent_wait
        self._built = time.monotonic()
        self._key = (step_id, stream, self._shard_id)
        self._iterator: str | None = None
        self._awake: datetime | None = None
        self._failures = 0
        self._eof = False
        with _REGISTRY_LOCK:
            _REGISTRY[self._key] = self._done

    # -- helpers -------------------------------------------------------------------------
    def _backoff(self, why: object) -> list:
        self._failures += 1
        delay = min(0.1 * 2 ** (self._failures - 1), 5.0)
        log.warning(
            "kinesis %s/%s: %s; retrying in %.2fs", self._stream, self._shard_id, why, delay
        )
        self._awake = datetime.now(UTC) + timedelta(seconds=delay)
        return []

    def _wait(self, seconds: float) -> list:
        self._awake = datetime.now(UTC) + timedelta(seconds=seconds)
        return []

    def _parents_pending(self) -> bool:
        for parent in self._parents:
            with _REGISTRY_LOCK:
                drained = _REGISTRY.get((self._key[0], self._stream, parent))
            if drained is True:
                continue
            if drained is False:
                return True  # parent is read in this process and not finished yet
            # Parent built in another process (or not yet): wait a grace period.
            if time.monotonic() - self._built < self._parent_wait:
                return True
        return False

    def _new_iterator(self) -> str:
        args: dict[str, Any] = {"StreamName": self._stream, "ShardId": self._shard_id}
        if self._seq is not None:
            args.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=self._seq)
        elif self._fresh_latest:
            # First start at LATEST; ``at`` (build time) is what a re-creation/resume uses.
            self._fresh_latest = False
            args.update(ShardIteratorType="LATEST")
        elif self._at is not None:
            it, self._not_before = iterator_since(
                self._client, self._stream, self._shard_id, self._at
            )
            return it
        else:
            args.update(ShardIteratorType="TRIM_HORIZON")
        return str(self._client.get_shard_iterator(**args)["ShardIterator"])

    def _mark_drained(self) -> None:
        self._done = True
        with _REGISTRY_LOCK:
            _REGISTRY[self._key] = True

    # -- StatefulSourcePartition ----------------------------------------------------------
    def next_batch(self) -> list[list[RawRecord]]:
        if self._done or self._eof:
            raise StopIteration
        if self._parents and self._parents_pending():
            return self._wait(0.1)
        try:
            if self._iterator is None:
                self._iterator = self._new_iterator()
            resp = self._client.get_records(ShardIterator=self._iterator, Limit=self._batch)
        except bexc.ClientError as exc:
            code = _code(exc)
            if code == "ExpiredIteratorException":
                self._iterator = None
                log.info(
                    "kinesis %s/%s: iterator expired; re-created from %s",
                    self._stream,
                    self._shard_id,
                    self._seq,
                )
                return []
            if code in _THROTTLED:
                return self._backoff(code)
            if code == "ResourceNotFoundException":
                self._iterator = None
                return self._backoff(code)  # e.g. the endpoint restarting; never skip data
            raise
        except _CONNECTION_ERRORS as exc:
            self._iterator = None
            return self._backoff(type(exc).__name__)
        self._failures = 0
        records = resp.get("Records", [])
        got_any = bool(records)
        if self._not_before and records:
            # Reading from TRIM_HORIZON in place of AT_TIMESTAMP: drop what is older.
            self._seq = records[-1]["SequenceNumber"]
            records = [
                r
                for r in records
                if r["ApproximateArrivalTimestamp"].timestamp() >= self._not_before
            ]
            if records:
                self._not_before = 0.0
        batch = [
            RawRecord(
                r["Data"],
                self._source,
                self._shard_id,
                r["SequenceNumber"],
                r["PartitionKey"].encode(),
            )
            for r in records
        ]
        if batch:
            self._seq = batch[-1].offset
        nxt = resp.get("NextShardIterator")
        behind = resp.get("MillisBehindLatest", 0)
        if nxt is None:
            # Closed shard read to its end: children may start now.
            self._mark_drained()
            self._iterator = None
            log.info("kinesis %s/%s drained (closed shard)", self._stream, self._shard_id)
            return [batch] if batch else []
        self._iterator = nxt
        if not batch:
            if not got_any and not self._tail and behind == 0:
                self._eof = True  # caught up with the data present: end of a bounded read
                return []
            return self._wait(self._poll.total_seconds() if behind == 0 and not got_any else 0.0)
        self._awake = None if behind > 0 else datetime.now(UTC) + self._poll
        return [batch]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> ShardState:
        return {"seq": self._seq, "at": self._at, "done": self._done}


def _parse_at(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    # A literal "+" in a URL query decodes to a space: "...00 00:00" means "+00:00".
    text = re.sub(r" (\d\d:?\d\d)$", r"+\1", text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


class KinesisSource(FixedPartitionedSource[list[RawRecord], ShardState]):
    """Read a Kinesis stream, one partition per shard, emitting batches of `RawRecord`.

    Resume state per shard: ``{"seq": str | None, "at": float | None, "done": bool}`` (see
    the module docstring). ``RawRecord.partition`` is the shard id, ``offset`` the sequence
    number, ``key`` the partition key.

    Args:
        stream: the stream read.
        endpoint: the Kinesis endpoint URL (``None``: AWS's for ``region``).
        region: the AWS region.
        start: where a shard without resume state starts: ``TRIM_HORIZON``, ``LATEST`` or
            ``AT_TIMESTAMP`` (with ``at``).
        at: epoch seconds for ``AT_TIMESTAMP``.
        tail: keep reading new records (``False``: stop at the end of the data present at
            the start).
        batch: the most records per ``GetRecords`` request.
        poll: seconds to wait after an empty read.
        parent_wait: seconds a child shard waits for a parent shard built in another
            process after the parent closed.
    """

    def __init__(
        self,
        stream: str,
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        start: str = "TRIM_HORIZON",
        at: float | None = None,
        tail: bool = True,
        batch: int = 1000,
        poll: float = 0.2,
        parent_wait: float = 30.0,
    ) -> None:
        start = start.upper()
        if start not in ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"):
            raise ValueError(f"start={start!r}: use TRIM_HORIZON, LATEST or AT_TIMESTAMP")
        if start == "AT_TIMESTAMP" and at is None:
            raise ValueError("start=AT_TIMESTAMP needs at=<ISO time or epoch seconds>")
        self._stream = stream
        self._endpoint = endpoint
        self._region = region
        self._start = start
        self._at = at
        self._tail = tail
        self._batch = max(1, min(batch, 10000))
        self._poll = poll
        self._parent_wait = parent_wait

    def _shards(self) -> list[dict]:
        return list_shards(make_client(self._endpoint, self._region), self._stream)

    def list_parts(self) -> list[str]:
        """One partition per shard still within retention."""
        return [s["ShardId"] for s in self._shards()]

    def build_part(
        self, step_id: str, for_part: str, resume_state: ShardState | None
    ) -> _KinesisShardPartition:
        """A reader of one shard, resumed after the saved sequence number."""
        client = make_client(self._endpoint, self._region)
        shards = {s["ShardId"]: s for s in list_shards(client, self._stream)}
        shard = shards.get(for_part)
        if shard is None:
            # Expired beyond retention since the last run: nothing left to read.
            shard = {"ShardId": for_part}
            resume_state = {"seq": None, "at": None, "done": True}
        parents = [
            p
            for p in (shard.get("ParentShardId"), shard.get("AdjacentParentShardId"))
            if p and p in shards
        ]
        fresh = resume_state is None
        if resume_state is None:
            # LATEST is pinned to the build time, so a resume continues from there.
            at = {"AT_TIMESTAMP": self._at, "LATEST": time.time()}.get(self._start)
            resume_state = {"seq": None, "at": at, "done": False}
        return _KinesisShardPartition(
            client,
            step_id,
            self._stream,
            shard,
            parents,
            resume_state,
            self._start,
            self._tail,
            self._batch,
            self._poll,
            self._parent_wait,
            fresh,
        )


def source_from_url(url: SourceURL, ctx: ConnectorContext) -> KinesisSource:
    """``kinesis://stream?endpoint=&region=&start=&at=&tail=&batch=&poll=&parent_wait=``."""
    return KinesisSource(
        _stream_name(url),
        endpoint=url.text("endpoint", "") or None,
        region=url.text("region", "us-east-1"),
        start=url.text("start", "TRIM_HORIZON"),
        at=_parse_at(url.param("at")),
        tail=url.bool("tail", True),
        batch=url.int("batch", 1000, minimum=1),
        poll=url.duration("poll", "200ms"),
        parent_wait=url.duration("parent_wait", "30s"),
    )
