"""AD_DOGSTATSD: the flow's metrics reach a DogStatsD agent (a real UDP socket here),
tagged by tenant."""

from __future__ import annotations

import socket
import subprocess

from tests.flowrun import PY, ROOT, flow_env


def test_the_demo_flow_sends_its_metrics_tagged_by_tenant() -> None:
    agent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    agent.bind(("127.0.0.1", 0))
    agent.settimeout(0.5)
    port = agent.getsockname()[1]
    proc = subprocess.run(
        [PY, "-W", "ignore", "-m", "bytewax.run", "flows.detector"],
        cwd=ROOT,
        env=flow_env(AD_DOGSTATSD=f"127.0.0.1:{port}"),
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines: list[str] = []
    try:
        while True:
            lines += agent.recv(65536).decode().splitlines()
    except TimeoutError:
        pass
    alerts = [ln for ln in lines if ln.startswith("ad_alerts_total:")]
    assert alerts and all("|c|#" in ln and "tenant:demo" in ln for ln in alerts), lines[:5]
    readings = sum(
        float(ln.split(":")[1].split("|")[0]) for ln in lines if ln.startswith("ad_readings_total:")
    )
    assert readings == 8 * 168 * 60  # every valid demo reading, counted once
    bad = [ln for ln in lines if ln.startswith("ad_dead_letters_total:")]
    assert any("reason:undecodable" in ln for ln in bad)
