"""End to end with the real flow over Kafka: live model switch, crash around the switch,
and rescaling 1 -> 2 -> 1 workers mid-stream, all driven through ``adctl``.

Outputs are compared as committed (read_committed) alert records by ``alert_id``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from control.markers import encode_marker, push_marker
from state import model_store
from tests.conftest import CONTROL_KEY, REDIS_PORT, ROOT
from tests.control.helpers import START_MS, free_port, produce_json, write_readings
from tests.flowrun import KEY, crash_run, flow_env, init_recovery, run_to_completion
from tests.kafka_util import read_committed

pytestmark = pytest.mark.slow

SENSORS, PER_SENSOR, STEP_MS = 8, 300, 10_000
SWITCH_I = 150  # readings with index >= this come after the marker


def _flow_settings(
    brokers: str, src: str, alerts: str, dlq: str, tail: bool, **extra: str
) -> dict[str, str]:
    return {
        "AD_SOURCE": f"kafka://{brokers}/{src}?tail={'true' if tail else 'false'}",
        "AD_SINK": f"kafka://{brokers}/{alerts}",
        "AD_DLQ": f"kafka://{brokers}/{dlq}",
        "AD_WINDOW": "none",
        "AD_EMIT": "all",
        "AD_DETECTOR": "mad",
        "AD_FLOW_ID": "ctl-e2e",
        **extra,
    }


def _adctl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}
    env["AD_CONTROL_KEY"] = CONTROL_KEY  # shared by adctl and flows
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run(
        [sys.executable, "-m", "control", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res


def _ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"adctl failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def _run_flow(state: Path, env_args: list[str]) -> None:
    """``adctl run``: one single-worker process, 1 s snapshots."""
    _ok(
        _adctl(
            "--state-dir",
            str(state),
            "run",
            "-w",
            "1",
            "-p",
            "1",
            "--snapshot-interval",
            "1",
            *env_args,
        )
    )


def _wait_count(
    brokers: str, topic: str, n: int, timeout: float = 120, state_dir: Path | None = None
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = read_committed(brokers, topic)
        if len(rows) >= n:
            return rows
        if time.monotonic() > deadline:
            logs = ""
            if state_dir is not None:
                logs = "\n".join(p.read_text()[-3000:] for p in (state_dir / "logs").glob("*"))
            raise AssertionError(f"{len(rows)}/{n} outputs after {timeout}s\n{logs}")
        time.sleep(0.5)


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    dups = [k for k, c in Counter(r["alert_id"] for r in rows).items() if c > 1]
    assert not dups, f"{len(dups)} duplicated alert ids"
    return {r["alert_id"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in rows}


def _readings() -> list[tuple[str, bytes]]:
    return write_readings(None, sensors=SENSORS, per_sensor=PER_SENSOR, step_ms=STEP_MS)


def _ts_ms(row: dict[str, Any]) -> int:
    from datetime import datetime

    return int(
        datetime.fromisoformat(row["window_start"].replace("Z", "+00:00")).timestamp() * 1000
    )


@pytest.fixture
def redis_store() -> Any:
    prefix = f"test:ctl:{uuid.uuid4().hex[:8]}"
    yield f"redis://127.0.0.1:{REDIS_PORT}/{prefix}"
    client = redis.Redis(port=REDIS_PORT)
    for k in client.scan_iter(f"{prefix}/*"):
        client.delete(k)


def test_retrain_push_switches_a_running_flow(
    kafka_brokers: str, kafka_topic: Any, redis_store: str, tmp_path: Path
) -> None:
    src, alerts, dlq, control = kafka_topic(2), kafka_topic(2), kafka_topic(1), kafka_topic(1)
    rows = _readings()
    first = [r for r in rows if json.loads(r[1])["timestamp"] < START_MS + SWITCH_I * STEP_MS]
    second = rows[len(first) :]
    produce_json(kafka_brokers, src, first)
    state = tmp_path / "adctl"
    port = free_port()
    settings = _flow_settings(
        kafka_brokers,
        src,
        alerts,
        dlq,
        tail=True,
        AD_METRICS_PORT=str(port),
        AD_MODEL_STORE=redis_store,
    )
    env_args = [a for k, v in settings.items() for a in ("-e", f"{k}={v}")]
    _run_flow(state, env_args)
    try:
        _wait_count(kafka_brokers, alerts, len(first), state_dir=state)
        # retrain on the history so far (the input topic itself) and push it live
        res = _ok(
            _adctl(
                "retrain",
                "--from",
                f"kafka://{kafka_brokers}/{src}",
                "--model-store",
                redis_store,
                "--detector",
                "mad",
                "--push",
                "--input",
                settings["AD_SOURCE"],
                "--control-topic",
                control,
                "--dask-workers",
                "1",
            )
        )
        pushed = json.loads(res.stdout)
        assert pushed["version"] == "v1" and sorted(pushed["markers"]) == [f"{src}:0", f"{src}:1"]
        produce_json(kafka_brokers, src, second)
        out = _wait_count(kafka_brokers, alerts, len(rows), state_dir=state)
        st = _ok(_adctl("--state-dir", str(state), "status", "--json", "--interval", "0.5"))
        status = json.loads(st.stdout.splitlines()[-1])
    finally:
        stop = _adctl("--state-dir", str(state), "stop", "--timeout", "30")
    assert stop.returncode == 0, stop.stderr
    got = _by_id(out)
    assert len(got) == len(rows)
    switch_ms = START_MS + SWITCH_I * STEP_MS
    versions = Counter((_ts_ms(r) >= switch_ms, r["model_version"]) for r in got.values())
    assert versions == {(False, "builtin-1"): len(first), (True, "v1"): len(second)}
    # the trained model is what the flow uses after the switch
    model = model_store.fetch(pushed["model_ref"])
    assert sorted(model["keys"]) == sorted({k for k, _v in rows})
    # status saw the flow: its partitions' lag, the new model version, the state
    assert status["state"] == "running" and status["endpoints_up"]
    assert set(status["lag"]) == {f"{src}/0", f"{src}/1"}
    assert "v1" in status["model_versions"]["mad"]
    assert status["records_in"] >= len(rows)


@pytest.fixture(scope="module")
def switch_input(
    kafka_brokers: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, int]]:
    """Input with a model switch marker in the middle of every partition, and its store."""
    from connectors.kafka import ensure_topic

    tmp = tmp_path_factory.mktemp("switch")
    store = (tmp / "models").as_uri()
    model = {
        "detector": "mad",
        "version": "v7",
        "params": {"window": 32, "min_periods": 8, "z_scale": 2.5, "xp": "numpy"},
    }
    ref = model_store.put(store, "mad", "v7", model)
    src = f"ctl-switch-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_brokers, src, 2)
    rows = write_readings(None, sensors=40, per_sensor=1500, step_ms=STEP_MS)
    half = len(rows) // 2
    produce_json(kafka_brokers, src, rows[:half])
    push_marker(f"kafka://{kafka_brokers}/{src}", encode_marker("mad", "v7", ref, KEY))
    produce_json(kafka_brokers, src, rows[half:])
    yield src, store, len(rows)
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka_brokers})
    for fut in admin.delete_topics([src], operation_timeout=30).values():
        fut.result()


def test_sigkill_around_the_switch_gives_the_crash_free_output(
    kafka_brokers: str, kafka_topic: Any, switch_input: tuple[str, str, int], tmp_path: Path
) -> None:
    src, store, n = switch_input
    ref_alerts, ref_dlq = kafka_topic(2), kafka_topic(1)
    env = flow_env(
        **_flow_settings(kafka_brokers, src, ref_alerts, ref_dlq, tail=False, AD_MODEL_STORE=store)
    )
    run_to_completion(env, init_recovery(tmp_path / "ref"), log=tmp_path / "ref.log")
    reference = _by_id(read_committed(kafka_brokers, ref_alerts))
    assert len(reference) == n
    assert {r["model_version"] for r in reference.values()} == {"builtin-1", "v7"}
    alerts, dlq = kafka_topic(2), kafka_topic(1)
    env = flow_env(
        **_flow_settings(kafka_brokers, src, alerts, dlq, tail=False, AD_MODEL_STORE=store)
    )
    kills = crash_run(
        env,
        init_recovery(tmp_path / "rec"),
        kills=3,
        log=tmp_path / "crash.log",
        seed=11,
        min_s=1.0,
        max_s=3.0,
    )
    assert kills >= 2, f"only {kills} kills hit a running flow"
    assert _by_id(read_committed(kafka_brokers, alerts)) == reference


def test_scale_1_2_1_mid_stream_is_exact(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    src, alerts, dlq = kafka_topic(2), kafka_topic(2), kafka_topic(1)
    ref_alerts, ref_dlq = kafka_topic(2), kafka_topic(1)
    rows = _readings()
    parts = [
        rows[: len(rows) // 3],
        rows[len(rows) // 3 : 2 * len(rows) // 3],
        rows[2 * len(rows) // 3 :],
    ]
    state = tmp_path / "adctl"
    settings = _flow_settings(kafka_brokers, src, alerts, dlq, tail=True)
    env_args = [a for k, v in settings.items() for a in ("-e", f"{k}={v}")]
    produce_json(kafka_brokers, src, parts[0])
    _run_flow(state, env_args)
    try:
        _wait_count(kafka_brokers, alerts, len(parts[0]), state_dir=state)
        _ok(_adctl("--state-dir", str(state), "scale", "--workers", "2", "--timeout", "30"))
        spec = json.loads((state / "flow.json").read_text())["spec"]
        assert spec["workers"] == 2
        produce_json(kafka_brokers, src, parts[1])
        _wait_count(kafka_brokers, alerts, len(parts[0]) + len(parts[1]), state_dir=state)
        _ok(_adctl("--state-dir", str(state), "scale", "--workers", "1", "--timeout", "30"))
        produce_json(kafka_brokers, src, parts[2])
        out = _wait_count(kafka_brokers, alerts, len(rows), state_dir=state)
        time.sleep(2.0)  # let any (wrong) extra output be committed before comparing
        out = read_committed(kafka_brokers, alerts)
    finally:
        _adctl("--state-dir", str(state), "stop", "--timeout", "30")
    logs = (state / "logs" / "flow-0.log").read_text()
    assert logs.count("-w 2") == 1 and logs.count("-w 1") == 2  # three runs, as asked
    env = flow_env(**_flow_settings(kafka_brokers, src, ref_alerts, ref_dlq, tail=False))
    run_to_completion(env, init_recovery(tmp_path / "ref"), log=tmp_path / "ref.log")
    assert _by_id(out) == _by_id(read_committed(kafka_brokers, ref_alerts))
