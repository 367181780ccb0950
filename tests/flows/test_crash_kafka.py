"""Exactly-once over real Kafka: cluster mode, rescaling, broker restart, a stale
checkpoint, bad input, a poison pill.

The committed output (read_committed) of a crashed-and-restarted run must equal a
crash-free reference run: same ids, same bodies, no duplicates, no loss. The plain
SIGKILL test (1 and 2 workers) is the parametrised one in ``test_crash.py``; the input
and the reference come from the shared harness (``crash_harness.py``).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.flowrun import (
    BAD_RECORDS,
    ROOT,
    START_MS,
    FlowProcs,
    assert_same_output,
    crash_run,
    flow_env,
    init_recovery,
    make_readings,
    run_to_completion,
)
from tests.flows.crash_harness import CrashCase, CrashCases, Out
from tests.kafka_util import produce, read_committed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def case(crash_cases: CrashCases, request: pytest.FixtureRequest) -> CrashCase:
    """The shared Kafka input (>=100k readings over 4 partitions, ~1% bad) and the
    crash-free run's committed alerts and dead letters (see crash_harness)."""
    return crash_cases.get("kafka", request)


def _outputs(case: CrashCase, **extra: str) -> tuple[dict[str, str], Out, Out]:
    """New alert (4 partitions) and dead-letter (2) topics, and the run's environment."""
    a = case.adapter
    alerts, dlq = a.output("alerts"), a.output("dlq")
    return a.env(case.src, "crash", alerts, dlq, **extra), alerts, dlq


def test_two_processes_with_crashes(case: CrashCase, tmp_path: Path) -> None:
    """-i/-a cluster mode: 2 processes x 1 worker, killed together 3 times."""
    env, alerts, dlq = _outputs(case)
    kills = crash_run(
        env,
        init_recovery(tmp_path / "rec"),
        kills=3,
        processes=2,
        log=tmp_path / "flow.log",
        seed=7,
        min_s=1.5,
        max_s=3.5,
    )
    assert kills >= 3
    case.adapter.compare(case.reference, alerts, dlq)


def test_key_groups_by_partition_crashed_and_rescaled(case: CrashCase, tmp_path: Path) -> None:
    """AD_KEY_BY=partition (the input is keyed by sensor): 2 processes killed, then
    rescaled to 1 process x 3 workers and killed again: exactly the output of key
    groups by sensor, and every key group ran where its partition was read."""
    env, alerts, dlq = _outputs(case, AD_KEY_BY="partition")
    rec, log = init_recovery(tmp_path / "rec"), tmp_path / "flow.log"
    procs = FlowProcs(env, rec, workers=1, processes=2, log=log)
    time.sleep(3.0)
    assert procs.running(), "the flow finished before the first kill"
    procs.kill()
    kills = crash_run(env, rec, kills=2, workers=3, log=log, seed=11, min_s=1.5, max_s=3.0)
    assert kills >= 2
    case.adapter.compare(case.reference, alerts, dlq)
    text = log.read_text()
    assert "runs on another worker" not in text
    assert list((rec / "ad-state").glob(f"kg-{case.src}#*~*")), "no key group per partition"


def _stack(*args: str) -> None:
    subprocess.run(
        ["bash", str(ROOT / "stack" / "stack.sh"), *args], check=True, cwd=ROOT, capture_output=True
    )


def test_broker_restart_mid_run_keeps_output_exact(case: CrashCase, tmp_path: Path) -> None:
    env, alerts, dlq = _outputs(case)
    rec = init_recovery(tmp_path / "rec")
    log = tmp_path / "flow.log"
    procs = FlowProcs(env, rec, workers=1, log=log)
    time.sleep(2.0)
    assert procs.running(), "the flow finished before the broker restart"
    _stack("down", "kafka")
    time.sleep(3.0)
    _stack("up", "kafka")
    codes = procs.wait(300)
    restarts = 0
    while any(codes) and restarts < 5:  # a supervisor restarts a flow that gave up
        restarts += 1
        run_to_completion(env, rec, log=log)
        codes = [0]
    case.adapter.compare(case.reference, alerts, dlq)


def test_every_bad_record_class_reaches_the_dead_letter_topic(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    src, alerts, dlq = kafka_topic(1), kafka_topic(1), kafka_topic(1)
    good = []
    for i in range(300):
        v = 10.0 + (i % 7) * 0.1 + (50.0 if i == 250 else 0.0)
        good.append(
            json.dumps(
                {"sensor_id": "pump-1", "timestamp": START_MS + i * 60_000, "value": v}
            ).encode()
        )
    bad = list(BAD_RECORDS)
    bad.append((b"x" * 5000, "oversize"))
    bad.append(
        (json.dumps({"sensor_id": "pump-1", "timestamp": START_MS, "value": 1.0}).encode(), "late")
    )
    bad.append(
        (
            json.dumps(
                {"sensor_id": "pump-1", "timestamp": START_MS + 10 * 86_400_000, "value": 1.0}
            ).encode(),
            "future",
        )
    )
    records = good[:200] + [b for b, _r in bad] + good[200:]
    produce(kafka_brokers, src, [("k", r) for r in records])
    env = flow_env(
        AD_SOURCE=f"kafka://{kafka_brokers}/{src}?tail=false",
        AD_SINK=f"kafka://{kafka_brokers}/{alerts}",
        AD_DLQ=f"kafka://{kafka_brokers}/{dlq}",
        AD_WINDOW="none",
        AD_MAX_RECORD_BYTES="4096",
        AD_MAX_FUTURE="1d",
        AD_DETECTOR="mad",
        AD_THRESHOLD="0.8",
        AD_FLOW_ID=f"bad-{uuid.uuid4().hex[:6]}",
    )
    run_to_completion(env, init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log")
    dead = read_committed(kafka_brokers, dlq)
    assert len(dead) == len(bad)
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    for raw, reason in bad:
        d = by_value[raw]
        assert d["reason"] == reason, (raw[:60], d["reason"], d["error"])
        assert d["error"] and d["source"] == f"kafka:{src}" and d["partition"] == "0"
        assert records[int(d["offset"])] == raw  # the offset points at the original record
    out = read_committed(kafka_brokers, alerts)
    spike = [a for a in out if a["window_start"].startswith("2026-01-01T04:10")]
    assert spike and spike[0]["score"] >= 0.8, "the valid spike after the bad records was missed"


def _backup_recovery(rec: Path, dest: Path) -> None:
    """A consistent copy of every recovery partition (SQLite online backup), then of
    the segment files of the incremental snapshots (state.snapshots) they refer to."""
    import shutil
    import sqlite3

    dest.mkdir()
    for db in sorted(rec.glob("*.sqlite3")):
        src, dst = sqlite3.connect(db), sqlite3.connect(dest / db.name)
        src.backup(dst)
        src.close()
        dst.close()
    assert (rec / "ad-state").is_dir()
    shutil.copytree(rec / "ad-state", dest / "ad-state", ignore=shutil.ignore_patterns("*.tmp"))


def test_resume_from_a_stale_checkpoint_skips_output_committed_after_it(
    case: CrashCase, tmp_path: Path
) -> None:
    """Crash right after the sink committed but before Bytewax stored the snapshot,
    at its worst: everything after an old checkpoint was committed, and is replayed."""
    import shutil

    env, alerts, dlq = _outputs(case)
    rec = init_recovery(tmp_path / "rec")
    log = tmp_path / "flow.log"
    procs = FlowProcs(env, rec, workers=1, log=log)
    deadline = time.time() + 60
    while not (rec / "ad-state").is_dir() and time.time() < deadline:  # a first snapshot
        time.sleep(0.1)
    time.sleep(0.5)
    assert procs.running()
    _backup_recovery(rec, tmp_path / "old")
    assert procs.wait(300) == [0]
    first = case.adapter.read(alerts)
    shutil.rmtree(rec)
    (tmp_path / "old").rename(rec)
    run_to_completion(env, rec, log=log)  # replays everything after the old checkpoint
    assert len(case.adapter.read(alerts)) == len(first)
    case.adapter.compare(case.reference, alerts, dlq)


def test_a_poison_pill_mid_topic_is_passed_and_replays_the_same(
    crash_cases: CrashCases,
    request: pytest.FixtureRequest,
    kafka_brokers: str,
    kafka_topic: Any,
    tmp_path: Path,
) -> None:
    """A record that once crashed the decoder (1,100 levels of nesting) sits in the middle
    of a topic: the flow, killed and restarted around it from its recovery store, passes
    it, and commits exactly the output of a run without it plus one dead letter."""
    from tests.flowrun import POISON

    readings = make_readings(sensors=6, per_sensor=3000, bad_every=10**9)
    half = len(readings) // 2
    clean, poisoned = kafka_topic(2), kafka_topic(2)
    produce(kafka_brokers, clean, readings)
    produce(kafka_brokers, poisoned, [*readings[:half], ("sensor-000", POISON), *readings[half:]])
    kafka = crash_cases.adapter("kafka", request)
    outs = {}
    for name, src in (("clean", clean), ("poisoned", poisoned)):
        alerts, dlq = kafka_topic(2), kafka_topic(1)
        env = kafka.env(src, "crash", (alerts, alerts), (dlq, dlq))
        rec = init_recovery(tmp_path / f"rec-{name}")
        log = tmp_path / f"{name}.log"
        if name == "poisoned":
            crash_run(env, rec, kills=2, log=log, seed=5, min_s=1.0, max_s=2.5)
        else:
            run_to_completion(env, rec, log=log)
        outs[name] = (read_committed(kafka_brokers, alerts), read_committed(kafka_brokers, dlq))
    assert outs["clean"][1] == []
    assert_same_output(outs["clean"][0], outs["poisoned"][0], "alert_id")
    [dead] = outs["poisoned"][1]
    assert dead["reason"] == "undecodable" and base64.b64decode(dead["value_b64"]) == POISON
