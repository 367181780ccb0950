"""Write the demo stream into Kafka, so a fresh ``docker compose up`` shows alerts.

``python -m connectors.demo_producer kafka://kafka:9092/sensors?rate=2000&loops=0`` writes
the demo's readings (``connectors.demo``: 8 sensors, a week of readings with injected
anomalies, keyed by sensor id) at ``rate`` records per second of wall time, then the
next week with the same shape (``loops`` weeks; 0: forever). Event time runs ahead of the
wall clock, so the week's anomalies show within a minute.
"""

from __future__ import annotations

import sys
import time

import orjson
from confluent_kafka import Producer

from connectors.base import parse_url
from connectors.demo import demo_records
from connectors.kafka import client_config, ensure_topic

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Produce the demo stream to the Kafka topic of the URL in ``argv``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m connectors.demo_producer kafka://host:9092/topic?rate=2000&loops=0",
            file=sys.stderr,
        )
        return 2
    url = parse_url(args[0])
    if url.scheme != "kafka" or len(url.names) != 1:
        print(f"error: {url.redacted}: give a kafka:// URL with one topic", file=sys.stderr)
        return 2
    rate, loops = url.float("rate", 2000.0), url.int("loops", 0)
    hours = url.float("hours", 168.0)
    ensure_topic(url.hostport, url.names[0], url.int("partitions", 4, minimum=1))
    producer = Producer(
        {**client_config(url.hostport), "linger.ms": 20, "partitioner": "murmur2_random"}
    )
    week_ms = int(hours * 3600 * 1000)
    loop = 0
    while loops == 0 or loop < loops:
        sent, t0 = 0, time.monotonic()
        for raw in demo_records(0, 1, 8, hours, 60, 7):
            body = orjson.loads(raw) if raw.startswith(b'{"sensor_id') else None
            if body is not None and isinstance(body.get("timestamp"), int):
                body["timestamp"] += loop * week_ms  # the next week, same shape
                raw = orjson.dumps(body)
            key = str(body["sensor_id"]).encode() if body else None
            producer.produce(url.names[0], raw, key=key)
            sent += 1
            if sent % 500 == 0:
                producer.poll(0)
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush()
        print(f"demo week {loop + 1}: {sent} records", file=sys.stderr, flush=True)
        loop += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
