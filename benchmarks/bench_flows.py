"""Dataflows the throughput benchmark runs with ``python -m bytewax.run``.

- ``benchmarks.bench_flows:detector_flow()``: the product's flow (``flows.detector.
  build_flow`` with the configured ``AD_*`` settings), its source wrapped in a
  pass-through that notes when the first record was read and how many were read.
- ``benchmarks.bench_flows:baseline_flow()``: the naive per-item pipeline, Bytewax's own
  KafkaSource -> map(json.loads) -> key_on -> stateful_map (running z-score per sensor)
  -> filter -> Bytewax's KafkaSink (at-least-once), with the same pass-through.

The pass-through appends lines ``built|first|end <part> <wall time> [<records>]`` to
``$BENCH_MARKS``; it costs one branch per batch (per item for the baseline).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition


def _mark(kind: str, part: str, extra: str = "") -> None:
    path = os.environ.get("BENCH_MARKS")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{kind} {part} {time.time():.6f} {extra}\n")


class _TimedPart(StatefulSourcePartition):
    def __init__(self, inner: Any, part: str, size: Callable[[Any], int]) -> None:
        self._inner = inner
        self._part = part
        self._size = size
        self._n = 0
        self._first = False

    def next_batch(self) -> list[Any]:
        try:
            batch = self._inner.next_batch()
        except StopIteration:
            _mark("end", self._part, str(self._n))
            raise
        if batch:
            if not self._first:
                self._first = True
                _mark("first", self._part)
            size = self._size
            for item in batch:
                self._n += size(item)
        return batch

    def next_awake(self) -> Any:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class TimedSource(FixedPartitionedSource):
    """Pass-through around a ``FixedPartitionedSource`` that writes timing marks.

    Args:
        inner: the source timed.
        size: how many records an emitted item holds.
    """

    def __init__(self, inner: FixedPartitionedSource, size: Callable[[Any], int]) -> None:
        self._inner = inner
        self._size = size

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _TimedPart:
        part = self._inner.build_part(step_id, for_part, resume_state)
        _mark("built", for_part)
        return _TimedPart(part, for_part, self._size)


def detector_flow() -> Any:
    """The product flow from ``AD_*`` settings, with a timed source, set up as
    ``python -m bytewax.run flows.detector`` sets up its process (``serve``: the metrics
    server, the garbage collector's tuning).
    """
    from connectors import make_source
    from flows.detector import build_flow
    from flows.settings import load_settings

    s = load_settings()
    source = TimedSource(make_source(s.source, s.connector_context()), len)
    return build_flow(s, source=source, serve=True)


def baseline_flow() -> Any:
    """The naive per-item pipeline (``BENCH_BROKERS``, ``BENCH_IN``, ``BENCH_OUT``)."""
    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
    from bytewax.dataflow import Dataflow

    brokers, src, dst = (
        os.environ["BENCH_BROKERS"],
        os.environ["BENCH_IN"],
        os.environ["BENCH_OUT"],
    )
    flow = Dataflow("naive-baseline")
    source = KafkaSource([brokers], [src], tail=False, batch_size=2000)
    msgs = op.input("in", flow, TimedSource(source, lambda _m: 1))
    parsed = op.map("parse", msgs, lambda m: json.loads(m.value))
    keyed = op.key_on("key", parsed, lambda r: r["sensor_id"])

    def zscore(state: list[float] | None, r: dict[str, Any]) -> tuple[list[float], Any]:
        # Welford running mean / variance per sensor; z of the new value against it
        n, mean, m2 = state or (0.0, 0.0, 0.0)
        x = float(r["value"])
        z = (x - mean) / (m2 / (n - 1)) ** 0.5 if n > 1 and m2 > 0 else 0.0
        n += 1.0
        d = x - mean
        mean += d / n
        m2 += d * (x - mean)
        return [n, mean, m2], (r, z)

    scored = op.stateful_map("score", keyed, zscore)
    alerts = op.filter("alerts", scored, lambda kv: abs(kv[1][1]) > 4.0)
    out = op.map(
        "out",
        alerts,
        lambda kv: KafkaSinkMessage(
            kv[0].encode(), json.dumps({**kv[1][0], "z": kv[1][1]}).encode()
        ),
    )
    op.output("sink", out, KafkaSink([brokers], dst))
    return flow
