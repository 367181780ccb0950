"""Sensors' home partitions: our partitioners against a real broker's producers, and the
home key groups against the names the Kafka source gives its partitions."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.kafka import KafkaSource
from connectors.kafka_keys import PARTITIONERS, Homes, murmur2
from tests.kafka_util import produce

KEYS = [f"sensor-{i:04d}" for i in range(300)] + ["", "a", "ab", "abc", "t1/pump-7", "é"]


def test_murmur2_matches_kafkas_reference_values() -> None:
    # values of org.apache.kafka.common.utils.Utils.murmur2 (Kafka's UtilsTest), as
    # unsigned 32-bit ints
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


@pytest.mark.parametrize(
    ("ours", "librdkafka"), [("murmur2", "murmur2_random"), ("crc32", "consistent_random")]
)
def test_partitioners_put_keys_where_a_real_producer_does(
    kafka_brokers: str, kafka_topic: Any, ours: str, librdkafka: str
) -> None:
    topic = kafka_topic(7)
    placed = produce(kafka_brokers, topic, [(k, b"{}") for k in KEYS if k], partitioner=librdkafka)
    pick = PARTITIONERS[ours]
    expected = [pick(k.encode(), 7) for k in KEYS if k]
    assert placed == expected
    other = PARTITIONERS["crc32" if ours == "murmur2" else "murmur2"]
    assert placed != [other(k.encode(), 7) for k in KEYS if k]  # the test tells them apart


def test_home_groups_are_the_groups_the_source_names_its_partitions(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(5)
    source = KafkaSource(kafka_brokers, [topic], tail=False)
    parts = source.list_parts()
    names = {}
    for part in parts:
        p = source.build_part("read", part, None)
        try:
            names[int(part.rsplit("#", 1)[1])] = p.snapshot()[1]
        finally:
            p.close()
    homes = Homes(topic, parts, "murmur2")
    assert homes.groups == [names[i] for i in range(5)]
    for key in KEYS:
        assert homes.group(key) == names[PARTITIONERS["murmur2"](key.encode(), 5)]


def test_an_unknown_partitioner_is_one_line_with_an_example() -> None:
    with pytest.raises(ValueError, match=r"unknown partitioner 'fnv'.*\?partitioner=murmur2"):
        KafkaSource("127.0.0.1:9", ["t"], partitioner="fnv")
