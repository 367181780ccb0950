"""The whole flow over Pub/Sub (emulator): a subscription without message ordering.

Pub/Sub source (acks only after the epoch is committed, drops redeliveries of messages in
the resume state) + Pub/Sub sink (at-least-once). The SIGKILL and bad-input tests are the
parametrised ones in ``test_crash.py`` (adapter in ``crash_harness.py``).
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from tests.flowrun import flow_env, init_recovery, make_readings, run_to_completion
from tests.flows.crash_harness import CrashCases, PubSubAdapter, count_bad

pytestmark = pytest.mark.slow


def test_an_unordered_subscription_is_reordered_by_event_time(
    crash_cases: CrashCases, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """20,000 readings of 5 sensors through a subscription without message ordering, with
    default settings: every reading's score equals an ordered run's over the same records,
    and no reading is lost to `late` (only the bad records are dead letters)."""
    bus = crash_cases.adapter("pubsub", request)
    assert isinstance(bus, PubSubAdapter)
    records = make_readings(sensors=5, per_sensor=4000, bad_every=110)
    bad = count_bad(records)
    name, [sub] = bus.topic("unordered", ordered=False)
    bus.publish(name, records, ordered=False)  # no ordering keys
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(v for _k, v in records) + b"\n")
    alerts, dlq = bus.output("un-alerts"), bus.output("un-dlq")
    env = flow_env(
        AD_SOURCE=bus.url(sub, "&idle_exit=6s"),
        AD_SINK=bus.sink(alerts),
        AD_DLQ=bus.sink(dlq),
        AD_WINDOW="none",
        AD_EMIT="all",  # every reading's score, not only the alerts
        AD_FLOW_ID=f"unordered-{uuid.uuid4().hex[:6]}",
    )
    run_to_completion(env, init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log")
    got, dead = bus.read(alerts), bus.read(dlq)
    ordered = flow_env(
        AD_SOURCE=f"file://{tmp_path}/in.jsonl",
        AD_SINK=f"file://{tmp_path}/alerts.jsonl",
        AD_DLQ=f"file://{tmp_path}/dlq.jsonl",
        AD_WINDOW="none",
        AD_EMIT="all",
    )
    run_to_completion(ordered, None, log=tmp_path / "file.log")
    ref = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    late = [d for d in dead if d["reason"] in ("late", "future")]
    assert late == [], (
        len(late),
        [(d["error"], base64.b64decode(d["value_b64"])[:90]) for d in late[:3]],
    )
    assert len(dead) == bad
    assert {a["alert_id"]: a["score"] for a in got} == {a["alert_id"]: a["score"] for a in ref}
    assert len(ref) == len(records) - bad  # every good reading scored, as in order
