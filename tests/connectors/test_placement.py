"""connectors.placement predicts where a running Bytewax puts partitions and keys.

If a Bytewax upgrade changes its placement, these fail (the flow's output would not
change, only its locality with AD_KEY_BY=partition)."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import cluster_main

from connectors import placement

PARTS = [f"sensors#{i}" for i in range(12)]  # "sensors#10" sorts before "sensors#2"
KEYS = [f"k{i}" for i in range(40)]


class _Part(StatefulSourcePartition):
    def __init__(self, name: str, seen: dict) -> None:
        self.name = name
        self.done = False
        seen["part", name] = threading.get_ident()

    def next_batch(self) -> list[str]:
        if self.done:
            raise StopIteration
        self.done = True
        rank = placement.part_rank(self.name, PARTS)
        return [*KEYS, placement.partition_group(self.name, rank)]

    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource):
    def __init__(self, seen: dict) -> None:
        self.seen = seen

    def list_parts(self) -> list[str]:
        return list(PARTS)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _Part:
        return _Part(for_part, self.seen)


def _observe(workers: int) -> dict:
    seen: dict = {}

    def on_key(state: Any, key: str) -> tuple[None, None]:
        seen["key", key] = threading.get_ident()
        return None, None

    flow = Dataflow("placement-probe")
    keyed = op.key_on("key", op.input("in", flow, _Source(seen)), lambda k: k)
    op.inspect("sink", op.stateful_map("state", keyed, on_key), lambda *_: None)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return seen


@pytest.mark.parametrize("workers", [2, 3, 5])
def test_partitions_and_keys_land_where_placement_says(workers: int) -> None:
    seen = _observe(workers)
    # worker index -> its thread, from the partitions it read (rank % workers)
    thread_of: dict[int, set] = defaultdict(set)
    for part in PARTS:
        thread_of[placement.part_rank(part, PARTS) % workers].add(seen["part", part])
    assert all(len(t) == 1 for t in thread_of.values()) and len(thread_of) == workers
    threads = {w: t.pop() for w, t in thread_of.items()}
    assert len(set(threads.values())) == workers
    for key in KEYS:
        assert seen["key", key] == threads[placement.route(key, workers)], key
    # each partition's key group lives on the thread that read the partition
    for rank, part in enumerate(sorted(PARTS)):
        group = placement.partition_group(part, rank)
        assert seen["key", group] == seen["part", part]


def test_group_names_hold_for_every_worker_count_dividing_the_modulus() -> None:
    names = {p: placement.partition_group(p, r) for r, p in enumerate(sorted(PARTS))}
    for workers in (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 15, 20, 24):
        for rank, part in enumerate(sorted(PARTS)):
            assert placement.route(names[part], workers) == rank % workers
    assert len(set(names.values())) == len(PARTS)
    assert placement.siphash13(b"") == 0xD1FBA762150C532C  # SipHash-1-3, zero key
