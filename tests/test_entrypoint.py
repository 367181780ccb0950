"""The container's entrypoint (docker/entrypoint.sh) run as it is, without an engine: by
default one Bytewax process per core, with the same output as one process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from control.launch import cores, free_ports
from tests.flowrun import ROOT, flow_env, make_readings

pytestmark = pytest.mark.slow


def _free_run(n: int) -> int:
    """A port with the ``n - 1`` ports after it free too: the entrypoint gives process
    ``i`` the port ``AD_CLUSTER_PORT + i``.
    """
    for _ in range(100):
        base = free_ports(1)[0]
        if base + n >= 65536:
            continue
        socks = []
        try:
            for i in range(n):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError("no run of free ports found")


def _run(tmp: Path, name: str, **env: str) -> tuple[list[dict], str]:
    out = tmp / f"{name}.jsonl"
    proc = subprocess.run(
        ["bash", str(ROOT / "docker" / "entrypoint.sh")],
        cwd=ROOT,
        env=flow_env(
            AD_SOURCE=f"file://{tmp / 'in.jsonl'}",
            AD_SINK=f"file://{out}",
            AD_DLQ=f"file://{tmp / name}-dlq.jsonl",
            AD_EMIT="all",
            AD_WINDOW="tumbling",
            AD_WINDOW_SIZE="60s",
            AD_DETECTOR="mad",
            AD_RECOVERY_DIR=str(tmp / f"{name}-rec"),
            AD_CLUSTER_PORT=str(_free_run(max(2, cores()))),
            AD_METRICS_PORT="0",
            PYTHON=sys.executable,
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return sorted(rows, key=lambda r: r["alert_id"]), proc.stdout + proc.stderr


def test_entrypoint_runs_one_process_per_core_with_the_output_of_one(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        b"\n".join(v for _k, v in make_readings(sensors=20, per_sensor=300, bad_every=10**9))
    )
    one, log = _run(tmp_path, "one", AD_PROCESSES="1")
    assert len(one) == 20 * (300 * 10 // 60)
    assert "1 Bytewax process(es) x 1 worker(s)" in log
    two, log = _run(tmp_path, "two", AD_PROCESSES="2")
    assert "2 Bytewax process(es) x 1 worker(s)" in log
    assert two == one
    auto, log = _run(tmp_path, "auto")  # the default: as many as cores
    assert f"{cores()} Bytewax process(es)" in log
    assert auto == one
