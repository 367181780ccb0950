"""The whole flow over Redis Streams: SIGKILL at random points, Redis restart, bad input.

Redis source (replayable by stream ID) + Redis sink (dedup by alert id in a Lua script):
the output of a crashed-and-restarted run must equal a crash-free run's, without
duplicates (effectively-once).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.connectors._services import start_private
from tests.flowrun import (
    BAD_RECORDS,
    FlowProcs,
    assert_same_output,
    by_id,
    crash_env,
    crash_run,
    init_recovery,
    make_readings,
    run_to_completion,
    with_bad_records,
)

pytestmark = pytest.mark.slow

SENSORS, PER_SENSOR = 50, 3000
FLOW_ID = f"flow-{uuid.uuid4().hex[:8]}"  # one flow identity: dead letters carry it


def _env(base: str, src: str, alerts: str, dlq: str, **extra: str) -> dict[str, str]:
    return crash_env(
        f"{base}/{src}?tail=false&count=200", f"{base}/{alerts}", f"{base}/{dlq}", FLOW_ID, **extra
    )


def write_input(client: redis.Redis, stream: str, records: list[tuple[str, bytes]]) -> list[str]:
    ids: list[str] = []
    for i in range(0, len(records), 1000):
        pipe = client.pipeline(transaction=False)
        for key, value in records[i : i + 1000]:
            pipe.xadd(stream, {"value": value, "key": key})
        ids += [x.decode() for x in pipe.execute()]
    return ids


def read_stream(client: redis.Redis, stream: str) -> list[dict[str, Any]]:
    return [json.loads(f[b"value"]) for _id, f in client.xrange(stream)]


@pytest.fixture(scope="module")
def rbase(redis_url: str) -> str:
    return redis_url


@pytest.fixture(scope="module")
def rclient(rbase: str) -> redis.Redis:
    return redis.Redis.from_url(rbase)


@pytest.fixture(scope="module")
def crash_input(rclient: redis.Redis) -> tuple[str, int, int]:
    stream = f"crash-in-{uuid.uuid4().hex[:8]}"
    records = make_readings(sensors=SENSORS, per_sensor=PER_SENSOR, bad_every=100)
    write_input(rclient, stream, records)
    bad = sum(1 for _k, v in records if not v.startswith(b'{"sensor_id": "sensor-'))
    return stream, len(records), bad


@pytest.fixture(scope="module")
def reference(
    rbase: str,
    rclient: redis.Redis,
    crash_input: tuple[str, int, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict], list[dict]]:
    src, _n, bad = crash_input
    alerts, dlq = f"ref-alerts-{uuid.uuid4().hex[:6]}", f"ref-dlq-{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp("ref")
    run_to_completion(
        _env(rbase, src, alerts, dlq), init_recovery(tmp / "rec"), log=tmp / "flow.log"
    )
    out, dead = read_stream(rclient, alerts), read_stream(rclient, dlq)
    assert len(out) == SENSORS * ((PER_SENSOR - 1) * 10 // 60 + 1)
    assert len(dead) == bad
    return out, dead


def test_sigkill_restarts_give_the_reference_output_once(
    rbase: str,
    rclient: redis.Redis,
    crash_input: tuple[str, int, int],
    reference: tuple[list[dict], list[dict]],
    tmp_path: Path,
) -> None:
    src, _n, _bad = crash_input
    alerts, dlq = f"alerts-{uuid.uuid4().hex[:6]}", f"dlq-{uuid.uuid4().hex[:6]}"
    env = _env(rbase, src, alerts, dlq)
    kills = crash_run(
        env,
        init_recovery(tmp_path / "rec"),
        kills=4,
        log=tmp_path / "flow.log",
        seed=11,
        min_s=0.8,  # the whole run takes a few seconds: kills must land early to land
        max_s=1.6,
    )
    assert kills >= 3, f"only {kills} kills hit a running flow"
    assert_same_output(reference[0], read_stream(rclient, alerts), "alert_id")
    assert_same_output(reference[1], read_stream(rclient, dlq), "dlq_id")


def test_redis_restart_mid_run(
    tmp_path: Path,
    crash_input: tuple[str, int, int],
    rclient: redis.Redis,
    reference: tuple[list[dict], list[dict]],
) -> None:
    """A private Redis (with AOF) restarted under a running flow: same output."""
    svc = start_private("redis", tmp_path / "redis")
    try:
        client = redis.Redis(port=svc.port)
        records = [(f[b"key"].decode(), f[b"value"]) for _id, f in rclient.xrange(crash_input[0])]
        write_input(client, "in", records)
        base = f"redis://127.0.0.1:{svc.port}"
        env = _env(base, "in", "alerts", "dlq")
        procs = FlowProcs(env, init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log")
        time.sleep(2.5)
        assert procs.running(), "the flow finished before the restart"
        svc.stop()
        time.sleep(1.0)
        svc.start()
        codes = procs.wait(300)
        assert codes == [0], (tmp_path / "flow.log").read_text()[-3000:]
        assert_same_output(reference[0], read_stream(client, "alerts"), "alert_id")
        dead = read_stream(client, "dlq")
        by_id(dead, "dlq_id")  # no duplicates
        # Other stream, other entry IDs: dead-letter ids differ, their contents do not.
        assert sorted((d["reason"], d["value_b64"]) for d in dead) == sorted(
            (d["reason"], d["value_b64"]) for d in reference[1]
        )
        client.close()
    finally:
        svc.stop()


def test_every_bad_record_class_reaches_the_dead_letter_stream(
    rbase: str, rclient: redis.Redis, tmp_path: Path
) -> None:
    src, alerts, dlq = (f"{p}-{uuid.uuid4().hex[:6]}" for p in ("bad-in", "bad-al", "bad-dlq"))
    records = with_bad_records()
    ids = write_input(rclient, src, [("pump-1", r) for r in records])
    env = _env(rbase, src, alerts, dlq)
    run_to_completion(env, init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log")
    dead = read_stream(rclient, dlq)
    assert len(dead) == len(BAD_RECORDS)
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    for raw, reason in BAD_RECORDS:
        d = by_value[raw]
        assert d["reason"] == reason, (raw[:60], d["reason"], d["error"])
        assert d["source"] == f"redis:{src}" and d["partition"] == src
        assert records[ids.index(d["offset"])] == raw  # the offset is the entry's stream ID
    out = read_stream(rclient, alerts)
    assert len(out) == 100  # one 60 s window per good reading; bad ones did not disturb them
    assert {a["sensor_id"] for a in out} == {"pump-1"}
