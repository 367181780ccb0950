"""`make run`'s flow: no configuration -> the built-in demo, alerts on stdout, exit 0."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime

from connectors.demo import ANOMALIES, START_MS
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
    summary = proc.stderr.decode().split("\nsummary: ", 1)[1]
    assert summary.startswith(f"{8 * 168 * 60 + 3:,} records read, {len(alerts)} alerts, 3 dead")
    for sensor, (kind, _start, _end) in ANOMALIES.items():
        assert f"  {sensor} {kind} from " in summary and "NOT alerted" not in summary
    assert "other alerts (noise): " in summary


def test_the_summary_warns_of_a_likely_cause(tmp_path) -> None:
    """Epoch seconds read as milliseconds would land in 1970: the summary says why."""
    rows = [
        json.dumps({"sensor_id": "a", "timestamp": 1_767_225_600 + i * 60, "value": 1.0})
        for i in range(50)
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    proc = subprocess.run(
        [PY, "-m", "bytewax.run", "flows.detector"],
        cwd=ROOT,
        env=flow_env(
            AD_SOURCE=f"file://{tmp_path}/in.jsonl",
            AD_TIMESTAMP_UNIT="ms",
            AD_DLQ=f"file://{tmp_path}/dlq.jsonl",
        ),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = proc.stderr.decode()
    assert "summary: 50 records read, 0 alerts, 50 dead letters" in err
    assert "warning: 100% of the records are dead letters" in err and "AD_TIMESTAMP_UNIT" in err
