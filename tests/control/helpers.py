"""Shared helpers for the control-plane tests: ports, readings, Kafka produce/read."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_readings(
    path: Path | None,
    sensors: int = 4,
    per_sensor: int = 300,
    step_ms: int = 10_000,
    spike_every: int = 97,
) -> list[tuple[str, bytes]]:
    """Deterministic keyed JSON readings (time-major), optionally written as JSON lines."""
    out = []
    for i in range(per_sensor):
        for s in range(sensors):
            v = 10.0 + s + ((i * 7 + s * 3) % 11) * 0.1 + (40.0 if i % spike_every == 50 else 0.0)
            sid = f"sensor-{s:03d}"
            out.append(
                (
                    sid,
                    json.dumps(
                        {
                            "sensor_id": sid,
                            "timestamp": START_MS + i * step_ms,
                            "value": round(v, 3),
                        }
                    ).encode(),
                )
            )
    if path is not None:
        path.write_bytes(b"".join(v + b"\n" for _k, v in out))
    return out


def produce_json(
    brokers: str, topic: str, records: list[tuple[str, bytes]], partition: int | None = None
) -> None:
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "enable.idempotence": True})
    for key, value in records:
        kw: dict[str, Any] = {} if partition is None else {"partition": partition}
        while True:
            try:
                p.produce(topic, value, key.encode(), **kw)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0


def read_topic(brokers: str, topic: str, raw: bool = False) -> list[Any]:
    """Every record of ``topic`` (read_committed) in partition/offset order."""
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "ctl-test",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    md = c.list_topics(topic, timeout=30).topics[topic]
    out: list[Any] = []
    for p in sorted(md.partitions):
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        if hi <= lo:
            continue
        c.assign([TopicPartition(topic, p, lo)])
        idle = 0
        while idle < 6:
            msgs = c.consume(1000, 0.5)
            if not msgs:
                idle += 1
                pos = c.position([TopicPartition(topic, p)])[0].offset
                if pos >= hi:
                    break
                continue
            idle = 0
            for m in msgs:
                if m.error():
                    raise RuntimeError(m.error())
                out.append((p, m.offset(), m.value()) if raw else json.loads(m.value()))
            if msgs[-1].offset() >= hi - 1:
                break
    c.close()
    return out
