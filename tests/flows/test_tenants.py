"""Tenants never share a sensor's state: two tenants with the same sensor ids in one
Kafka topic get exactly the alerts each gets when run alone."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.flowrun import crash_env, init_recovery, make_readings, run_to_completion
from tests.kafka_util import produce, read_committed

pytestmark = pytest.mark.slow


def _tenant(records: list[tuple[str, bytes]], tenant: str, shift: float) -> list:
    out = []
    for key, raw in records:
        body = json.loads(raw)
        body["tenant_id"] = tenant
        body["value"] = body["value"] * shift  # the same sensor ids, different signals
        out.append((f"{tenant}/{key}", json.dumps(body).encode()))
    return out


def test_two_tenants_with_the_same_sensor_ids_are_independent(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    base = make_readings(sensors=4, per_sensor=1500, bad_every=10**9)
    a, b = _tenant(base, "acme", 1.0), _tenant(base, "globex", -3.0)
    both = [r for pair in zip(a, b, strict=True) for r in pair]
    outs = {}
    for name, rows in (("both", both), ("acme", a), ("globex", b)):
        src, alerts, dlq = kafka_topic(2), kafka_topic(2), kafka_topic(1)
        produce(kafka_brokers, src, rows)
        env = crash_env(
            f"kafka://{kafka_brokers}/{src}?tail=false",
            f"kafka://{kafka_brokers}/{alerts}",
            f"kafka://{kafka_brokers}/{dlq}",
            f"tenants-{uuid.uuid4().hex[:6]}",
            AD_DETECTOR="mad",
        )
        run_to_completion(env, init_recovery(tmp_path / name), log=tmp_path / f"{name}.log")
        outs[name] = read_committed(kafka_brokers, alerts)
    for tenant in ("acme", "globex"):
        mine = {r["alert_id"]: r for r in outs["both"] if r["tenant_id"] == tenant}
        alone = {r["alert_id"]: r for r in outs[tenant]}
        diff = [
            (k, f, mine[k][f], alone[k][f])
            for k in mine.keys() & alone.keys()
            for f in mine[k]
            if not f.startswith("_") and mine[k][f] != alone[k][f]
        ]
        assert mine.keys() == alone.keys() and not diff, diff[:3]
        assert len(alone) == 4 * 250  # 1500 readings 10 s apart: 250 windows of 60 s
    same_window = {(r["sensor_id"], r["window_start"]) for r in outs["both"]}
    assert len(same_window) * 2 == len(outs["both"])  # each sensor window twice: 2 tenants


def test_the_registry_refuses_unknown_tenants_and_sets_thresholds(tmp_path: Path) -> None:
    from bytewax.testing import TestingSink, TestingSource, run_main

    from connectors.base import RawRecord
    from flows.detector import build_flow
    from flows.settings import load_settings

    (tmp_path / "tenants.yaml").write_text(
        "default_tenant: shared\n"
        "tenants:\n"
        "  acme: {threshold: 0.0}\n"  # every window is an alert for acme
        "  shared: {}\n"
    )
    rows = []
    for i in range(40):
        for tenant in ("acme", "evil", None):
            body = {"sensor_id": "pump-1", "timestamp": 1_767_225_600_000 + i * 1000, "value": 1.0}
            if tenant:
                body["tenant_id"] = tenant
            rows.append(json.dumps(body).encode())
    alerts: list = []
    dead: list = []
    env = {"AD_WINDOW": "none", "AD_DETECTOR": "mad", "AD_TENANTS": str(tmp_path / "tenants.yaml")}
    run_main(
        build_flow(
            load_settings(env),
            source=TestingSource([[RawRecord(r, "t", "0", str(i))] for i, r in enumerate(rows)]),
            sink=TestingSink(alerts),
            dlq=TestingSink(dead),
        )
    )
    got = [json.loads(r.value) for _k, r in alerts]
    assert {a["tenant_id"] for a in got} == {"acme"} and len(got) == 40  # shared: no alerts
    reasons = [json.loads(r.value)["reason"] for _k, r in dead]
    assert reasons == ["unknown_tenant"] * 40
