"""Kinesis source and sink against a real kinesalite.

kinesalite cannot throttle and never answers PutRecords with a partial failure (its
putRecords.js always returns FailedRecordCount 0), so those two paths are driven by
fault injection through botocore's event hooks; everything else is the real server.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from connectors.base import ConnectorContext, OutRecord, RawRecord, parse_url
from connectors.kinesis import (
    KinesisSink,
    KinesisSource,
    list_shards,
    make_client,
    sink_from_url,
    source_from_url,
)
from tests.connectors._services import KINESALITE, start_private

SETTINGS = ConnectorContext(flow_id="test-flow")


@pytest.fixture
def kclient(kinesis_endpoint: str) -> Any:
    return make_client(kinesis_endpoint, "us-east-1")


def _create(client: Any, name: str, shards: int) -> None:
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
    )


@pytest.fixture
def make_stream(kclient: Any) -> Iterator[Callable[..., str]]:
    """Factory: ``make_stream(shards=2)`` creates a unique ACTIVE stream, deleted after."""
    made: list[str] = []

    def make(shards: int = 2) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        _create(kclient, name, shards)
        made.append(name)
        return name

    yield make
    for name in made:
        with contextlib.suppress(ClientError):
            kclient.delete_stream(StreamName=name)


def put(
    client: Any,
    stream: str,
    n: int,
    start: int = 0,
    key: Callable[[int], str] | None = None,
) -> list[dict]:
    key = key or (lambda i: f"sensor-{i % 7}")
    out = []
    for i in range(start, start + n):
        r = client.put_record(
            StreamName=stream, Data=json.dumps({"i": i}).encode(), PartitionKey=key(i)
        )
        out.append({"i": i, "shard": r["ShardId"], "seq": r["SequenceNumber"]})
    return out


def drain(part: Any, until: int | None = None, timeout: float = 15.0) -> list[RawRecord]:
    got: list[RawRecord] = []
    deadline = time.monotonic() + timeout
    while until is None or len(got) < until:
        assert time.monotonic() < deadline, f"timed out with {len(got)} records"
        awake = part.next_awake()
        if awake is not None:
            time.sleep(max(0.0, min(0.5, (awake - datetime.now(UTC)).total_seconds())))
        try:
            batches = part.next_batch()
        except StopIteration:
            break
        for b in batches:
            got.extend(b)
    return got


def ints(recs: list[RawRecord]) -> list[int]:
    return [json.loads(r.value)["i"] for r in recs]


def test_source_resume_per_shard_no_gap_no_repeat(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(2)
    written = put(kclient, stream, 60)
    src = KinesisSource(stream, endpoint=kinesis_endpoint, tail=False, batch=4)
    parts = src.list_parts()
    assert sorted(parts) == sorted({w["shard"] for w in written}) and len(parts) == 2
    for shard in parts:
        expect = [w["i"] for w in written if w["shard"] == shard]
        part = src.build_part("k", shard, None)
        first = drain(part, until=min(8, len(expect)))
        state = part.snapshot()
        assert state == {"seq": first[-1].offset, "at": None, "done": False}
        drain(src.build_part("k", shard, state), until=1)  # read after the snapshot, then lost
        rest = drain(src.build_part("k", shard, state))
        assert ints(first + rest) == expect
        r = first[0]
        assert (r.source, r.partition, r.key) == (
            f"kinesis:{stream}",
            shard,
            f"sensor-{expect[0] % 7}".encode(),
        )


def test_source_next_batch_never_waits(kinesis_endpoint, make_stream):
    stream = make_stream(1)
    src = KinesisSource(stream, endpoint=kinesis_endpoint, poll=0.2)
    part = src.build_part("k", src.list_parts()[0], None)
    t0 = time.perf_counter()
    assert part.next_batch() == []
    assert time.perf_counter() - t0 < 0.5
    awake = part.next_awake()
    assert awake is not None and 0.05 < (awake - datetime.now(UTC)).total_seconds() <= 0.2


def test_source_latest_resumes_where_it_first_started(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(1)
    put(kclient, stream, 3)  # before the start: LATEST skips these
    src = KinesisSource(stream, endpoint=kinesis_endpoint, start="LATEST", tail=False)
    shard = src.list_parts()[0]
    part = src.build_part("k", shard, None)
    assert drain(part) == []
    state = part.snapshot()
    assert state["seq"] is None and state["at"] is not None
    time.sleep(0.05)
    put(kclient, stream, 4, start=3)  # while "crashed": must not be skipped on resume
    assert ints(drain(src.build_part("k", shard, state))) == [3, 4, 5, 6]


def test_source_resumed_latest_with_nothing_newer(kclient, kinesis_endpoint, make_stream):
    """kinesalite never answers AT_TIMESTAMP when no record is that recent; the source
    then reads from TRIM_HORIZON, filtering by arrival time, instead of stalling."""
    stream = make_stream(1)
    put(kclient, stream, 3)
    time.sleep(0.05)
    src = KinesisSource(stream, endpoint=kinesis_endpoint, start="LATEST", poll=0.05)
    shard = src.list_parts()[0]
    state = src.build_part("k", shard, None).snapshot()
    part = src.build_part("k", shard, state)
    part.next_batch()  # the one AT_TIMESTAMP attempt (times out on kinesalite)
    for _ in range(5):
        t0 = time.perf_counter()
        assert part.next_batch() == []
        assert time.perf_counter() - t0 < 0.5
    put(kclient, stream, 2, start=3)
    assert ints(drain(part, until=2)) == [3, 4]


def test_source_at_timestamp(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(1)
    put(kclient, stream, 3)
    time.sleep(1.1)
    at = time.time()
    time.sleep(0.1)
    put(kclient, stream, 2, start=3)
    src = source_from_url(
        parse_url(
            f"kinesis://{stream}?endpoint={kinesis_endpoint}&start=AT_TIMESTAMP"
            f"&at={datetime.fromtimestamp(at, UTC).isoformat()}&tail=false"
        ),
        SETTINGS,
    )
    assert ints(drain(src.build_part("k", src.list_parts()[0], None))) == [3, 4]


def test_source_resharding_drains_parent_before_children(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(1)
    before = put(kclient, stream, 30)
    parent = before[0]["shard"]
    kclient.split_shard(StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str(2**127))
    kclient.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
    )
    after = put(kclient, stream, 30, start=30)
    children = sorted({w["shard"] for w in after})
    assert len(children) == 2 and parent not in children
    src = KinesisSource(stream, endpoint=kinesis_endpoint, tail=False, batch=7)
    assert sorted(src.list_parts()) == sorted([parent, *children])
    step = f"k-{uuid.uuid4().hex[:6]}"
    # Children built first and polled first: they must wait for the parent.
    parts = {s: src.build_part(step, s, None) for s in [*children, parent]}
    emitted: list[tuple[str, int]] = []
    live = dict(parts)
    deadline = time.monotonic() + 20
    while live:
        assert time.monotonic() < deadline
        for shard, part in list(live.items()):
            try:
                for b in part.next_batch():
                    emitted += [(shard, i) for i in ints(b)]
            except StopIteration:
                del live[shard]
        time.sleep(0.01)
    order = [i for _s, i in emitted]
    assert sorted(order) == list(range(60))
    last_parent = max(k for k, (s, _i) in enumerate(emitted) if s == parent)
    first_child = min(k for k, (s, _i) in enumerate(emitted) if s != parent)
    assert last_parent < first_child
    for shard in children:  # per-shard order kept
        mine = [i for s, i in emitted if s == shard]
        assert mine == sorted(mine) and mine == [w["i"] for w in after if w["shard"] == shard]
    assert parts[parent].snapshot()["done"] is True
    # A resumed, drained parent is finished at once and lets its children go.
    resumed = src.build_part(step + "x", parent, parts[parent].snapshot())
    with pytest.raises(StopIteration):
        resumed.next_batch()


def _expire(iterator: str) -> str:
    """Re-date a kinesalite iterator 301 s into the past (kinesalite expires at 300 s)."""
    mod = KINESALITE.resolve().parent / "db"  # .bin/kinesalite -> kinesalite/cli.js
    js = f"""
    const crypto = require('crypto'); const db = require({json.dumps(str(mod))});
    const buf = Buffer.from(process.argv[1], 'base64');
    const d = crypto.createDecipheriv('aes-256-cbc', db.ITERATOR_PWD_KEY, db.ITERATOR_PWD_IV);
    const p = Buffer.concat([d.update(buf.slice(8)), d.final()]).toString('utf8').split('/');
    p[0] = ('0000000000000' + (Date.now() - 301000)).slice(-14);
    const c = crypto.createCipheriv('aes-256-cbc', db.ITERATOR_PWD_KEY, db.ITERATOR_PWD_IV);
    process.stdout.write(Buffer.concat([buf.slice(0, 8), c.update(p.join('/'), 'utf8'),
                                        c.final()]).toString('base64'));
    """
    return subprocess.run(
        ["node", "-e", js, iterator], check=True, capture_output=True, text=True
    ).stdout


def test_source_recovers_from_expired_iterator(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(1)
    put(kclient, stream, 20)
    src = KinesisSource(stream, endpoint=kinesis_endpoint, tail=False, batch=5)
    part = src.build_part("k", src.list_parts()[0], None)
    first = drain(part, until=5)
    part._iterator = _expire(part._iterator)
    with pytest.raises(ClientError, match="ExpiredIteratorException"):
        kclient.get_records(ShardIterator=part._iterator)  # the real server rejects it
    assert part.next_batch() == []  # expired: re-created from the last sequence number
    assert ints(first + drain(part)) == list(range(20))


def test_source_backs_off_when_throttled(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(1)
    put(kclient, stream, 10)
    src = KinesisSource(stream, endpoint=kinesis_endpoint, tail=False)
    part = src.build_part("k", src.list_parts()[0], None)
    throttles = {"left": 3}

    def throttle(**_kw: Any) -> None:  # fault injection: kinesalite never throttles
        if throttles["left"]:
            throttles["left"] -= 1
            raise ClientError(
                {
                    "Error": {
                        "Code": "ProvisionedThroughputExceededException",
                        "Message": "Rate exceeded for shard",
                    }
                },
                "GetRecords",
            )

    part._client.meta.events.register("before-call.kinesis.GetRecords", throttle)
    waits = []
    for _ in range(3):
        t0 = time.perf_counter()
        assert part.next_batch() == []
        assert time.perf_counter() - t0 < 0.5
        waits.append((part.next_awake() - datetime.now(UTC)).total_seconds())
    assert waits[0] < waits[1] < waits[2] <= 5.0
    assert ints(drain(part)) == list(range(10))


def test_source_survives_kinesalite_restart(tmp_path: Path):
    svc = start_private("kinesis", tmp_path / "kin")
    try:
        endpoint = f"http://{svc.endpoint}"
        client = make_client(endpoint, "us-east-1")
        _create(client, "restart", 1)
        put(client, "restart", 30)
        src = KinesisSource("restart", endpoint=endpoint, batch=10, poll=0.05)
        part = src.build_part("k", src.list_parts()[0], None)
        got = drain(part, until=10)
        svc.stop()
        for _ in range(3):
            t0 = time.perf_counter()
            assert part.next_batch() == []
            assert time.perf_counter() - t0 < 1.5
        svc.start()
        put(client, "restart", 20, start=30)
        got += drain(part, until=40, timeout=30)
        assert ints(got) == list(range(50))
    finally:
        svc.stop()


# -- sink --------------------------------------------------------------------------------


def alerts(n: int, start: int = 0, size: int = 0) -> list[OutRecord]:
    pad = "x" * size
    return [
        OutRecord(
            f"a{i}", f"sensor-{i % 5}", json.dumps({"alert_id": f"a{i}", "pad": pad}).encode()
        )
        for i in range(start, start + n)
    ]


def stream_alert_ids(client: Any, stream: str) -> list[str]:
    ids = []
    for shard in list_shards(client, stream):
        it = client.get_shard_iterator(
            StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while it:
            resp = client.get_records(ShardIterator=it, Limit=10000)
            ids += [json.loads(r["Data"])["alert_id"] for r in resp["Records"]]
            if not resp["Records"]:
                break
            it = resp.get("NextShardIterator")
    return ids


def test_sink_chunks_within_api_limits(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(2)
    part = KinesisSink(stream, endpoint=kinesis_endpoint).build_part("o", "0", None)
    sizes: list[tuple[int, int]] = []

    def spy(params: dict, **_kw: Any) -> None:
        recs = params["Records"]
        sizes.append((len(recs), sum(len(r["Data"]) + len(r["PartitionKey"]) for r in recs)))

    part._client.meta.events.register("provide-client-params.kinesis.PutRecords", spy)
    part.write_batch(alerts(1200))
    assert [n for n, _b in sizes] == [500, 500, 200]
    part.write_batch(alerts(11, start=1200, size=600 * 1024))
    assert [n for n, _b in sizes[3:]] == [8, 3]
    assert all(b <= 5 * 1024 * 1024 for _n, b in sizes)
    got = stream_alert_ids(kclient, stream)
    assert sorted(got) == sorted(f"a{i}" for i in range(1211)) and len(got) == 1211
    with pytest.raises(ValueError, match="1 MiB"):
        part.write_batch(alerts(1, start=5000, size=1024 * 1024))


def test_sink_retries_only_failed_entries(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(2)
    part = KinesisSink(stream, endpoint=kinesis_endpoint).build_part("o", "0", None)
    sent: list[list[str]] = []
    withheld: dict[str, list[int]] = {"pos": []}

    def drop_some(params: dict, **_kw: Any) -> None:
        # Fault injection (kinesalite never fails single entries): on the first call, keep
        # entries 3, 7 and 11 away from the real server and report them throttled below.
        recs = params["Records"]
        sent.append([json.loads(r["Data"])["alert_id"] for r in recs])
        if len(sent) == 1:
            withheld["pos"] = [3, 7, 11]
            params["Records"] = [r for k, r in enumerate(recs) if k not in withheld["pos"]]

    def report_failed(parsed: dict, **_kw: Any) -> None:
        if withheld["pos"]:
            for k in withheld["pos"]:
                parsed["Records"].insert(
                    k,
                    {
                        "ErrorCode": "ProvisionedThroughputExceededException",
                        "ErrorMessage": "Rate exceeded for shard",
                    },
                )
            parsed["FailedRecordCount"] = len(withheld["pos"])
            withheld["pos"] = []

    part._client.meta.events.register("provide-client-params.kinesis.PutRecords", drop_some)
    part._client.meta.events.register("after-call.kinesis.PutRecords", report_failed)
    part.write_batch(alerts(20))
    assert sent[1] == ["a3", "a7", "a11"]  # the retry carries the failed entries only
    assert part.retried == 3 and part.put_calls == 2
    got = stream_alert_ids(kclient, stream)
    assert sorted(got) == sorted(f"a{i}" for i in range(20)) and len(got) == 20


def test_sink_dedup_after_rebuild_from_older_snapshot(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(2)
    sink = KinesisSink(stream, endpoint=kinesis_endpoint)
    part = sink.build_part("o", "0", None)
    part.write_batch(alerts(10))
    old = part.snapshot()
    part.write_batch(alerts(10, start=10))  # written, then the process dies
    # Resume from the older snapshot: replay of 10..19 is skipped, 20..24 are new.
    part2 = sink.build_part("o", "0", old)
    state_after_resume = part2.snapshot()
    assert sorted(state_after_resume["skip"]) == sorted(f"a{i}" for i in range(10, 20))
    part2.write_batch(alerts(12, start=10))  # 10..21
    # Crash again before the rest of the replay; resume from the snapshot taken right
    # after the first resume: the ids still to be replayed are in its "skip" list.
    part3 = sink.build_part("o", "0", state_after_resume)
    part3.write_batch(alerts(15, start=10))  # 10..24
    got = stream_alert_ids(kclient, stream)
    assert sorted(got) == sorted(f"a{i}" for i in range(25)) and len(got) == 25


def test_sink_dedup_from_a_snapshot_without_positions(kclient, kinesis_endpoint, make_stream):
    """Shards the partition never wrote to are read back from the snapshot time (on
    kinesalite, through the TRIM_HORIZON fallback: it never answers AT_TIMESTAMP when
    no record is that recent)."""
    stream = make_stream(3)
    sink = KinesisSink(stream, endpoint=kinesis_endpoint)
    part = sink.build_part("o", "0", None)
    old = part.snapshot()  # nothing written yet: only the time
    assert old["seqs"] == {}
    recs = [
        OutRecord(f"b{i}", "one-sensor", json.dumps({"alert_id": f"b{i}"}).encode())
        for i in range(10)
    ]
    part.write_batch(recs[:6])
    part2 = sink.build_part("o", "0", old)
    part2.write_batch(recs)
    got = stream_alert_ids(kclient, stream)
    assert sorted(got) == sorted(f"b{i}" for i in range(10)) and len(got) == 10


def test_sink_new_execution_without_state_writes_everything(kclient, kinesis_endpoint, make_stream):
    stream = make_stream(1)
    sink = KinesisSink(stream, endpoint=kinesis_endpoint)
    sink.build_part("o", "0", None).write_batch(alerts(3))
    sink.build_part("o", "0", None).write_batch(alerts(3))
    assert len(stream_alert_ids(kclient, stream)) == 6  # no state: nothing to dedup against


def test_from_url(kinesis_endpoint):
    src = source_from_url(
        parse_url(
            f"kinesis://sensors?endpoint={kinesis_endpoint}&region=eu-west-1&start=latest"
            "&tail=false&batch=50&poll=1s"
        ),
        SETTINGS,
    )
    assert (src._stream, src._region, src._start, src._tail, src._batch, src._poll) == (
        "sensors",
        "eu-west-1",
        "LATEST",
        False,
        50,
        1.0,
    )
    with pytest.raises(ValueError, match="AT_TIMESTAMP"):
        source_from_url(parse_url("kinesis://s?start=AT_TIMESTAMP"), SETTINGS)
    sink = sink_from_url(
        parse_url(f"kinesis://alerts?endpoint={kinesis_endpoint}&partitions=3"), SETTINGS
    )
    assert sink.list_parts() == ["0", "1", "2"]
