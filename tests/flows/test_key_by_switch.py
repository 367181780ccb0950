"""AD_KEY_BY=auto over real Kafka while the producers switch from keyed to unkeyed.

Phase 1: every reading keyed by its sensor (Kafka's default partitioner: each sensor in
its home partition). Phase 2, produced once phase 1 is read: half the sensors unkeyed,
half keyed by another key (``tenant/sensor``), so every reading lands away from home.
Each sensor stays in one partition per phase: Kafka orders a partition only, so a
sensor spread over partitions has no order a replay could reproduce, in any mode.

The run with SIGKILLs in both phases (2 processes, then rescaled to 1 process x 3
workers) must commit exactly what a crash-free run keyed by sensor hash commits: one
state per sensor across the switch, nothing lost or doubled.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from connectors.kafka_keys import PARTITIONERS
from tests.flowrun import (
    START_MS,
    assert_same_output,
    crash_env,
    crash_run,
    init_recovery,
    run_to_completion,
)
from tests.kafka_util import produce, read_committed

pytestmark = pytest.mark.slow

SENSORS = 40
PER_PHASE = 400
PARTS = 4


def _phase(n: int) -> tuple[list[tuple[str | None, bytes]], list[int] | None]:
    """The records of phase ``n`` (1 or 2) and, for phase 2, their partitions."""
    rows: list[tuple[str | None, bytes]] = []
    where: list[int] = []
    for i in range((n - 1) * PER_PHASE, n * PER_PHASE):
        for s in range(SENSORS):
            sid = f"sensor-{s:03d}"
            value = 20 + s + (i % 7) * 0.3 + (25.0 if i % 150 == 149 - s % 10 else 0.0)
            # phase 2 starts a minute on: the end of phase 1's input closed its last window
            ts = START_MS + i * 10_000 + (60_000 if n == 2 else 0)
            body = {"sensor_id": sid, "timestamp": ts, "value": value}
            home = PARTITIONERS["murmur2"](sid.encode(), PARTS)
            if n == 1:
                rows.append((sid, json.dumps(body).encode()))
            elif s % 2:  # unkeyed, placed in another partition than home
                rows.append((None, json.dumps(body).encode()))
                where.append((home + 1 + s % 3) % PARTS)
            else:  # keyed by something else than the sensor id
                key = f"t1/{sid}"
                rows.append((key, json.dumps(body).encode()))
                where.append(PARTITIONERS["murmur2"](key.encode(), PARTS))
    return rows, (where if n == 2 else None)


def _env(brokers: str, src: str, alerts: str, dlq: str, key_by: str) -> dict[str, str]:
    return crash_env(
        f"kafka://{brokers}/{src}?tail=false&batch=200&max_rate=1500",
        f"kafka://{brokers}/{alerts}",
        f"kafka://{brokers}/{dlq}?partitions=2",
        f"flow-{uuid.uuid4().hex[:8]}",
        AD_DETECTOR="mad",
        AD_THRESHOLD="0.8",
        AD_KEY_BY=key_by,
    )


def test_producers_switching_from_keyed_to_unkeyed_keep_one_state_per_sensor(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    src = kafka_topic(PARTS)
    phase1, _ = _phase(1)
    placed = produce(kafka_brokers, src, phase1)
    assert placed == [PARTITIONERS["murmur2"](k.encode(), PARTS) for k, _v in phase1 if k]
    phase2, where = _phase(2)
    assert where is not None

    # reference: crash-free, key groups by sensor hash, the same two phases
    ref_src = kafka_topic(PARTS)
    produce(kafka_brokers, ref_src, phase1)
    ref_alerts, ref_dlq = kafka_topic(4), kafka_topic(2)
    ref_env = _env(kafka_brokers, ref_src, ref_alerts, ref_dlq, "sensor")
    ref_rec = init_recovery(tmp_path / "ref-rec")
    run_to_completion(ref_env, ref_rec, log=tmp_path / "ref.log")
    produce(kafka_brokers, ref_src, phase2, partitions=where)
    run_to_completion(ref_env, ref_rec, log=tmp_path / "ref.log")
    reference = read_committed(kafka_brokers, ref_alerts)
    assert len({r["alert_id"] for r in reference}) == len(reference) == SENSORS * (67 + 68)
    assert sum(1 for r in reference if r["is_anomaly"]) >= 10

    alerts, dlq = kafka_topic(4), kafka_topic(2)
    env = _env(kafka_brokers, src, alerts, dlq, "auto")
    rec, log = init_recovery(tmp_path / "rec"), tmp_path / "flow.log"
    kills = crash_run(
        env, rec, kills=2, processes=2, log=log, seed=3, min_s=1.2, max_s=2.2, timeout=300
    )
    produce(kafka_brokers, src, phase2, partitions=where)
    kills += crash_run(env, rec, kills=2, workers=3, log=log, seed=4, min_s=1.2, max_s=2.2)
    assert kills >= 2, f"only {kills} kills hit a running flow"
    assert_same_output(reference, read_committed(kafka_brokers, alerts), "alert_id")
    assert read_committed(kafka_brokers, dlq) == []
    text = log.read_text()
    assert "runs on another worker" not in text  # homes stayed where their partitions are read
    assert "arrived away from their sensor's home partition" in text
