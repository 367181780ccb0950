"""The Kafka source's linger: small polls are held for a few milliseconds and released
as one batch, never blocking, and a snapshot taken meanwhile does not count them read."""

from __future__ import annotations

import time
from typing import Any

from connectors.kafka import KafkaSource
from tests.kafka_util import produce


def _drain(part: Any, until: float) -> list[int]:
    """Batch sizes read until ``until`` or the end of a bounded read."""
    sizes = []
    while time.monotonic() < until:
        try:
            sizes += [len(b) for b in part.next_batch()]
        except StopIteration:
            break
        time.sleep(0.01)
    return sizes


def test_linger_holds_small_polls_and_releases_them_together(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(1)
    source = KafkaSource(kafka_brokers, [topic], tail=True, linger_s=0.5)
    part = source.build_part("read", f"{topic}#0", None)
    try:
        assert _drain(part, time.monotonic() + 1.0) == []
        produce(kafka_brokers, topic, [("k", b'{"n": %d}' % i) for i in range(10)])
        t0 = time.monotonic()
        first: list[int] = []
        while not first and time.monotonic() - t0 < 5:
            first = [len(b) for b in part.next_batch()]
            if not first:
                assert part.snapshot()[0] == 0  # held records are not read yet
                time.sleep(0.02)
        waited = time.monotonic() - t0
        assert first == [10], first  # one batch, not several small ones
        assert 0.3 <= waited < 2.0, waited
        assert part.snapshot()[0] == 10
    finally:
        part.close()


def test_a_full_batch_is_not_held(kafka_brokers: str, kafka_topic: Any) -> None:
    topic = kafka_topic(1)
    produce(kafka_brokers, topic, [("k", b"{}") for _ in range(500)])
    source = KafkaSource(kafka_brokers, [topic], tail=False, batch_size=100, linger_s=30.0)
    part = source.build_part("read", f"{topic}#0", None)
    try:
        sizes = _drain(part, time.monotonic() + 3.0)
    finally:
        part.close()
    assert sum(sizes) == 500 and all(s >= 50 for s in sizes), sizes


def test_a_bounded_read_releases_its_tail_at_the_end(kafka_brokers: str, kafka_topic: Any) -> None:
    topic = kafka_topic(1)
    produce(kafka_brokers, topic, [("k", b"{}") for _ in range(7)])
    source = KafkaSource(kafka_brokers, [topic], tail=False, linger_s=30.0)
    part = source.build_part("read", f"{topic}#0", None)
    got = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 5:
            got += sum(len(b) for b in part.next_batch())
            time.sleep(0.01)
        raise AssertionError("the bounded read did not end")
    except StopIteration:
        pass
    finally:
        part.close()
    assert got == 7 and time.monotonic() - t0 < 5
