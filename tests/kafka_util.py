"""Kafka helpers for tests: produce keyed records, read committed output."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def produce(
    brokers: str,
    topic: str,
    records: list[tuple[str | None, bytes]] | list[tuple[str, bytes]],
    partitions: list[int] | None = None,
    partitioner: str = "murmur2_random",
) -> list[int]:
    """Produce keyed records (Kafka's default partitioner, murmur2, keeps a key in one
    partition; ``partitions`` places each record explicitly). Returns each record's
    partition, in order.
    """
    p = Producer(
        {
            "bootstrap.servers": brokers,
            "linger.ms": 20,
            "enable.idempotence": True,
            "partitioner": partitioner,
        }
    )
    placed: dict[int, int] = {}

    def done(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            assert err is None, err
            placed[i] = msg.partition()

        return cb

    for i, (key, value) in enumerate(records):
        kw: dict[str, Any] = {"on_delivery": done(i)}
        if partitions is not None:
            kw["partition"] = partitions[i]
        while True:
            try:
                p.produce(topic, value, None if key is None else key.encode(), **kw)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0
    return [placed[i] for i in range(len(records))]


def read_committed(brokers: str, topic: str) -> list[dict[str, Any]]:
    """Every committed record of ``topic`` (read_committed), as dicts with metadata."""
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "test-reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    md = c.list_topics(topic, timeout=30).topics[topic]
    parts = sorted(md.partitions)
    ends = {}
    for p in parts:
        _lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        ends[p] = hi
    c.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
    pending = {p for p in parts if ends[p] > 0}
    out: list[dict[str, Any]] = []
    while pending:
        for msg in c.consume(5000, 2.0):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(err)
            body = json.loads(msg.value())
            body["_partition"] = msg.partition()
            body["_offset"] = msg.offset()
            body["_key"] = (msg.key() or b"").decode()
            out.append(body)
    c.close()
    return out
