"""Kafka helpers for tests: produce keyed records, read committed output."""

from __future__ import annotations

import json
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition


def produce(brokers: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    """Produce keyed records (the default partitioner keeps a key in one partition)."""
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
    for key, value in records:
        while True:
            try:
                p.produce(topic, value, key.encode())
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0


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
