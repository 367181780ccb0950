"""The whole flow over Kinesis (kinesalite): SIGKILL at random points, bad input.

Kinesis source (replayable by sequence number) + Kinesis sink (after a resume, ids
already written after the snapshotted sequence numbers are skipped): the output of a
crashed-and-restarted run must equal a crash-free run's, without duplicates.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.kinesis import list_shards, make_client
from tests.flowrun import (
    BAD_RECORDS,
    assert_same_output,
    crash_env,
    crash_run,
    init_recovery,
    make_readings,
    run_to_completion,
    with_bad_records,
)

pytestmark = pytest.mark.slow

SENSORS, PER_SENSOR = 50, 2000
FLOW_ID = f"flow-{uuid.uuid4().hex[:8]}"


class Streams:
    """Creates uniquely named streams and deletes them at teardown."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.client = make_client(endpoint, "us-east-1")
        self.made: list[str] = []

    def make(self, prefix: str, shards: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.client.create_stream(StreamName=name, ShardCount=shards)
        self.client.get_waiter("stream_exists").wait(
            StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
        )
        self.made.append(name)
        return name

    def url(self, name: str, query: str = "") -> str:
        return f"kinesis://{name}?endpoint={self.endpoint}&region=us-east-1{query}"

    def put(self, stream: str, records: list[tuple[str, bytes]]) -> dict[str, bytes]:
        """Write keyed records in order; returns sequence number -> data."""
        by_seq: dict[str, bytes] = {}
        for i in range(0, len(records), 500):
            chunk = records[i : i + 500]
            resp = self.client.put_records(
                StreamName=stream, Records=[{"Data": v, "PartitionKey": k} for k, v in chunk]
            )
            assert resp["FailedRecordCount"] == 0
            for (_k, v), r in zip(chunk, resp["Records"], strict=True):
                by_seq[r["SequenceNumber"]] = v
        return by_seq

    def read(self, stream: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for shard in list_shards(self.client, stream):
            it = self.client.get_shard_iterator(
                StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while it:
                resp = self.client.get_records(ShardIterator=it, Limit=10000)
                out += [json.loads(r["Data"]) for r in resp["Records"]]
                if not resp["Records"] and resp.get("MillisBehindLatest", 0) == 0:
                    break
                it = resp.get("NextShardIterator")
        return out

    def cleanup(self) -> None:
        for name in self.made:
            with contextlib.suppress(Exception):  # best-effort cleanup
                self.client.delete_stream(StreamName=name)


@pytest.fixture(scope="module")
def streams(kinesis_endpoint: str) -> Iterator[Streams]:
    s = Streams(kinesis_endpoint)
    yield s
    s.cleanup()


def _env(streams: Streams, src: str, alerts: str, dlq: str) -> dict[str, str]:
    return crash_env(
        streams.url(src, "&tail=false&batch=500&poll=50ms"),
        streams.url(alerts),
        streams.url(dlq),
        FLOW_ID,
    )


@pytest.fixture(scope="module")
def crash_input(streams: Streams) -> tuple[str, int]:
    src = streams.make("crash-in", shards=2)
    records = make_readings(sensors=SENSORS, per_sensor=PER_SENSOR, bad_every=100)
    streams.put(src, records)
    bad = sum(1 for _k, v in records if not v.startswith(b'{"sensor_id": "sensor-'))
    return src, bad


@pytest.fixture(scope="module")
def reference(
    streams: Streams, crash_input: tuple[str, int], tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[dict], list[dict]]:
    src, bad = crash_input
    alerts, dlq = streams.make("ref-alerts"), streams.make("ref-dlq")
    tmp = tmp_path_factory.mktemp("ref")
    run_to_completion(
        _env(streams, src, alerts, dlq), init_recovery(tmp / "rec"), log=tmp / "flow.log"
    )
    out, dead = streams.read(alerts), streams.read(dlq)
    assert len(out) == SENSORS * ((PER_SENSOR - 1) * 10 // 60 + 1)
    assert len(dead) == bad
    return out, dead


def test_sigkill_restarts_give_the_reference_output_once(
    streams: Streams,
    crash_input: tuple[str, int],
    reference: tuple[list[dict], list[dict]],
    tmp_path: Path,
) -> None:
    src, _bad = crash_input
    alerts, dlq = streams.make("alerts"), streams.make("dlq")
    env = _env(streams, src, alerts, dlq)
    kills = crash_run(
        env,
        init_recovery(tmp_path / "rec"),
        kills=4,
        log=tmp_path / "flow.log",
        seed=5,
        min_s=1.0,
        max_s=3.0,
    )
    assert kills >= 3, f"only {kills} kills hit a running flow"
    # The dedup was exercised: some restart found alerts written after its snapshot.
    assert "already written after the snapshot" in (tmp_path / "flow.log").read_text()
    assert_same_output(reference[0], streams.read(alerts), "alert_id")
    assert_same_output(reference[1], streams.read(dlq), "dlq_id")


def test_every_bad_record_class_reaches_the_dead_letter_stream(
    streams: Streams, tmp_path: Path
) -> None:
    src, alerts, dlq = streams.make("bad-in"), streams.make("bad-al"), streams.make("bad-dlq")
    records = with_bad_records()
    by_seq = streams.put(src, [("pump-1", r) for r in records])
    run_to_completion(
        _env(streams, src, alerts, dlq), init_recovery(tmp_path / "rec"), log=tmp_path / "flow.log"
    )
    dead = streams.read(dlq)
    assert len(dead) == len(BAD_RECORDS)
    shard = list_shards(streams.client, src)[0]["ShardId"]
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    for raw, reason in BAD_RECORDS:
        d = by_value[raw]
        assert d["reason"] == reason, (raw[:60], d["reason"], d["error"])
        assert d["source"] == f"kinesis:{src}" and d["partition"] == shard
        assert by_seq[d["offset"]] == raw  # the offset is the record's sequence number
    out = streams.read(alerts)
    assert len(out) == 100 and {a["sensor_id"] for a in out} == {"pump-1"}
