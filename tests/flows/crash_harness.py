"""One harness for the whole-flow crash tests of every connector.

The shared property: produce input, run the flow to completion once (the crash-free
reference), run it again on the same input under SIGKILL at random points with a
recovery store and restart it, then read the committed output and compare it with the
reference. A per-connector ``Adapter`` says how to create input and outputs, which
source/sink URLs the flow gets, how to read the committed output, how to compare it
(exactly once, or at least once for the Pub/Sub sink) and its timing knobs (when kills
land: a short run needs early kills).

``CrashCases`` (the session fixture ``crash_cases`` in ``tests/flows/conftest.py``)
builds each connector's input and reference once per session, so the parametrised
tests in ``test_crash.py`` and the connector-specific tests in ``test_crash_<system>.py``
share them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.flowrun import (
    BAD_RECORDS,
    assert_same_output,
    by_id,
    crash_env,
    crash_run,
    init_recovery,
    make_readings,
    run_to_completion,
    with_bad_records,
)
from tests.pubsub_util import pull_all

#: An output of the flow: (the name in the sink URL, the name to read it back by).
Out = tuple[str, str]


def count_bad(records: list[tuple[str, bytes]]) -> int:
    """How many of ``make_readings``' records are bad ones (dead letters)."""
    return sum(1 for _k, v in records if not v.startswith(b'{"sensor_id": "sensor-'))


class Adapter:
    """How one connector takes part in the crash tests (subclass per system).

    Args:
        service: the endpoint of the connector's service in the local stack (the value of
            the session fixture named by ``service_fixture``; empty for files).
        tmp: a directory for the session's files.
    """

    name = ""
    #: the session fixture in tests/conftest.py that gives the service's endpoint
    service_fixture = ""
    #: input size (make_readings)
    sensors, per_sensor = 50, 2000
    #: the crash run: kills made (and at least ``min_kills`` must hit a running flow),
    #: each ``min_s``..``max_s`` seconds after a start, and the final run's time limit
    kills, min_kills, min_s, max_s, timeout = 4, 3, 1.0, 3.0, 600.0
    #: the sink writes each record once (else at least once: duplicates allowed)
    exactly_once = True
    #: injected anomalies the reference must show as alerts; input records at least
    min_anomalies, min_records = 0, 0
    #: environment added to crash_env's
    extra_env: dict[str, str] = {}  # noqa: RUF012 - read-only class default

    def __init__(self, service: str, tmp: Path) -> None:
        self.service = service
        self.tmp = tmp
        self.flow = f"flow-{uuid.uuid4().hex[:8]}"  # one flow identity: dead letters carry it

    # -- per system
    def write_input(self, records: list[tuple[str, bytes]], prefix: str) -> Any:
        """Create an input holding ``records`` (keyed, in order); returns its handle."""
        raise NotImplementedError

    def source(self, inp: Any, role: str) -> str:
        """The source URL of input ``inp`` for a run (``role``: ``ref`` or ``crash``)."""
        raise NotImplementedError

    def output(self, prefix: str) -> Out:
        """Create an empty output named after ``prefix``."""
        raise NotImplementedError

    def sink(self, out: Out) -> str:
        """The sink URL of output ``out``."""
        raise NotImplementedError

    def dlq_sink(self, out: Out) -> str:
        """The dead-letter sink URL of output ``out``."""
        return self.sink(out)

    def read(self, out: Out) -> list[dict[str, Any]]:
        """Every record committed to ``out`` (JSON bodies)."""
        raise NotImplementedError

    def offsets(self, inp: Any) -> dict[str, bytes]:
        """Offset (as dead letters give it) -> data of every record written to ``inp``."""
        raise NotImplementedError

    def where(self, inp: Any) -> tuple[str, str]:
        """The dead letters' ``source`` and ``partition`` for a one-partition input."""
        raise NotImplementedError

    def flow_id(self) -> str:
        """The flow id of the next run."""
        return self.flow

    def check_log(self, text: str) -> None:
        """Connector-specific evidence in the crash run's log (none by default)."""

    def cleanup(self) -> None:
        """Delete what the adapter created (best effort)."""

    # -- shared
    def env(self, inp: Any, role: str, alerts: Out, dlq: Out, **extra: str) -> dict[str, str]:
        """The crash tests' settings for a run from ``inp`` to ``alerts`` and ``dlq``."""
        return crash_env(
            self.source(inp, role),
            self.sink(alerts),
            self.dlq_sink(dlq),
            self.flow_id(),
            **{**self.extra_env, **extra},
        )

    def compare(self, ref: tuple[list[dict], list[dict]], alerts: Out, dlq: Out) -> None:
        """The crash run's committed output against the reference's."""
        assert_same_output(ref[0], self.read(alerts), "alert_id")
        assert_same_output(ref[1], self.read(dlq), "dlq_id")


@dataclass
class CrashCase:
    """One connector's shared input and crash-free reference output."""

    adapter: Adapter
    src: Any
    bad: int
    reference: tuple[list[dict], list[dict]]

    def crash_and_compare(self, tmp_path: Path, workers: int = 1, seed: int = 0) -> int:
        """Run the flow on the shared input under SIGKILLs (the adapter's timing), check
        the committed output against the reference; returns the kills made."""
        a = self.adapter
        alerts, dlq = a.output("alerts"), a.output("dlq")
        log = tmp_path / "flow.log"
        kills = crash_run(
            a.env(self.src, "crash", alerts, dlq),
            init_recovery(tmp_path / "rec"),
            kills=a.kills,
            workers=workers,
            log=log,
            seed=seed,
            min_s=a.min_s,
            max_s=a.max_s,
            timeout=a.timeout,
        )
        assert kills >= a.min_kills, f"only {kills} kills hit a running flow"
        a.check_log(log.read_text())
        a.compare(self.reference, alerts, dlq)
        return kills


class CrashCases:
    """Each connector's ``CrashCase``, built on first use and kept for the session.

    Args:
        tmp_factory: pytest's session temporary directory factory.
    """

    def __init__(self, tmp_factory: pytest.TempPathFactory) -> None:
        self.tmp_factory = tmp_factory
        self.cases: dict[str, CrashCase] = {}
        self.adapters: list[Adapter] = []

    def adapter(self, name: str, request: pytest.FixtureRequest) -> Adapter:
        """A fresh adapter for connector ``name`` (cleaned up at the session's end)."""
        cls = ADAPTERS[name]
        service = request.getfixturevalue(cls.service_fixture) if cls.service_fixture else ""
        a = cls(service, self.tmp_factory.mktemp(name))
        self.adapters.append(a)
        return a

    def get(self, name: str, request: pytest.FixtureRequest) -> CrashCase:
        """Connector ``name``'s input (>= 1 % bad records) and reference output."""
        if name not in self.cases:
            a = self.adapter(name, request)
            records = make_readings(sensors=a.sensors, per_sensor=a.per_sensor, bad_every=100)
            assert len(records) >= a.min_records
            src, bad = a.write_input(records, "crash-in"), count_bad(records)
            alerts, dlq = a.output("ref-alerts"), a.output("ref-dlq")
            tmp = self.tmp_factory.mktemp(f"{name}-ref")
            run_to_completion(
                a.env(src, "ref", alerts, dlq), init_recovery(tmp / "rec"), log=tmp / "flow.log"
            )
            out, dead = a.read(alerts), a.read(dlq)
            # every sensor's readings, 10 s apart, in 60 s windows, each window emitted
            assert len(out) == a.sensors * ((a.per_sensor - 1) * 10 // 60 + 1)
            assert len(dead) == bad
            assert sum(1 for r in out if r["is_anomaly"]) >= a.min_anomalies
            self.cases[name] = CrashCase(a, src, bad, (out, dead))
        return self.cases[name]

    def cleanup(self) -> None:
        """Delete every adapter's streams, topics and subscriptions."""
        for a in self.adapters:
            a.cleanup()


def check_bad_record_classes(a: Adapter, tmp_path: Path) -> None:
    """One record of every bad class among 100 good readings of one sensor: each reaches
    the dead letters with its reason, its source and partition, and an offset that names
    the original record; the good readings give one alert a window."""
    records = with_bad_records()
    inp = a.write_input([("pump-1", r) for r in records], "bad-in")
    alerts, dlq = a.output("bad-al"), a.output("bad-dlq")
    run_to_completion(
        a.env(inp, "ref", alerts, dlq), init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log"
    )
    dead = a.read(dlq)
    assert len(dead) == len(BAD_RECORDS)
    source, partition = a.where(inp)
    offsets = a.offsets(inp)
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    for raw, reason in BAD_RECORDS:
        d = by_value[raw]
        assert d["reason"] == reason, (raw[:60], d["reason"], d["error"])
        assert d["source"] == source and d["partition"] == partition
        assert offsets[d["offset"]] == raw  # the offset names the original record
    out = a.read(alerts)
    if a.exactly_once:
        by_id(out, "alert_id")  # no duplicates
    assert len({x["alert_id"] for x in out}) == 100  # one 60 s window per good reading
    assert {x["sensor_id"] for x in out} == {"pump-1"}


# ------------------------------------------------------------------ adapters


class KafkaAdapter(Adapter):
    """Kafka in and out (transactions: exactly once), paced so that kills land."""

    name = "kafka"
    service_fixture = "kafka_brokers"
    kills, min_kills, min_s, max_s = 5, 5, 1.0, 3.5
    min_anomalies, min_records = 5, 100_000
    extra_env = {"AD_DETECTOR": "mad", "AD_THRESHOLD": "0.8"}  # noqa: RUF012

    def __init__(self, service: str, tmp: Path) -> None:
        super().__init__(service, tmp)
        self.topics: list[str] = []

    def topic(self, prefix: str, partitions: int) -> str:
        """A new uniquely named topic."""
        from connectors.kafka import ensure_topic

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        ensure_topic(self.service, name, partitions)
        self.topics.append(name)
        return name

    def write_input(self, records: list[tuple[str, bytes]], prefix: str) -> str:
        from tests.kafka_util import produce

        topic = self.topic(prefix, 4)
        produce(self.service, topic, records)
        return topic

    def source(self, inp: Any, role: str) -> str:
        # paced (~8k records/s in all) so every random kill lands in a running flow
        return f"kafka://{self.service}/{inp}?tail=false&batch=250&max_rate=2000"

    def output(self, prefix: str) -> Out:
        name = self.topic(prefix, 2 if prefix.endswith("dlq") else 4)
        return name, name

    def sink(self, out: Out) -> str:
        return f"kafka://{self.service}/{out[0]}"

    def dlq_sink(self, out: Out) -> str:
        return f"kafka://{self.service}/{out[0]}?partitions=2"

    def read(self, out: Out) -> list[dict[str, Any]]:
        from tests.kafka_util import read_committed

        return read_committed(self.service, out[1])

    def flow_id(self) -> str:
        return f"flow-{uuid.uuid4().hex[:8]}"  # each run its own transactional ids

    def cleanup(self) -> None:
        from confluent_kafka.admin import AdminClient

        if self.topics:
            admin = AdminClient({"bootstrap.servers": self.service})
            for fut in admin.delete_topics(self.topics, operation_timeout=30).values():
                with contextlib.suppress(Exception):  # best-effort cleanup
                    fut.result()


class KinesisAdapter(Adapter):
    """Kinesis in and out: the sink skips, after a resume, ids already written after the
    snapshotted sequence numbers."""

    name = "kinesis"
    service_fixture = "kinesis_endpoint"
    min_s, max_s = 1.0, 3.0

    def __init__(self, service: str, tmp: Path) -> None:
        from connectors.kinesis import make_client

        super().__init__(service, tmp)
        self.client = make_client(service, "us-east-1")
        self.made: list[str] = []
        self.by_seq: dict[str, dict[str, bytes]] = {}

    def make(self, prefix: str, shards: int = 1) -> str:
        """A new uniquely named stream."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.client.create_stream(StreamName=name, ShardCount=shards)
        self.client.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
        )
        self.made.append(name)
        return name

    def url(self, name: str, query: str = "") -> str:
        """The URL of stream ``name`` on the endpoint."""
        return f"kinesis://{name}?endpoint={self.service}&region=us-east-1{query}"

    def write_input(self, records: list[tuple[str, bytes]], prefix: str) -> str:
        stream = self.make(prefix, shards=2 if prefix == "crash-in" else 1)
        by_seq: dict[str, bytes] = {}
        for i in range(0, len(records), 500):
            chunk = records[i : i + 500]
            resp = self.client.put_records(
                StreamName=stream, Records=[{"Data": v, "PartitionKey": k} for k, v in chunk]
            )
            assert resp["FailedRecordCount"] == 0
            for (_k, v), r in zip(chunk, resp["Records"], strict=True):
                by_seq[r["SequenceNumber"]] = v
        self.by_seq[stream] = by_seq
        return stream

    def offsets(self, inp: str) -> dict[str, bytes]:
        return self.by_seq[inp]  # sequence number -> data

    def where(self, inp: str) -> tuple[str, str]:
        from connectors.kinesis import list_shards

        return f"kinesis:{inp}", list_shards(self.client, inp)[0]["ShardId"]

    def source(self, inp: Any, role: str) -> str:
        return self.url(inp, "&tail=false&batch=500&poll=50ms")

    def output(self, prefix: str) -> Out:
        name = self.make(prefix)
        return name, name

    def sink(self, out: Out) -> str:
        return self.url(out[0])

    def read(self, out: Out) -> list[dict[str, Any]]:
        from connectors.kinesis import list_shards

        rows: list[dict[str, Any]] = []
        for shard in list_shards(self.client, out[1]):
            it = self.client.get_shard_iterator(
                StreamName=out[1], ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while it:
                resp = self.client.get_records(ShardIterator=it, Limit=10000)
                rows += [json.loads(r["Data"]) for r in resp["Records"]]
                if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                    break
                it = resp.get("NextShardIterator")
        return rows

    def check_log(self, text: str) -> None:
        # The dedup was exercised: some restart found alerts written after its snapshot.
        assert "already written after the snapshot" in text

    def cleanup(self) -> None:
        for name in self.made:
            with contextlib.suppress(Exception):  # best-effort cleanup
                self.client.delete_stream(StreamName=name)


class RedisAdapter(Adapter):
    """Redis Streams in and out: the sink dedups by alert id in a Lua script."""

    name = "redis"
    service_fixture = "redis_url"
    per_sensor = 3000
    min_s, max_s = 0.8, 1.6  # the whole run takes a few seconds: kills must land early

    def __init__(self, service: str, tmp: Path) -> None:
        import redis

        super().__init__(service, tmp)
        self.client = redis.Redis.from_url(service)
        self.by_id: dict[str, dict[str, bytes]] = {}

    def write_input(self, records: list[tuple[str, bytes]], prefix: str) -> str:
        stream = f"{prefix}-{uuid.uuid4().hex[:8]}"
        ids = write_stream(self.client, stream, records)
        self.by_id[stream] = dict(zip(ids, (v for _k, v in records), strict=True))
        return stream

    def offsets(self, inp: str) -> dict[str, bytes]:
        return self.by_id[inp]  # entry ID -> value

    def where(self, inp: str) -> tuple[str, str]:
        return f"redis:{inp}", inp

    def source(self, inp: Any, role: str) -> str:
        return f"{self.service}/{inp}?tail=false&count=200"

    def output(self, prefix: str) -> Out:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        return name, name

    def sink(self, out: Out) -> str:
        return f"{self.service}/{out[0]}"

    def read(self, out: Out) -> list[dict[str, Any]]:
        return read_stream(self.client, out[1])


def write_stream(client: Any, stream: str, records: list[tuple[str, bytes]]) -> list[str]:
    """XADD ``records`` (``key`` and ``value`` fields) in order; returns the entry IDs."""
    ids: list[str] = []
    for i in range(0, len(records), 1000):
        pipe = client.pipeline(transaction=False)
        for key, value in records[i : i + 1000]:
            pipe.xadd(stream, {"value": value, "key": key})
        ids += [x.decode() for x in pipe.execute()]
    return ids


def read_stream(client: Any, stream: str) -> list[dict[str, Any]]:
    """Every entry's ``value`` of a Redis stream, as JSON."""
    return [json.loads(f[b"value"]) for _id, f in client.xrange(stream)]


PUBSUB_PROJECT = "ad-crash"


class PubSubAdapter(Adapter):
    """Pub/Sub (ordered subscriptions) in and out: the source acks only after the epoch is
    committed; the sink is at least once, so duplicates are allowed (and counted)."""

    name = "pubsub"
    service_fixture = "pubsub_host"
    sensors, per_sensor = 20, 210  # make_readings needs per_sensor > 203
    kills, min_kills, min_s, max_s, timeout = 3, 3, 3.0, 8.0, 400.0
    exactly_once = False

    def __init__(self, service: str, tmp: Path) -> None:
        from connectors.pubsub import publisher_client, subscriber_client

        super().__init__(service, tmp)
        self.pub = publisher_client(service)
        self.sub = subscriber_client(service)
        self.topics: list[str] = []
        self.subs: list[str] = []
        self.by_id: dict[str, dict[str, bytes]] = {}

    def path(self, kind: str, name: str) -> str:
        """``projects/<project>/<kind>/<name>``."""
        return f"projects/{PUBSUB_PROJECT}/{kind}/{name}"

    def topic(self, prefix: str, subs: int = 1, ordered: bool = True) -> tuple[str, list[str]]:
        """A topic and ``subs`` subscriptions on it (created before any publish)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        path = self.pub.create_topic(name=self.path("topics", name)).name
        self.topics.append(path)
        names = []
        for i in range(subs):
            sname = f"{name}-s{i}"
            request: dict[str, Any] = {"name": self.path("subscriptions", sname), "topic": path}
            if ordered:
                request.update(enable_message_ordering=True, ack_deadline_seconds=10)
            else:
                request.update(ack_deadline_seconds=30)
            self.sub.create_subscription(request=request)
            self.subs.append(self.path("subscriptions", sname))
            names.append(sname)
        return name, names

    def publish(self, topic: str, records: list[tuple[str, bytes]], ordered: bool = True) -> Any:
        """Publish ``records`` (with their keys as ordering keys when ``ordered``);
        returns message id -> data."""
        path = self.path("topics", topic)
        if ordered:
            futs = [(v, self.pub.publish(path, v, ordering_key=k)) for k, v in records]
        else:
            futs = [(v, self.pub.publish(path, v)) for _k, v in records]
        return {f.result(timeout=60): v for v, f in futs}

    def write_input(self, records: list[tuple[str, bytes]], prefix: str) -> tuple[str, list[str]]:
        # the shared input: one subscription for the reference, one for the crash run
        topic, subs = self.topic(prefix, subs=2 if prefix == "crash-in" else 1)
        self.by_id[topic] = self.publish(topic, records)
        return topic, subs

    def offsets(self, inp: tuple[str, list[str]]) -> dict[str, bytes]:
        return self.by_id[inp[0]]  # message id -> data

    def where(self, inp: tuple[str, list[str]]) -> tuple[str, str]:
        sub = inp[1][0]
        return f"pubsub:{sub}", sub

    def url(self, name: str, query: str = "") -> str:
        """The URL of topic or subscription ``name`` on the emulator."""
        return f"pubsub://{PUBSUB_PROJECT}/{name}?emulator={self.service}{query}"

    def source(self, inp: Any, role: str) -> str:
        sub = inp[1][1 if role == "crash" else 0]
        return self.url(sub, "&idle_exit=6s&lease=10s&ack_lag=1")

    def output(self, prefix: str) -> Out:
        topic, [sub] = self.topic(prefix)
        return topic, sub

    def sink(self, out: Out) -> str:
        return self.url(out[0])

    def read(self, out: Out) -> list[dict[str, Any]]:
        return bodies(self.drain(out[1]))

    def drain(self, sub: str, quiet: float = 3.0) -> list[Any]:
        """Pull and ack until ``quiet`` seconds pass without a message."""
        return pull_all(self.sub, self.path("subscriptions", sub), quiet, 1000, 2.0)

    def compare(self, ref: tuple[list[dict], list[dict]], alerts: Out, dlq: Out) -> None:
        dups = assert_all_there(ref[0], self.read(alerts), "alert_id")
        print(f"alerts duplicated by the at-least-once sink: {dups}")
        dead = self.read(dlq)
        # Another subscription, so other dead-letter ids (they include the source); compare
        # what they carry: reason, original bytes and message id.
        key = lambda d: (d["reason"], d["value_b64"], d["offset"])  # noqa: E731
        assert {key(d) for d in dead} == {key(d) for d in ref[1]}

    def cleanup(self) -> None:
        from google.api_core import exceptions as gexc

        for s in self.subs:
            with contextlib.suppress(gexc.GoogleAPICallError):
                self.sub.delete_subscription(subscription=s)
        for t in self.topics:
            with contextlib.suppress(gexc.GoogleAPICallError):
                self.pub.delete_topic(topic=t)


def bodies(msgs: list[Any]) -> list[dict[str, Any]]:
    """The JSON bodies of Pub/Sub messages, checking each one's ``alert_id`` attribute."""
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


class FileAdapter(Adapter):
    """file:// in and out: the sink truncates its file to the snapshotted length."""

    name = "file"
    per_sensor = 4000
    kills, min_kills, min_s, max_s = 4, 3, 1.0, 2.0
    extra_env = {"AD_DETECTOR": "mad"}  # noqa: RUF012

    def write_input(self, records: list[tuple[str, bytes]], prefix: str) -> Path:
        path = self.tmp / f"{prefix}.jsonl"
        path.write_bytes(b"\n".join(v for _k, v in records) + b"\n")
        return path

    def source(self, inp: Any, role: str) -> str:
        return f"file://{inp}?batch=100"

    def output(self, prefix: str) -> Out:
        name = str(self.tmp / f"{prefix}-{uuid.uuid4().hex[:6]}.jsonl")
        return name, name

    def sink(self, out: Out) -> str:
        return f"file://{out[0]}"

    def read(self, out: Out) -> list[dict[str, Any]]:
        return [json.loads(x) for x in Path(out[1]).read_bytes().splitlines()]


ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a for a in (KafkaAdapter, KinesisAdapter, RedisAdapter, PubSubAdapter, FileAdapter)
}
