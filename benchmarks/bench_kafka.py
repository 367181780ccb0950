"""Kafka side of the throughput benchmark: input data, the raw consume->produce ceiling,
paced producing, and a read_committed watcher of the output topic.

``python -m benchmarks.bench_kafka ceiling BROKERS IN OUT BATCH`` runs the ceiling in its
own process and prints one JSON line (used by benchmarks.throughput).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOW_MS = 60_000


def sensor_id(i: int) -> str:
    return f"sensor-{i:07d}"


def reading(i: int, k: int, interval_ms: int, phase_ms: int = 0) -> bytes:
    """The k-th JSON reading of sensor ``i`` (deterministic, a noisy sine per sensor)."""
    v = 20.0 + (i % 50) + 5.0 * math.sin(k / 90.0 + i) + ((k * 7919 + i * 104729) % 1000) / 1e3
    body = orjson.dumps(
        {
            "sensor_id": sensor_id(i),
            "timestamp": START_MS + phase_ms + k * interval_ms,
            "value": round(v, 4),
            "tenant_id": f"t{i % 10}",
        }
    )
    # a copy: each orjson.dumps result keeps ~4 KB resident while alive (measured with
    # orjson 3.13), which matters when the latency run holds a million of them
    return bytes(memoryview(body))


def dataset(records: int, sensors: int, interval_ms: int) -> Iterator[tuple[bytes, bytes]]:
    """``records`` readings over ``sensors`` sensors in event-time order (round robin)."""
    n = 0
    k = 0
    while n < records:
        for i in range(sensors):
            if n >= records:
                return
            yield sensor_id(i).encode(), reading(i, k, interval_ms)
            n += 1
        k += 1


def producer(brokers: str, **extra: Any) -> Producer:
    conf = {
        "bootstrap.servers": brokers,
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "enable.idempotence": True,
        "partitioner": "murmur2_random",  # Kafka's default (the Java client's)
    }
    conf.update(extra)
    return Producer(conf)


def produce_all(brokers: str, topic: str, items: Any, partition: int | None = None) -> int:
    """Produce (key, value) pairs; returns the count. Raises if any delivery fails."""
    p = producer(brokers)
    errors: list[str] = []

    def cb(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    n = 0
    kw = {} if partition is None else {"partition": partition}
    for key, value in items:
        while True:
            try:
                p.produce(topic, value, key, on_delivery=cb, **kw)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10000 == 0:
            p.poll(0)
    if p.flush(120) != 0 or errors:
        raise RuntimeError(f"producing to {topic} failed: {errors[:3]}")
    return n


def partitions(brokers: str, topic: str) -> list[int]:
    md = AdminClient({"bootstrap.servers": brokers}).list_topics(timeout=30)
    return sorted(md.topics[topic].partitions)


def delete_topics(brokers: str, topics: list[str]) -> None:
    if not topics:
        return
    admin = AdminClient({"bootstrap.servers": brokers})
    for fut in admin.delete_topics(topics, operation_timeout=30).values():
        with contextlib.suppress(Exception):  # best-effort cleanup
            fut.result()


def ceiling(brokers: str, src: str, dst: str, batch: int) -> dict[str, Any]:
    """Raw consume -> produce of every record of ``src`` (batch consume, no processing),
    with the flow source's consumer settings (one consumer for all partitions) and the
    flow sink's producer settings (less transactions). Timed from the first record read
    to the last one delivered.
    """
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "bench-ceiling",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": "50",
            "queued.min.messages": "20000",
            "fetch.queue.backoff.ms": "10",
        }
    )
    parts = partitions(brokers, src)
    c.assign([TopicPartition(src, p, 0) for p in parts])
    p = Producer({"bootstrap.servers": brokers, "linger.ms": 5, "compression.type": "lz4"})
    left = set(parts)
    n = 0
    first = None
    produce = p.produce
    while left:
        msgs = c.consume(batch, 0.1)
        for m in msgs:
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    left.discard(m.partition())
                    continue
                raise RuntimeError(m.error())
            if first is None:
                first = time.time()
            while True:
                try:
                    produce(dst, m.value(), m.key())
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
        p.poll(0)
    if p.flush(120) != 0:
        raise RuntimeError("ceiling: undelivered records")
    end = time.time()
    c.close()
    return {"records": n, "seconds": end - (first or end)}


class Watcher(threading.Thread):
    """Reads ``topic`` read_committed from the beginning and timestamps every record
    when it becomes visible: ``seen`` is a list of (wall time, parsed JSON body).

    Args:
        brokers: the bootstrap servers (``host:port``).
        topic: the topic watched.
    """

    def __init__(self, brokers: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.c = Consumer(
            {
                "bootstrap.servers": brokers,
                "group.id": "bench-watch",
                "enable.auto.commit": "false",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": "10",
            }
        )
        self.c.assign([TopicPartition(topic, p, 0) for p in partitions(brokers, topic)])
        self.seen: list[tuple[float, bytes]] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop.is_set():
            # a short timeout: librdkafka returns a batch only when it is full or the
            # timeout ends, and what waits here counts as latency
            msgs = self.c.consume(10000, 0.01)
            now = time.time()
            got = [(now, m.value()) for m in msgs if m.error() is None]
            if got:
                with self.lock:
                    self.seen.extend(got)
        self.c.close()

    def bodies(self) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, orjson.loads(v)) for t, v in self.seen]


def iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def paced_produce(
    brokers: str,
    topic: str,
    payloads: list[tuple[bytes, bytes]],
    rate: float,
    times: list[float],
    tick: float = 0.01,
) -> float:
    """Produce ``payloads`` at ``rate`` records/s in ticks; ``times[i]`` gets the wall time
    at which record ``i`` was handed to the producer (to within one tick's work); returns
    the records/s achieved (first record to all delivered). Each tick's records go in
    one ``produce_batch`` call: the generator's own CPU is taken from the same cores as
    the flow's, so it is kept as small as the client allows.
    """
    p = producer(brokers, **{"linger.ms": 5, "enable.idempotence": False})
    per_tick = max(1, int(rate * tick))
    msgs = [{"key": key, "value": value} for key, value in payloads]
    # millions of live objects: a full collection would stall the generator (and the
    # watcher thread) for a second or more, which would count as the flow's latency
    gc.collect()
    gc.freeze()
    try:
        return _paced(p, topic, msgs, rate, times, per_tick)
    finally:
        gc.unfreeze()


def _paced(
    p: Producer,
    topic: str,
    msgs: list[dict[str, bytes]],
    rate: float,
    times: list[float],
    per_tick: int,
) -> float:
    t0 = time.time()
    i = 0
    n = len(msgs)
    while i < n:
        due = t0 + (i / rate)
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        j = min(n, i + per_tick)
        chunk = msgs[i:j]
        while chunk:
            try:
                sent = p.produce_batch(topic, chunk)
            except BufferError:  # the queue is full: nothing was taken, try it all again
                p.poll(0.01)
                continue
            if sent == len(chunk):
                break
            chunk = [m for m in chunk if "_error" in m]  # the ones the queue refused
            for m in chunk:
                del m["_error"]
            p.poll(0.01)
        times[i:j] = [now] * (j - i)
        p.poll(0)
        i = j
    if p.flush(60) != 0:
        raise RuntimeError(f"producing to {topic}: records still queued after 60 s")
    return n / (time.time() - t0)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "ceiling":
        brokers, src, dst, batch = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
        print(json.dumps(ceiling(brokers, src, dst, batch)))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
