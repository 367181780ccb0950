"""Amazon Kinesis Data Streams source and sink (boto3).

Source URL: ``kinesis://stream?endpoint=http://127.0.0.1:4567&region=us-east-1
&start=TRIM_HORIZON|LATEST|AT_TIMESTAMP&at=2024-01-01T00:00:00Z&tail=false&batch=1000&poll=200ms``
Sink URL:   ``kinesis://stream?endpoint=...&region=...&partitions=1``

Source
    One Bytewax partition per shard, for every shard that ``ListShards`` returns when the
    flow starts, closed ones included (they are drained first). Resume state per shard is
    ``{"seq": <last sequence number emitted or None>, "at": <epoch seconds or None>,
    "done": <bool>}``; reading resumes with ``AFTER_SEQUENCE_NUMBER``. ``at`` pins where a
    shard that emitted nothing yet starts: ``LATEST`` means ``AT_TIMESTAMP`` of the time
    the partition was first built (local clock), so a restart does not skip what arrived
    meanwhile (unless the flow died before its first snapshot, which stores nothing).
    ``done`` marks a closed shard read to its end.

    Resharding: a child shard does not read until its parent shards are drained. Partitions
    tell each other through a per-process registry, so the order parent-before-child holds
    when parent and child are built in the same process (single-process runs, any ``-w``).
    If a parent is not built in this process, the child waits ``parent_wait`` (default 30s)
    after the parent shard is closed and then reads anyway: no data is lost, but records of
    a sensor may then be emitted out of order across the reshard. Shards created *after*
    the flow started are not partitions of this execution (Bytewax's partition list is
    fixed): the flow reads them after its next restart, from ``TRIM_HORIZON`` if their
    parent is done (a warning is logged when a drained shard has unknown children).

    ``next_batch`` never waits: each call makes at most one ``GetShardIterator`` and one
    ``GetRecords`` request (boto3 with no client retries, 1s connect / 2s read timeout).
    Empty reads, throttling (``ProvisionedThroughputExceededException``,
    ``LimitExceededException``) and connection errors back off through ``next_awake``;
    an expired iterator is re-created from the last sequence number. kinesalite never
    answers an ``AT_TIMESTAMP`` request when no record is that recent; after that one
    timeout the shard is read from ``TRIM_HORIZON`` with records older than the
    timestamp dropped (same result, used only when ``AT_TIMESTAMP`` fails).

Sink
    ``PutRecords`` in chunks of at most 500 records and 5 MiB; only the entries that failed
    are retried (with backoff); partition key = the record's key (sensor id). Resume state
    ``{"seqs": {shard: highest sequence number seen}, "ts": epoch seconds, "skip": [ids]}``.
    After a resume the partition reads every shard from those sequence numbers (shards
    without one: from ``ts - 60s`` by ``AT_TIMESTAMP``) to the tail and collects the ids of
    records already there (``alert_id``/``dlq_id``/``id`` field of the JSON value); replayed
    records with those ids are not written again.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import boto3
import botocore.exceptions as bexc
from botocore.config import Config
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.base import OutRecord, RawRecord, SourceURL, parse_bool, parse_duration

__all__ = ["KinesisSource", "KinesisSink", "source_from_url", "sink_from_url"]

log = logging.getLogger(__name__)

MAX_RECORDS_PER_PUT = 500
MAX_BYTES_PER_PUT = 5 * 1024 * 1024
MAX_BYTES_PER_RECORD = 1024 * 1024
ID_FIELDS = ("alert_id", "dlq_id", "id")

_THROTTLED = {
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "KMSThrottlingException",
    "ThrottlingException",
    "InternalFailure",
    "ServiceUnavailable",
}
_CONNECTION_ERRORS = (
    bexc.EndpointConnectionError,
    bexc.ConnectionClosedError,
    bexc.ReadTimeoutError,
    bexc.ConnectTimeoutError,
)


def make_client(endpoint: str | None, region: str) -> Any:
    """A Kinesis client without hidden retries (callers back off themselves)."""
    cfg = Config(
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=1,
        read_timeout=2,
    )
    kwargs: dict[str, Any] = {"region_name": region, "config": cfg}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
        if boto3.Session().get_credentials() is None:
            # Local endpoints (kinesalite, LocalStack) accept any credentials.
            kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    return boto3.client("kinesis", **kwargs)


def list_shards(client: Any, stream: str) -> list[dict]:
    """Every shard of ``stream`` still within retention, closed ones included."""
    shards: list[dict] = []
    resp = client.list_shards(StreamName=stream)
    shards.extend(resp["Shards"])
    while resp.get("NextToken"):
        resp = client.list_shards(NextToken=resp["NextToken"])
        shards.extend(resp["Shards"])
    return shards


def _code(exc: bexc.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class ShardState(TypedDict):
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
            it, self._not_before = _iterator_since(
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
        return [s["ShardId"] for s in self._shards()]

    def build_part(
        self, step_id: str, for_part: str, resume_state: ShardState | None
    ) -> _KinesisShardPartition:
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


# ---------------------------------------------------------------------------------------
# Sink
# ---------------------------------------------------------------------------------------


class SinkState(TypedDict):
    seqs: dict[str, str]
    ts: float
    skip: list[str]


def ids_in(data: bytes, fields: tuple[str, ...] = ID_FIELDS) -> list[str]:
    """The id fields of a JSON object record (empty if it is not one)."""
    try:
        obj = json.loads(data)
    except ValueError:
        return []
    if not isinstance(obj, dict):
        return []
    return [v for k in fields if isinstance(v := obj.get(k), str)]


def _iterator_since(client: Any, stream: str, shard: str, since: float) -> tuple[str, float]:
    """An iterator at ``since``; returns (iterator, arrival time to filter from).

    kinesalite never answers ``AT_TIMESTAMP`` when no record is that recent (the request
    times out); then read from ``TRIM_HORIZON`` and filter by arrival time instead.
    """
    args = {"StreamName": stream, "ShardId": shard}
    try:
        it = client.get_shard_iterator(
            ShardIteratorType="AT_TIMESTAMP", Timestamp=datetime.fromtimestamp(since, UTC), **args
        )
        return str(it["ShardIterator"]), 0.0
    except (bexc.ReadTimeoutError, bexc.ClientError) as exc:
        if isinstance(exc, bexc.ClientError) and _code(exc) != "InvalidArgumentException":
            raise
    it = client.get_shard_iterator(ShardIteratorType="TRIM_HORIZON", **args)
    return str(it["ShardIterator"]), since


def read_back(
    client: Any, stream: str, seqs: dict[str, str], since: float | None, retry_for: float = 60.0
) -> tuple[set[str], dict[str, str]]:
    """Ids of records on every shard after ``seqs`` (or after ``since``), and the new tails."""
    found: set[str] = set()
    tails = dict(seqs)
    deadline = time.monotonic() + retry_for
    for shard in list_shards(client, stream):
        sid = shard["ShardId"]
        not_before = 0.0
        if sid in seqs:
            it: str | None = client.get_shard_iterator(
                StreamName=stream,
                ShardId=sid,
                ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                StartingSequenceNumber=seqs[sid],
            )["ShardIterator"]
        elif since is not None:
            it, not_before = _iterator_since(client, stream, sid, since)
        else:
            it = client.get_shard_iterator(
                StreamName=stream, ShardId=sid, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
        delay = 0.05
        while it is not None:
            try:
                resp = client.get_records(ShardIterator=it, Limit=10000)
            except bexc.ClientError as exc:
                if _code(exc) not in _THROTTLED or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            for r in resp["Records"]:
                tails[sid] = r["SequenceNumber"]
                if r["ApproximateArrivalTimestamp"].timestamp() >= not_before:
                    found.update(ids_in(r["Data"]))
            it = resp.get("NextShardIterator")
            if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                break
    return found, tails


class _KinesisSinkPartition(StatefulSinkPartition[OutRecord, SinkState]):
    def __init__(self, client: Any, stream: str, state: SinkState | None, retry_for: float) -> None:
        self._client = client
        self._stream = stream
        self._retry_for = retry_for
        self._skip: set[str] = set()
        self._seqs: dict[str, str] = {}
        self.put_calls = 0  # PutRecords requests made; for tests and metrics
        self.retried = 0  # entries sent again after a partial failure
        self._warned = False
        if state is not None:
            since = state["ts"] - 60.0
            found, self._seqs = read_back(client, stream, state["seqs"], since, retry_for)
            self._skip = found | set(state["skip"])
            if found:
                log.warning(
                    "kinesis sink %s: %d records were already written after the "
                    "snapshot; their replays will be skipped",
                    stream,
                    len(found),
                )

    def _chunks(self, recs: list[OutRecord]) -> list[list[tuple[str, dict]]]:
        chunks: list[list[tuple[str, dict]]] = []
        cur: list[tuple[str, dict]] = []
        size = 0
        for rec in recs:
            n = len(rec.value) + len(rec.key.encode())
            if n > MAX_BYTES_PER_RECORD:
                raise ValueError(f"record {rec.id} is {n} bytes; Kinesis allows 1 MiB")
            if cur and (len(cur) == MAX_RECORDS_PER_PUT or size + n > MAX_BYTES_PER_PUT):
                chunks.append(cur)
                cur, size = [], 0
            cur.append((rec.id, {"Data": rec.value, "PartitionKey": rec.key}))
            size += n
        if cur:
            chunks.append(cur)
        return chunks

    def _note(self, entry: dict) -> None:
        shard, seq = entry["ShardId"], entry["SequenceNumber"]
        old = self._seqs.get(shard)
        if old is None or int(seq) > int(old):
            self._seqs[shard] = seq

    def _put(self, entries: list[tuple[str, dict]]) -> None:
        deadline = time.monotonic() + self._retry_for
        since = time.time() - 60.0
        delay = 0.05
        pending = entries
        unknown = False  # a request may have been applied without us seeing the answer
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"kinesis sink {self._stream}: {len(pending)} records "
                    f"still failing after {self._retry_for}s"
                )
            try:
                if unknown:
                    # Drop what an unanswered request did write: no duplicates from resends.
                    found, self._seqs = read_back(
                        self._client, self._stream, self._seqs, since, self._retry_for
                    )
                    pending = [e for e in pending if e[0] not in found]
                    unknown = False
                    if not pending:
                        return
                self.put_calls += 1
                resp = self._client.put_records(
                    StreamName=self._stream, Records=[e[1] for e in pending]
                )
            except bexc.ClientError as exc:
                if _code(exc) not in _THROTTLED:
                    raise
                log.warning("kinesis sink %s: %s; retrying", self._stream, _code(exc))
            except _CONNECTION_ERRORS as exc:
                unknown = unknown or not isinstance(exc, bexc.EndpointConnectionError)
                log.warning("kinesis sink %s: %s; retrying", self._stream, type(exc).__name__)
            else:
                failed = []
                for entry, result in zip(pending, resp["Records"], strict=True):
                    if result.get("ErrorCode"):
                        failed.append(entry)
                    else:
                        self._note(result)
                if failed:
                    self.retried += len(failed)
                    log.warning(
                        "kinesis sink %s: %d of %d entries failed; retrying them",
                        self._stream,
                        len(failed),
                        len(pending),
                    )
                pending = failed
                if not pending:
                    return
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def write_batch(self, values: list[OutRecord]) -> None:
        todo = []
        for rec in values:
            if rec.id in self._skip:
                self._skip.discard(rec.id)  # each id is replayed once per execution
                continue
            if not self._warned and rec.id.encode() not in rec.value:
                self._warned = True
                log.warning(
                    "kinesis sink %s: record %s does not carry its id in the value; "
                    "replays after a crash cannot be deduplicated",
                    self._stream,
                    rec.id,
                )
            todo.append(rec)
        for chunk in self._chunks(todo):
            self._put(chunk)

    def snapshot(self) -> SinkState:
        # put_records is synchronous: everything written so far was acknowledged already.
        return {"seqs": dict(self._seqs), "ts": time.time(), "skip": sorted(self._skip)}


class KinesisSink(FixedPartitionedSink[OutRecord, SinkState]):
    """Write records to a Kinesis stream, partition key = record key (sensor id).

    Resume state: ``{"seqs": {shard_id: seq}, "ts": float, "skip": [ids]}``; after a
    resume, ids already present after those positions are skipped (effectively-once).
    A put left unanswered (timeout, dropped connection) is followed by the same read-back
    before resending, so it does not duplicate either. Limit: records of one key can be
    reordered when only some entries of a put fail (as with any Kinesis producer).
    """

    def __init__(
        self,
        stream: str,
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        partitions: int = 1,
        retry_for: float = 60.0,
    ) -> None:
        self._stream = stream
        self._endpoint = endpoint
        self._region = region
        self._parts = partitions
        self._retry_for = retry_for

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self._parts)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: SinkState | None
    ) -> _KinesisSinkPartition:
        client = make_client(self._endpoint, self._region)
        return _KinesisSinkPartition(client, self._stream, resume_state, self._retry_for)


def _stream_name(url: SourceURL) -> str:
    names = url.names
    if len(names) != 1:
        raise ValueError(
            f"a kinesis URL names one stream: {url.raw!r}; e.g. kinesis://sensors?region=us-east-1"
        )
    return names[0]


def source_from_url(url: SourceURL, settings: object) -> KinesisSource:
    """``kinesis://stream?endpoint=&region=&start=&at=&tail=&batch=&poll=&parent_wait=``."""
    return KinesisSource(
        _stream_name(url),
        endpoint=url.param("endpoint") or None,
        region=url.param("region", "us-east-1") or "us-east-1",
        start=url.param("start", "TRIM_HORIZON") or "TRIM_HORIZON",
        at=_parse_at(url.param("at")),
        tail=parse_bool(url.param("tail"), default=True),
        batch=int(url.param("batch", "1000") or 1000),
        poll=parse_duration(url.param("poll", "200ms") or "200ms"),
        parent_wait=parse_duration(url.param("parent_wait", "30s") or "30s"),
    )


def sink_from_url(url: SourceURL, settings: object) -> KinesisSink:
    """``kinesis://stream?endpoint=&region=&partitions=1``."""
    return KinesisSink(
        _stream_name(url),
        endpoint=url.param("endpoint") or None,
        region=url.param("region", "us-east-1") or "us-east-1",
        partitions=int(url.param("partitions", "1") or 1),
    )
