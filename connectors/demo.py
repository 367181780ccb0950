"""The built-in demo stream: deterministic, several sensors, anomalies injected.

``demo://?sensors=8&hours=168&step=60&seed=7`` — each sensor reads a daily seasonal
signal plus noise every ``step`` seconds of event time, starting 2026-01-01T00:00Z.
Injected: spikes (sensor-01), a level shift (sensor-03), a drift (sensor-05), a
stuck-then-burst pattern (sensor-07), and three malformed records for the dead-letter
sink. The same URL always yields the same bytes.
"""

from __future__ import annotations

import numpy as np
import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.base import ConnectorContext, RawRecord, SourceURL

__all__ = ["ANOMALIES", "DemoSource", "demo_records", "injected", "source_from_url"]

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
#: sensor -> (kind, start fraction of the series, end fraction)
ANOMALIES = {
    "sensor-01": ("spike", 0.55, 0.552),
    "sensor-03": ("level_shift", 0.62, 1.0),
    "sensor-05": ("drift", 0.70, 1.0),
    "sensor-07": ("burst", 0.80, 0.81),
}


def injected(url: SourceURL) -> list[tuple[str, str, int, int]]:
    """The anomalies a demo URL injects: ``(sensor, kind, start ms, end ms)``."""
    sensors, hours = url.int("sensors", 8, minimum=1), url.float("hours", 168.0)
    step_ms = url.int("step", 60, minimum=1) * 1000
    n = int(hours * 3600 * 1000 // step_ms)
    out = []
    for name, (kind, a, b) in ANOMALIES.items():
        if int(name.split("-")[1]) < sensors:
            i, j = int(a * n), max(int(b * n), int(a * n) + 1)
            out.append((name, kind, START_MS + i * step_ms, START_MS + j * step_ms))
    return out


def _series(sensor: int, n: int, step_s: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, sensor])
    t = np.arange(n) * step_s
    base = 50.0 + 5.0 * sensor
    amp = 8.0 + sensor
    x = base + amp * np.sin(2 * np.pi * t / 86400.0 + sensor) + rng.normal(0, 1.0, n)
    name = f"sensor-{sensor:02d}"
    if name in ANOMALIES:
        kind, a, b = ANOMALIES[name]
        i, j = int(a * n), max(int(b * n), int(a * n) + 1)
        if kind == "spike":
            x[i:j] += 40.0
        elif kind == "level_shift":
            x[i:] += 25.0
        elif kind == "drift":
            x[i:] += np.linspace(0, 60.0, n - i)
        elif kind == "burst":
            x[i:j] += rng.normal(0, 25.0, j - i)
    return x


def demo_records(
    part: int, parts: int, sensors: int, hours: float, step_s: int, seed: int
) -> list[bytes]:
    """All records of one demo partition, in event-time order (sensors interleaved)."""
    n = int(hours * 3600 // step_s)
    mine = [s for s in range(sensors) if s % parts == part]
    series = {s: _series(s, n, step_s, seed) for s in mine}
    out: list[bytes] = []
    for i in range(n):
        ts = START_MS + i * step_s * 1000
        for s in mine:
            out.append(
                orjson.dumps(
                    {
                        "sensor_id": f"sensor-{s:02d}",
                        "timestamp": ts,
                        "value": round(float(series[s][i]), 4),
                        "tenant_id": "demo",
                    }
                )
            )
    if part == 0 and out:  # a few bad records, so the dead-letter path shows itself
        k = len(out) // 3
        out[k:k] = [
            b"{not json",
            orjson.dumps({"sensor_id": "sensor-00", "value": 1.0}),
            b'{"sensor_id": "sensor-00", "timestamp": 1767225600000, "value": "NaN?"}',
        ]
    return out


class _DemoPartition(StatefulSourcePartition[list[RawRecord], int]):
    def __init__(
        self, name: str, records: list[bytes], resume_state: int | None, batch: int
    ) -> None:
        self._name = name
        self._records = records
        self._i = resume_state or 0
        self._batch = batch

    def next_batch(self) -> list[list[RawRecord]]:
        if self._i >= len(self._records):
            raise StopIteration
        j = min(self._i + self._batch, len(self._records))
        out = [RawRecord(self._records[k], "demo", self._name, str(k)) for k in range(self._i, j)]
        self._i = j
        return [out]

    def snapshot(self) -> int:
        return self._i


class DemoSource(FixedPartitionedSource[list[RawRecord], int]):
    """The demo stream in ``parts`` partitions. Resume state: index of the next record.

    Args:
        sensors: how many sensors the stream has.
        hours: how many hours of readings each sensor gets.
        step_s: seconds between two readings of a sensor.
        seed: the seed of the noise and of the injected anomalies.
        parts: how many partitions the stream is split into.
        batch: records per emitted batch.
    """

    def __init__(
        self,
        sensors: int = 8,
        hours: float = 168,
        step_s: int = 60,
        seed: int = 7,
        parts: int = 2,
        batch: int = 1000,
    ) -> None:
        self._args = (sensors, hours, step_s, seed)
        self._parts = parts
        self._batch = batch

    def list_parts(self) -> list[str]:
        """One partition per generator shard."""
        return [str(p) for p in range(self._parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _DemoPartition:
        """The generator for shard ``for_part``, resumed at record ``resume_state``."""
        recs = demo_records(int(for_part), self._parts, *self._args)
        return _DemoPartition(for_part, recs, resume_state, self._batch)


def source_from_url(url: SourceURL, ctx: ConnectorContext) -> DemoSource:
    """Demo source from a ``demo://`` URL (sensors, hours, step, seed, …)."""
    return DemoSource(
        sensors=url.int("sensors", 8, minimum=1),
        hours=url.float("hours", 168.0),
        step_s=url.int("step", 60, minimum=1),
        seed=url.int("seed", 7),
    )
