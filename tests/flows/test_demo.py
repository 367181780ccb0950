"""`make run`'s flow: no configuration -> the built-in demo, alerts on stdout, exit 0."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime

from connectors.demo import ANOMALIES, START_MS
from detectors.base import REASONS
from tests.flowrun import PY, ROOT, flow_env


def test_demo_alerts_on_every_injected_anomaly() -> None:
    proc = subprocess.run(
        [PY, "-m", "bytewax.run", "flows.detector"],
        cwd=ROOT,
        env=flow_env(),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    alerts = [json.loads(line) for line in proc.stdout.splitlines()]
    dead = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith(b"{")]
    assert {d["reason"] for d in dead} == {"undecodable", "missing_field", "bad_type"}
    hours = 168
    for sensor, (_kind, start, _end) in ANOMALIES.items():
        t0 = START_MS / 1000 + start * hours * 3600
        hits = [
            a
            for a in alerts
            if a["sensor_id"] == sensor
            and 0 <= datetime.fromisoformat(a["window_start"]).timestamp() - t0 <= 3 * 3600
        ]
        assert hits, f"no alert within 3 h after the {sensor} anomaly"
        assert all(0.0 <= a["score"] <= 1.0 and len(a["alert_id"]) == 32 for a in hits)
    for a in alerts:  # every alert says why
        why = a["explain"]
        assert why["component"] in ("novelty", "regime") and why["reason"] in REASONS
        assert why["expected"][0] < why["expected"][1]
