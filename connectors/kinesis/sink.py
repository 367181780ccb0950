"""The Kinesis sink: ``PutRecords`` with replay de-duplication (see the package docstring)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, TypedDict

import botocore.exceptions as bexc
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from connectors.base import (
    ConnectorContext,
    OutRecord,
    SourceURL,
)
from connectors.kinesis.client import (
    _CONNECTION_ERRORS,
    _THROTTLED,
    ID_FIELDS,
    MAX_BYTES_PER_PUT,
    MAX_BYTES_PER_RECORD,
    MAX_RECORDS_PER_PUT,
    _code,
    _stream_name,
    iterator_since,
    list_shards,
    make_client,
)

log = logging.getLogger(__name__)


class SinkState(TypedDict):
    """Resume state of a sink partition: sequence numbers, time and records to skip."""

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
            it, not_before = iterator_since(client, stream, sid, since)
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

    Args:
        stream: the stream written.
        endpoint: the Kinesis endpoint URL (``None``: AWS's for ``region``).
        region: the AWS region.
        partitions: how many Bytewax partitions write to the stream.
        retry_for: seconds to keep retrying failed puts before the flow fails.
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
        """The configured number of writer partitions."""
        return [str(i) for i in range(self._parts)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: SinkState | None
    ) -> _KinesisSinkPartition:
        """A writer partition with its own Kinesis client."""
        client = make_client(self._endpoint, self._region)
        return _KinesisSinkPartition(client, self._stream, resume_state, self._retry_for)


def sink_from_url(url: SourceURL, ctx: ConnectorContext) -> KinesisSink:
    """``kinesis://stream?endpoint=&region=&partitions=1``."""
    return KinesisSink(
        _stream_name(url),
        endpoint=url.text("endpoint", "") or None,
        region=url.text("region", "us-east-1"),
        partitions=url.int("partitions", 1, minimum=1),
    )
