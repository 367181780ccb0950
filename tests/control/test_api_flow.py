"""The API drives a real flow over Kafka end to end: run, scale 1 -> 2 workers mid-stream
over HTTP, status shows the new parallelism and the input lag, stop; the alerts are
exactly those of an uninterrupted reference run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.control.api_server import ApiServer, Issuer
from tests.control.helpers import produce_json
from tests.control.test_live_update import _by_id, _flow_settings, _readings, _wait_count
from tests.flowrun import flow_env, init_recovery, run_to_completion
from tests.kafka_util import read_committed

pytestmark = pytest.mark.slow


def test_scale_through_the_api_is_exact(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    src, alerts, dlq = kafka_topic(2), kafka_topic(2), kafka_topic(1)
    ref_alerts, ref_dlq = kafka_topic(2), kafka_topic(1)
    rows = _readings()
    half = len(rows) // 2
    issuer = Issuer()
    server = ApiServer(
        tmp_path,
        issuer,
        "--allow-url",
        f"kafka://{kafka_brokers}/",
        "--model-store",
        (tmp_path / "models").as_uri(),
    )
    operator = issuer.token("ops-bot", "operator", ["acme"])
    settings = _flow_settings(kafka_brokers, src, alerts, dlq, tail=True)
    flow_dir = server.state / "flows" / "acme-main"
    try:
        produce_json(kafka_brokers, src, rows[:half])
        with server.client(operator) as c:
            r = c.post(
                "/v1/flows/acme-main/run",
                json={
                    "tenant": "acme",
                    "workers": 1,
                    "processes": 1,
                    "snapshot_interval": 1,
                    "env": settings,
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["workers"] == 1 and r.json()["state"] == "running"
            _wait_count(kafka_brokers, alerts, half, state_dir=flow_dir)
            r = c.post("/v1/flows/acme-main/scale", json={"workers": 2, "timeout": 30})
            assert r.status_code == 200, r.text
            assert (r.json()["workers"], r.json()["processes"]) == (2, 1)
            produce_json(kafka_brokers, src, rows[half:])
            _wait_count(kafka_brokers, alerts, len(rows), state_dir=flow_dir)
            deadline = time.monotonic() + 60
            while True:
                st = c.get("/v1/flows/acme-main", params={"interval": 0.5}).json()
                if st.get("endpoints_up") and st.get("lag"):
                    break
                assert time.monotonic() < deadline, st
                time.sleep(0.5)
            assert (st["state"], st["workers"], st["processes"]) == ("running", 2, 1)
            assert set(st["lag"]) == {f"{src}/0", f"{src}/1"}
            assert st["records_in"] >= len(rows) - half  # since the restart
            time.sleep(2.0)  # let any (wrong) extra output be committed before comparing
            out = read_committed(kafka_brokers, alerts)
            r = c.post("/v1/flows/acme-main/stop", json={"timeout": 30})
            assert r.status_code == 200 and r.json()["clean"], r.text
    finally:
        server.stop()
    log = (flow_dir / "logs" / "flow-0.log").read_text()
    assert log.count("-w 1") == 1 and log.count("-w 2") == 1  # two runs, as asked
    env = flow_env(**_flow_settings(kafka_brokers, src, ref_alerts, ref_dlq, tail=False))
    run_to_completion(env, init_recovery(tmp_path / "ref"), log=tmp_path / "ref.log")
    assert _by_id(out) == _by_id(read_committed(kafka_brokers, ref_alerts))
    audit = server.audit.read_text()
    assert '"action":"flows.scale"' in audit and '"who":"ops-bot"' in audit
