"""The whole flow over Pub/Sub (emulator): SIGKILL at random points, bad input.

Pub/Sub source (acks only after the epoch is committed, drops redeliveries of messages in
the resume state) + Pub/Sub sink (at-least-once): after crashes every alert of the
crash-free run is there with the same content; duplicates are allowed (and counted), as
the semantics table says for this sink.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from connectors.pubsub import publisher_client, subscriber_client
from tests.flowrun import (
    BAD_RECORDS,
    crash_env,
    crash_run,
    flow_env,
    init_recovery,
    make_readings,
    run_to_completion,
    with_bad_records,
)

pytestmark = pytest.mark.slow

PROJECT = "ad-crash"
SENSORS, PER_SENSOR = 20, 210  # make_readings needs per_sensor > 203
FLOW_ID = f"flow-{uuid.uuid4().hex[:8]}"


class Bus:
    """Topics and subscriptions on the emulator, deleted at teardown."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.pub = publisher_client(host)
        self.sub = subscriber_client(host)
        self.topics: list[str] = []
        self.subs: list[str] = []

    def topic(self, prefix: str, subs: int = 1) -> tuple[str, list[str]]:
        """A topic and ``subs`` ordered subscriptions on it (created before any publish)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        path = self.pub.create_topic(name=f"projects/{PROJECT}/topics/{name}").name
        self.topics.append(path)
        names = []
        for i in range(subs):
            sname = f"{name}-s{i}"
            self.sub.create_subscription(
                request={
                    "name": f"projects/{PROJECT}/subscriptions/{sname}",
                    "topic": path,
                    "enable_message_ordering": True,
                    "ack_deadline_seconds": 10,
                }
            )
            self.subs.append(f"projects/{PROJECT}/subscriptions/{sname}")
            names.append(sname)
        return name, names

    def publish(self, topic: str, records: list[tuple[str, bytes]]) -> dict[str, bytes]:
        path = f"projects/{PROJECT}/topics/{topic}"
        futs = [(v, self.pub.publish(path, v, ordering_key=k)) for k, v in records]
        return {f.result(timeout=60): v for v, f in futs}  # message id -> data

    def drain(self, sub: str, quiet: float = 3.0) -> list[Any]:
        path = f"projects/{PROJECT}/subscriptions/{sub}"
        out: list[Any] = []
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            try:
                resp = self.sub.pull(subscription=path, max_messages=1000, timeout=2.0)
            except gexc.DeadlineExceeded:
                continue
            if resp.received_messages:
                out += [m.message for m in resp.received_messages]
                self.sub.acknowledge(
                    subscription=path, ack_ids=[m.ack_id for m in resp.received_messages]
                )
                last = time.monotonic()
        return out

    def cleanup(self) -> None:
        for s in self.subs:
            with contextlib.suppress(gexc.GoogleAPICallError):
                self.sub.delete_subscription(subscription=s)
        for t in self.topics:
            with contextlib.suppress(gexc.GoogleAPICallError):
                self.pub.delete_topic(topic=t)


@pytest.fixture(scope="module")
def bus(pubsub_host: str) -> Iterator[Bus]:
    b = Bus(pubsub_host)
    yield b
    b.cleanup()


def _env(bus: Bus, sub: str, alerts: str, dlq: str) -> dict[str, str]:
    q = f"emulator={bus.host}"
    return crash_env(
        f"pubsub://{PROJECT}/{sub}?{q}&idle_exit=6s&lease=10s&ack_lag=1",
        f"pubsub://{PROJECT}/{alerts}?{q}",
        f"pubsub://{PROJECT}/{dlq}?{q}",
        FLOW_ID,
    )


def bodies(msgs: list[Any]) -> list[dict[str, Any]]:
    out = []
    for m in msgs:
        body = json.loads(m.data)
        assert m.attributes["alert_id"] == body.get("alert_id", body.get("dlq_id"))
        out.append(body)
    return out


def assert_all_there(ref: list[dict], got: list[dict], id_field: str) -> int:
    """Same id set, same content per id; returns the number of duplicates."""
    a = {r[id_field]: r for r in ref}
    assert len(a) == len(ref), "the reference itself has duplicates"
    b: dict[str, dict] = {}
    for r in got:
        assert b.setdefault(r[id_field], r) == r, "a duplicate with different content"
    missing, extra = a.keys() - b.keys(), b.keys() - a.keys()
    assert not missing and not extra, f"{len(missing)} lost, {len(extra)} unexpected"
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, f"{len(diff)} records differ, e.g. {[(a[k], b[k]) for k in diff[:1]]}"
    return len(got) - len(b)


@pytest.fixture(scope="module")
def crash_input(bus: Bus) -> tuple[str, list[str], int]:
    """One input topic with two subscriptions: one for the reference, one for crashes."""
    topic, subs = bus.topic("crash-in", subs=2)
    records = make_readings(sensors=SENSORS, per_sensor=PER_SENSOR, bad_every=100)
    bus.publish(topic, records)
    bad = sum(1 for _k, v in records if not v.startswith(b'{"sensor_id": "sensor-'))
    return topic, subs, bad


@pytest.fixture(scope="module")
def reference(
    bus: Bus, crash_input: tuple[str, list[str], int], tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[dict], list[dict]]:
    _topic, subs, bad = crash_input
    (alerts, [al_sub]), (dlq, [dl_sub]) = bus.topic("ref-alerts"), bus.topic("ref-dlq")
    tmp = tmp_path_factory.mktemp("ref")
    run_to_completion(
        _env(bus, subs[0], alerts, dlq), init_recovery(tmp / "rec"), log=tmp / "flow.log"
    )
    out, dead = bodies(bus.drain(al_sub)), bodies(bus.drain(dl_sub))
    assert len(out) == SENSORS * ((PER_SENSOR - 1) * 10 // 60 + 1)
    assert len(dead) == bad
    return out, dead


def test_sigkill_restarts_lose_nothing(
    bus: Bus,
    crash_input: tuple[str, list[str], int],
    reference: tuple[list[dict], list[dict]],
    tmp_path: Path,
) -> None:
    _topic, subs, _bad = crash_input
    (alerts, [al_sub]), (dlq, [dl_sub]) = bus.topic("alerts"), bus.topic("dlq")
    env = _env(bus, subs[1], alerts, dlq)
    kills = crash_run(
        env,
        init_recovery(tmp_path / "rec"),
        kills=3,
        log=tmp_path / "flow.log",
        seed=3,
        min_s=3.0,
        max_s=8.0,
        timeout=400,
    )
    assert kills >= 3, f"only {kills} kills hit a running flow"
    dups = assert_all_there(reference[0], bodies(bus.drain(al_sub)), "alert_id")
    print(f"alerts duplicated by the at-least-once sink after {kills} kills: {dups}")
    dead = bodies(bus.drain(dl_sub))
    # Another subscription, so other dead-letter ids (they include the source); compare
    # what they carry: reason, original bytes and message id.
    key = lambda d: (d["reason"], d["value_b64"], d["offset"])  # noqa: E731
    assert {key(d) for d in dead} == {key(d) for d in reference[1]}


def test_every_bad_record_class_reaches_the_dead_letter_topic(bus: Bus, tmp_path: Path) -> None:
    (src, [sub]) = bus.topic("bad-in")
    (alerts, [al_sub]), (dlq, [dl_sub]) = bus.topic("bad-al"), bus.topic("bad-dlq")
    records = with_bad_records()
    by_id = bus.publish(src, [("pump-1", r) for r in records])
    run_to_completion(
        _env(bus, sub, alerts, dlq), init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log"
    )
    dead = bodies(bus.drain(dl_sub))
    assert len(dead) == len(BAD_RECORDS)
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    for raw, reason in BAD_RECORDS:
        d = by_value[raw]
        assert d["reason"] == reason, (raw[:60], d["reason"], d["error"])
        assert d["source"] == f"pubsub:{sub}" and d["partition"] == sub
        assert by_id[d["offset"]] == raw  # the offset is the message id
    out = bodies(bus.drain(al_sub))
    assert len({a["alert_id"] for a in out}) == 100


def test_an_unordered_subscription_is_reordered_by_event_time(bus: Bus, tmp_path: Path) -> None:
    """20,000 readings of 5 sensors through a subscription without message ordering, with
    default settings: every reading's score equals an ordered run's over the same records,
    and no reading is lost to `late` (only the bad records are dead letters)."""
    records = make_readings(sensors=5, per_sensor=4000, bad_every=110)
    bad = sum(1 for _k, v in records if not v.startswith(b'{"sensor_id": "sensor-'))
    name = f"unordered-{uuid.uuid4().hex[:8]}"
    path = bus.pub.create_topic(name=f"projects/{PROJECT}/topics/{name}").name
    bus.topics.append(path)
    sub = f"projects/{PROJECT}/subscriptions/{name}-s"
    bus.sub.create_subscription(request={"name": sub, "topic": path, "ack_deadline_seconds": 30})
    bus.subs.append(sub)
    futs = [bus.pub.publish(path, v) for _k, v in records]  # no ordering keys
    for f in futs:
        f.result(timeout=60)
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(v for _k, v in records) + b"\n")
    (alerts, [al_sub]), (dlq, [dl_sub]) = bus.topic("un-alerts"), bus.topic("un-dlq")
    q = f"emulator={bus.host}"
    env = flow_env(
        AD_SOURCE=f"pubsub://{PROJECT}/{name}-s?{q}&idle_exit=6s",
        AD_SINK=f"pubsub://{PROJECT}/{alerts}?{q}",
        AD_DLQ=f"pubsub://{PROJECT}/{dlq}?{q}",
        AD_WINDOW="none",
        AD_EMIT="all",  # every reading's score, not only the alerts
        AD_FLOW_ID=f"unordered-{uuid.uuid4().hex[:6]}",
    )
    run_to_completion(env, init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log")
    got, dead = bodies(bus.drain(al_sub)), bodies(bus.drain(dl_sub))
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
