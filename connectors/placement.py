"""Where Bytewax runs things: key groups named to live on the worker that reads their input.

Bytewax (0.21) places work deterministically:

- a ``FixedPartitionedSource``'s partitions, sorted by name, go to the workers in turn:
  the partition of rank ``r`` is read by worker ``r % W`` (``W`` workers in all);
- a stateful step's key ``k`` lives on worker ``siphash13(k) % W``: Rust's default
  hasher over the key's UTF-8 bytes and a ``0xff`` terminator (``Hash for str``).

``tests/connectors/test_placement.py`` checks both against a running Bytewax cluster.

With key groups by input partition (``AD_KEY_BY=partition``) each partition's group is
named so that it hashes to the worker reading the partition: ``partition_group`` picks
``<partition>~<n>`` with ``siphash13 ≡ rank (mod 840)``. 840 is the least common multiple
of 1..8, so the name is right for any worker count that divides 840 (every count up to
8, and 10, 12, 14, 15, 20, 21, 24, 28, 30, ...) and does not depend on the worker count:
a flow can be rescaled and its state keeps its key. For other worker counts, or if a
Bytewax upgrade changes its placement, the output is the same and only the locality is
lost; ``note_reader`` / ``is_local`` let the flow notice and say so.
"""

from __future__ import annotations

import struct
import threading
from functools import lru_cache

__all__ = ["route", "partition_group", "part_rank", "note_reader", "is_local", "MODULUS"]

#: lcm(1..8): a group name placed for this modulus is placed for every divisor of it
MODULUS = 840

_M64 = (1 << 64) - 1
_INIT = (0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with a zero key: Rust's ``DefaultHasher::new()``."""
    v0, v1, v2, v3 = _INIT

    def sip_round() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _M64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = struct.unpack_from("<Q", data, i)[0]
        v3 ^= m
        sip_round()
        v0 ^= m
    last = (n & 0xFF) << 56
    for i, byte in enumerate(data[end:]):
        last |= byte << (8 * i)
    v3 ^= last
    sip_round()
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        sip_round()
    return v0 ^ v1 ^ v2 ^ v3


def route(key: str, workers: int) -> int:
    """The worker (of ``workers``) on which Bytewax keeps a stateful step's ``key``."""
    return siphash13(key.encode() + b"\xff") % workers


def part_rank(part: str, parts: list[str]) -> int:
    """The rank that decides which worker reads ``part`` (rank % workers)."""
    return sorted(parts).index(part)


@lru_cache(maxsize=4096)
def partition_group(part: str, rank: int) -> str:
    """The key-group name for the input partition ``part`` of ``rank``: it lives on the
    worker that reads the partition, for every worker count dividing ``MODULUS``.
    """
    want = rank % MODULUS
    n = 0
    while True:
        name = f"{part}~{n}"
        if siphash13(name.encode() + b"\xff") % MODULUS == want:
            return name
        n += 1


_readers: dict[str, int] = {}


def note_reader(group: str) -> None:
    """Record that this thread (a Bytewax worker) reads the partition of ``group``."""
    _readers[group] = threading.get_ident()


def is_local(group: str) -> bool:
    """Whether ``group`` runs on the worker that reads its partition (in this process)."""
    return _readers.get(group) == threading.get_ident()
