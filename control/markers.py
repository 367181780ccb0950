"""Control markers: model switches written *into* the flow's input, one per partition.

The marker codec is ``schemas.markers`` (shared with the flow). Because a marker sits at
an input position, the flow applies the switch at the same point on every replay, so
recovery stays exact.

``push_marker`` writes one marker into every partition of a source URL:

* ``kafka://host:port/topic[,topic]`` — each partition of each topic (explicit partition);
* ``redis://host:port/stream[,stream]`` — ``XADD`` to each stream (field ``?field=``,
  default ``value``);
* ``kinesis://stream?endpoint=...`` — each open shard, via ``ExplicitHashKey``;
* ``file:///path/in.jsonl`` — one line appended (the file is one partition).

Pub/Sub has no partitions or order, so a deterministic switch point cannot be written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from schemas.markers import MARKER_PREFIX, decode_marker, encode_marker

__all__ = [
    "MARKER_PREFIX",
    "MarkerError",
    "announce",
    "decode_marker",
    "encode_marker",
    "push_marker",
]


class MarkerError(RuntimeError):
    """A marker could not be written (unsupported source, broker error)."""


@dataclass(frozen=True)
class Written:
    """Where one marker landed: the partition and its position there."""

    partition: str
    position: str


def _kafka_conf(hostport: str, extra: dict[str, str] | None) -> dict[str, Any]:
    return {
        "bootstrap.servers": hostport,
        "enable.idempotence": True,
        "acks": "all",
        "log_level": 0,
        **(extra or {}),
    }


def _push_kafka(parts: Any, marker: bytes, extra: dict[str, str] | None) -> list[Written]:
    from confluent_kafka import KafkaException, Producer

    hostport = f"{parts.hostname}:{parts.port or 9092}"
    topics = [t for t in parts.path.strip("/").split(",") if t]
    if not parts.hostname or not topics:
        raise MarkerError(f"Kafka source needs host:port/topic, got {parts.geturl()!r}")
    producer = Producer(_kafka_conf(hostport, extra))
    written: list[Written] = []
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
        else:
            written.append(Written(f"{msg.topic()}:{msg.partition()}", str(msg.offset())))

    try:
        md = producer.list_topics(timeout=10)
        for topic in topics:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                raise MarkerError(f"Kafka topic {topic!r} does not exist at {hostport}")
            for p in sorted(tmd.partitions):
                producer.produce(topic, marker, key=b"#adctl", partition=p, on_delivery=on_delivery)
        left = producer.flush(30)
    except KafkaException as exc:
        raise MarkerError(f"Kafka error writing markers to {hostport}: {exc}") from None
    if errors or left:
        raise MarkerError(f"markers not delivered to every partition: {errors or left}")
    return sorted(written, key=lambda w: w.partition)


def _push_redis(parts: Any, query: dict[str, str], marker: bytes) -> list[Written]:
    import redis

    streams = [s for s in unquote(parts.path).strip("/").split(",") if s]
    if not streams:
        raise MarkerError(f"Redis source needs /stream names, got {parts.geturl()!r}")
    client = redis.Redis(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(query.get("db", "0")),
        password=parts.password,
    )
    field = query.get("field", "value")
    out = []
    for s in streams:
        if not client.exists(s):
            raise MarkerError(f"Redis stream {s!r} does not exist")
        out.append(Written(s, client.xadd(s, {field: marker}).decode()))  # type: ignore[union-attr]
    return out


def _push_kinesis(parts: Any, query: dict[str, str], marker: bytes) -> list[Written]:
    import boto3

    stream = unquote(parts.netloc + parts.path).strip("/")
    endpoint = query.get("endpoint") or os.environ.get("AD_KINESIS_ENDPOINT") or None
    client = boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=query.get("region") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = client.list_shards(**kwargs)
        shards.extend(page["Shards"])
        if not page.get("NextToken"):
            break
        kwargs = {"NextToken": page["NextToken"]}
    out = []
    for sh in shards:
        if sh.get("SequenceNumberRange", {}).get("EndingSequenceNumber"):
            continue  # closed shard: nothing reads past its end
        res = client.put_record(
            StreamName=stream,
            Data=marker,
            PartitionKey="adctl",
            ExplicitHashKey=sh["HashKeyRange"]["StartingHashKey"],
        )
        if res["ShardId"] != sh["ShardId"]:
            raise MarkerError(f"marker for {sh['ShardId']} landed in {res['ShardId']}")
        out.append(Written(res["ShardId"], res["SequenceNumber"]))
    return out


def _push_file(parts: Any, marker: bytes) -> list[Written]:
    path = unquote(parts.netloc + parts.path)
    if not os.path.isfile(path):
        raise MarkerError(f"input file {path!r} does not exist")
    with open(path, "ab") as fh:
        pos = fh.tell()
        fh.write(marker + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    return [Written(path, str(pos))]


def push_marker(
    source_url: str, marker: bytes, kafka_conf: dict[str, str] | None = None
) -> list[Written]:
    """Write ``marker`` into every partition of ``source_url``; return where it landed."""
    parts = urlsplit(source_url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "kafka":
        return _push_kafka(parts, marker, kafka_conf)
    if parts.scheme == "redis":
        return _push_redis(parts, query, marker)
    if parts.scheme == "kinesis":
        return _push_kinesis(parts, query, marker)
    if parts.scheme == "file":
        return _push_file(parts, marker)
    if parts.scheme == "pubsub":
        raise MarkerError(
            "Pub/Sub has no ordered partitions, so a model switch cannot be "
            "placed at an input position; use Kafka, Redis Streams or Kinesis"
        )
    raise MarkerError(
        f"cannot write control markers to {source_url!r} "
        "(use kafka://, redis://, kinesis:// or file://)"
    )


def announce(
    bootstrap: str, topic: str, event: dict[str, Any], kafka_conf: dict[str, str] | None = None
) -> None:
    """Publish an audit event (JSON) on the Kafka control topic."""
    from confluent_kafka import KafkaException, Producer

    body = {"ts": time.time(), **event}
    try:
        producer = Producer(_kafka_conf(bootstrap, kafka_conf))
        producer.produce(
            topic,
            json.dumps(body, sort_keys=True).encode(),
            key=str(event.get("detector", "")).encode(),
        )
        left = producer.flush(30)
    except KafkaException as exc:
        raise MarkerError(f"could not announce on {topic!r} at {bootstrap}: {exc}") from None
    if left:
        raise MarkerError(f"announcement on {topic!r} at {bootstrap} was not delivered")
