"""Recent alerts of a tenant through the API, read from a Kafka alert topic shared by
two tenants: only the caller's tenant's alerts, the most recent ``limit`` of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.control.api_server import ApiServer, Issuer
from tests.control.helpers import START_MS, produce_json


def test_alerts_from_a_kafka_topic_are_filtered_by_tenant(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    topic = kafka_topic(2)
    rows = [
        (
            f"s{i % 3}",
            json.dumps(
                {
                    "alert_id": f"a{i}",
                    "tenant_id": "acme" if i % 2 else "globex",
                    "window_end": START_MS + i * 60_000,
                    "score": 0.5,
                }
            ).encode(),
        )
        for i in range(40)
    ]
    # the later alerts first, in another partition: "recent" is by window end, not offset
    produce_json(kafka_brokers, topic, rows[20:], partition=0)
    produce_json(kafka_brokers, topic, rows[:20], partition=1)
    registry = tmp_path / "tenants.yaml"
    sink = f"kafka://{kafka_brokers}/{topic}"
    registry.write_text(yaml.safe_dump({"tenants": {"acme": {"alerts": sink}, "globex": {}}}))
    issuer = Issuer()
    server = ApiServer(tmp_path, issuer, "--registry", str(registry))
    try:
        with server.client(issuer.token("v", "viewer", ["acme"])) as c:
            got = c.get("/v1/tenants/acme/alerts", params={"limit": 5}).json()["alerts"]
            assert [a["alert_id"] for a in got] == ["a31", "a33", "a35", "a37", "a39"]
            every = c.get("/v1/tenants/acme/alerts", params={"limit": 1000}).json()["alerts"]
            assert [a["alert_id"] for a in every] == [f"a{i}" for i in range(1, 40, 2)]
            assert c.get("/v1/tenants/globex/alerts").status_code == 404
        with server.client(issuer.token("g", "viewer", ["globex"])) as c:
            r = c.get("/v1/tenants/globex/alerts")  # no sink of its own, none configured
            assert r.status_code == 409 and "no alert sink" in r.json()["detail"]
    finally:
        server.stop()
