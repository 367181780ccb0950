"""Tenant quotas and a registry switch on real Kafka, SIGKILLed: the committed alerts and
dead letters (``quota_exceeded``, ``sensor_quota``, ``unknown_tenant``) equal a
crash-free run's exactly, and the registry marker (written by ``adctl tenants push``'s
code) applies at its input position on every replay."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.flowrun import (
    CONTROL_KEY,
    START_MS,
    assert_same_output,
    crash_env,
    crash_run,
    init_recovery,
    run_to_completion,
)
from tests.kafka_util import produce, read_committed

pytestmark = pytest.mark.slow

SENSORS, STEPS = 24, 1200


def _rows(tenant_of: Any, steps: range) -> list[tuple[str, bytes]]:
    out = []
    for i in steps:
        for s in range(SENSORS):
            sid = f"sensor-{s:02d}"
            v = 20 + s + (i % 17) * 0.3 + (40.0 if (i * 7 + s) % 397 == 0 else 0.0)
            body = {
                "sensor_id": sid,
                "timestamp": START_MS + i * 10_000 + (s % 5) * 100,
                "value": round(v, 3),
                "tenant_id": tenant_of(s),
            }
            out.append((sid, json.dumps(body).encode()))
    return out


@pytest.fixture(scope="module")
def quota_input(
    kafka_brokers: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, str]]:
    """4 partitions: tenants acme (rate and sensor quota), globex (unknown until the
    registry switch, then a tight rate) and shared; the registry marker mid-stream
    also changes acme's threshold, windows and detector parameters and gives globex
    session windows."""
    from connectors.kafka import ensure_topic
    from control import ops

    tmp = tmp_path_factory.mktemp("quota")
    (tmp / "next.yaml").write_text(
        "tenants:\n"
        "  acme: {threshold: 0.3, quota: {rate: 1.2, burst: 16, max_sensors: 12},\n"
        "         window_size: 30s, detector_params: {window: 32}}\n"
        "  globex: {quota: {rate: 0.4}, window: session, session_gap: 25s}\n"
        "  shared: {}\n"
    )
    topic = f"quota-in-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_brokers, topic, 4)

    def tenant(s: int) -> str:
        return "acme" if s < 16 else "globex" if s < 20 else "shared"

    produce(kafka_brokers, topic, _rows(tenant, range(STEPS // 2)))
    store = f"file://{tmp}/store"
    src = f"kafka://{kafka_brokers}/{topic}"
    import os

    os.environ["AD_CONTROL_KEY"] = CONTROL_KEY
    pushed = ops.push_registry(store, str(tmp / "next.yaml"), src)
    assert len(pushed["markers"]) == 4
    produce(kafka_brokers, topic, _rows(tenant, range(STEPS // 2, STEPS)))
    return topic, {"AD_MODEL_STORE": store}


def _start_registry(path: Path, brokers: str, routed: str) -> str:
    """The registry a run starts with: acme's alerts to a topic of its own (until the
    switch, whose registry routes them to the flow's sink)."""
    path.write_text(
        "tenants:\n"
        "  acme: {quota: {rate: 1.0, burst: 40, max_sensors: 12},\n"
        f"         alerts: 'kafka://{brokers}/{routed}-{{tenant}}?partitions=2',\n"
        f"         dead_letters: 'kafka://{brokers}/{routed}-dlq-{{tenant}}'}}\n"
        "  shared: {}\n"
    )
    return str(path)


def _env(brokers: str, src: str, alerts: str, dlq: str, extra: dict[str, str]) -> dict[str, str]:
    return crash_env(
        f"kafka://{brokers}/{src}?tail=false&batch=200&max_rate=1500",
        f"kafka://{brokers}/{alerts}",
        f"kafka://{brokers}/{dlq}?partitions=2",
        f"quota-{uuid.uuid4().hex[:8]}",
        AD_DETECTOR="mad",
        AD_THRESHOLD="0.8",
        **extra,
    )


@pytest.fixture(scope="module")
def quota_reference(
    kafka_brokers: str,
    quota_input: tuple[str, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict], ...]:
    """The crash-free run: (alerts, dead letters, acme's routed alerts, acme's routed
    dead letters), with the checks that every refusal kind and the switch happened."""
    from connectors.kafka import ensure_topic

    src, extra = quota_input
    tmp = tmp_path_factory.mktemp("quota-ref")
    ref_alerts, ref_dlq = f"qa-{uuid.uuid4().hex[:8]}", f"qd-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_brokers, ref_alerts, 4)
    ref_routed = f"r{uuid.uuid4().hex[:8]}"
    reg = _start_registry(tmp / "ref.yaml", kafka_brokers, ref_routed)
    run_to_completion(
        _env(kafka_brokers, src, ref_alerts, ref_dlq, {**extra, "AD_TENANTS": reg}),
        init_recovery(tmp / "ref"),
        log=tmp / "ref.log",
    )
    alerts, dead = read_committed(kafka_brokers, ref_alerts), read_committed(kafka_brokers, ref_dlq)
    acme = read_committed(kafka_brokers, f"{ref_routed}-acme")
    acme_dead = read_committed(kafka_brokers, f"{ref_routed}-dlq-acme")
    assert acme_dead and {d["reason"] for d in acme_dead} <= {"quota_exceeded", "sensor_quota"}
    # acme's alerts before the switch went to its own topic, after it to the flow's
    assert acme and {a["tenant_id"] for a in acme} == {"acme"}
    assert max(a["window_end"] for a in acme) <= min(
        a["window_end"] for a in alerts if a["tenant_id"] == "acme"
    )
    reasons = Counter(d["reason"] for d in dead + acme_dead)
    # every kind of refusal happened, before and after the registry switch
    assert reasons["quota_exceeded"] > 100 and reasons["sensor_quota"] > 100, reasons
    assert reasons["unknown_tenant"] == 4 * (STEPS // 2), reasons  # globex before the switch
    assert {a["tenant_id"] for a in alerts} >= {"acme", "globex"}
    assert set(reasons) <= {"quota_exceeded", "sensor_quota", "unknown_tenant"}
    return alerts, dead, acme, acme_dead


@pytest.mark.parametrize("processes", [1, 2])
def test_quota_dead_letters_and_alerts_survive_sigkill_exactly(
    kafka_brokers: str,
    kafka_topic: Any,
    quota_input: tuple[str, dict[str, str]],
    quota_reference: tuple[list[dict], ...],
    tmp_path: Path,
    processes: int,
) -> None:
    """1 process, or 2 processes (-i/-a) killed together; each run 3 times."""
    src, extra = quota_input
    ref_alerts, ref_dead, ref_acme, ref_acme_dead = quota_reference
    alerts, dlq, routed = kafka_topic(4), kafka_topic(2), f"r{uuid.uuid4().hex[:8]}"
    reg = _start_registry(tmp_path / "crash.yaml", kafka_brokers, routed)
    kills = crash_run(
        _env(kafka_brokers, src, alerts, dlq, {**extra, "AD_TENANTS": reg}),
        init_recovery(tmp_path / "rec"),
        kills=3,
        processes=processes,
        log=tmp_path / "flow.log",
        seed=3 + processes,
        min_s=1.0 + 0.5 * processes,
        max_s=3.0 + 0.5 * processes,
    )
    assert kills >= 3, f"only {kills} kills hit a running flow"
    assert_same_output(ref_alerts, read_committed(kafka_brokers, alerts), "alert_id")
    assert_same_output(ref_dead, read_committed(kafka_brokers, dlq), "dlq_id")
    assert_same_output(ref_acme, read_committed(kafka_brokers, f"{routed}-acme"), "alert_id")
    assert_same_output(ref_acme_dead, read_committed(kafka_brokers, f"{routed}-dlq-acme"), "dlq_id")
