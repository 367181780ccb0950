"""Where Kafka producers put a key, and so which key group a sensor calls home.

Producers that key records by sensor id put each sensor in one partition, chosen by
their partitioner from the key:

- ``murmur2``: Kafka's default partitioner (the Java client, Kafka Streams, Flink,
  kafka-python, librdkafka's ``murmur2_random``): ``(murmur2(key) & 0x7fffffff) % n``;
- ``crc32``: librdkafka's default ``consistent_random`` (confluent-kafka for Python, Go,
  .NET): ``crc32(key) % n``.

With ``AD_KEY_BY=auto`` (the default) a sensor's key group is the key group of its
*home* partition, the one its producer's partitioner gives for ``key = sensor_id``
(:class:`Homes`). The home depends on the sensor id alone, never on where a record
happened to arrive, so every record of a sensor reaches the same state whatever the
producers do: records that arrive on their home partition stay on the worker that
read them, and any other record (unkeyed, keyed otherwise, another partitioner) crosses
to its sensor's home worker. Locality is a matter of speed only, never of output.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from connectors import placement

__all__ = ["PARTITIONERS", "Homes", "murmur2", "partitioner_named"]

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (seed ``0x9747b28c``) as an unsigned 32-bit int."""
    n = len(data)
    h = (0x9747B28C ^ n) & _MASK
    end = n - n % 4
    for i in range(0, end, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = n - end
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def _murmur2_partition(key: bytes, n: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % n


def _crc32_partition(key: bytes, n: int) -> int:
    return zlib.crc32(key) % n


#: partitioner name -> (key bytes, partition count) -> partition
PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "murmur2": _murmur2_partition,
    "crc32": _crc32_partition,
}


def partitioner_named(name: str) -> Callable[[bytes, int], int]:
    """The partitioner called ``name`` in :data:`PARTITIONERS`, or a one-line error."""
    pick = PARTITIONERS.get(name)
    if pick is None:
        raise ValueError(
            f"unknown partitioner {name!r}; one of "
            f"{', '.join(PARTITIONERS)}, e.g. kafka://host:9092/sensors?partitioner=murmur2"
        )
    return pick


class Homes:
    """The home key group of each sensor of one topic (``AD_KEY_BY=auto``).

    Args:
        topic: the topic whose partitions are homes (a source's first topic).
        parts: every partition name of the source (``topic#p``): those of ``topic`` are
            the homes, and all of them rank the homes for
            :func:`connectors.placement.partition_group`, as the source names its
            partitions' key groups.
        partitioner: a name in :data:`PARTITIONERS`.
    """

    __slots__ = ("groups", "partitioner", "_pick")

    def __init__(self, topic: str, parts: list[str], partitioner: str) -> None:
        self._pick = partitioner_named(partitioner)
        self.partitioner = partitioner
        count = sum(1 for part in parts if part.rsplit("#", 1)[0] == topic)
        homes = [f"{topic}#{p}" for p in range(count)]
        #: the key group of each partition of ``topic``, by partition number
        self.groups = [placement.partition_group(h, placement.part_rank(h, parts)) for h in homes]

    def group(self, sensor_id: str) -> str:
        """The key group of ``sensor_id``'s home partition."""
        return self.groups[self._pick(sensor_id.encode(), len(self.groups))]
