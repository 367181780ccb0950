"""The compose demo's producer: the demo stream into real Kafka, and the flow on that
topic alerts on the injected anomalies (what `docker compose up` shows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connectors.demo_producer import main
from tests.flowrun import crash_env, init_recovery, run_to_completion
from tests.kafka_util import read_committed


def test_the_produced_demo_raises_alerts(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    src, alerts, dlq = kafka_topic(4), kafka_topic(2), kafka_topic(1)
    assert main([f"kafka://{kafka_brokers}/{src}?rate=100000&loops=2&hours=48"]) == 0
    env = crash_env(
        f"kafka://{kafka_brokers}/{src}?tail=false",
        f"kafka://{kafka_brokers}/{alerts}",
        f"kafka://{kafka_brokers}/{dlq}",
        "demo-producer-test",
    )
    run_to_completion(env, init_recovery(tmp_path / "rec"), log=tmp_path / "log")
    out = [a for a in read_committed(kafka_brokers, alerts) if a["is_anomaly"]]
    assert {a["sensor_id"] for a in out} >= {"sensor-01", "sensor-03"}  # a spike, a shift
    assert {d["reason"] for d in read_committed(kafka_brokers, dlq)} == {
        "undecodable",
        "missing_field",
        "bad_type",
    }
    assert main(["redis://x/y"]) == 2
