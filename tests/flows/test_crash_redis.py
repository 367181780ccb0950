"""The whole flow over Redis Streams: a Redis restart under the running flow.

Redis source (replayable by stream ID) + Redis sink (dedup by alert id in a Lua script):
the output must equal a crash-free run's, without duplicates (effectively-once). The
SIGKILL and bad-input tests are the parametrised ones in ``test_crash.py``; the input
and the reference come from the shared harness (``crash_harness.py``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from tests.connectors._services import start_private
from tests.flowrun import FlowProcs, assert_same_output, by_id, init_recovery
from tests.flows.crash_harness import CrashCases, RedisAdapter, read_stream, write_stream

pytestmark = pytest.mark.slow


def test_redis_restart_mid_run(
    tmp_path: Path, crash_cases: CrashCases, request: pytest.FixtureRequest
) -> None:
    """A private Redis (with AOF) restarted under a running flow: same output."""
    case = crash_cases.get("redis", request)
    assert isinstance(case.adapter, RedisAdapter)
    rclient, reference = case.adapter.client, case.reference
    svc = start_private("redis", tmp_path / "redis")
    try:
        client = redis.Redis(port=svc.port)
        records = [(f[b"key"].decode(), f[b"value"]) for _id, f in rclient.xrange(case.src)]
        write_stream(client, "in", records)
        private = RedisAdapter(f"redis://127.0.0.1:{svc.port}", tmp_path)
        private.flow = case.adapter.flow  # one flow identity: dead letters carry it
        env = private.env("in", "crash", ("alerts", "alerts"), ("dlq", "dlq"))
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
