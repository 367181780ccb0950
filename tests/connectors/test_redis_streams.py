"""Redis Streams source and sink against a real redis-server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from connectors.base import ConnectorContext, OutRecord, RawRecord, parse_url
from connectors.redis_streams import (
    RedisStreamSink,
    RedisStreamSource,
    sink_from_url,
    source_from_url,
)
from tests.connectors._services import Service, start_private

SETTINGS = ConnectorContext(flow_id="test-flow")


@pytest.fixture
def rport(redis_url: str) -> int:
    """The shared stack's Redis (conftest fails the test if it is down)."""
    return int(redis_url.rsplit(":", 1)[1])


@pytest.fixture
def rclient(rport: int) -> Iterator[redis.Redis]:
    client = redis.Redis(port=rport)
    yield client
    client.close()


@pytest.fixture
def make_stream(rclient: redis.Redis) -> Iterator[Callable[[], str]]:
    """Factory: a unique stream name; the stream and its dedup keys are deleted after."""
    made: list[str] = []

    def make() -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        made.append(name)
        return name

    yield make
    for name in made:
        rclient.delete(name)
        for key in rclient.scan_iter(match=f"ad:dedup:{{{name}}}:*"):
            rclient.delete(key)


def add(client: redis.Redis, stream: str, n: int, start: int = 0) -> list[str]:
    return [
        client.xadd(stream, {"value": f'{{"i": {i}}}', "key": f"s{i % 3}"}).decode()
        for i in range(start, start + n)
    ]


def drain(part, until: int | None = None, timeout: float = 10.0) -> list[RawRecord]:
    """Read batches until ``until`` records, or StopIteration; fail on timeout."""
    got: list[RawRecord] = []
    deadline = time.monotonic() + timeout
    while until is None or len(got) < until:
        assert time.monotonic() < deadline, f"timed out with {len(got)} records"
        try:
            batches = part.next_batch()
        except StopIteration:
            break
        for b in batches:
            got.extend(b)
        if not batches:
            time.sleep(0.005)
    return got


def test_source_resume_no_gap_no_repeat(rclient, rport, make_stream):
    stream = make_stream()
    ids = add(rclient, stream, 50)
    src = RedisStreamSource("127.0.0.1", rport, [stream], tail=False, count=7)
    assert src.list_parts() == [stream]
    part = src.build_part("s", stream, None)
    first = drain(part, until=20)
    state = part.snapshot()
    assert state == first[-1].offset
    part.close()
    # One more batch read after the snapshot is lost with the "crash"; it must come again.
    lost = drain(src.build_part("s", stream, state), until=1)
    part2 = src.build_part("s", stream, state)
    rest = drain(part2)
    assert [r.offset for r in first + rest] == ids
    assert rest[0].offset == lost[0].offset
    r = first[0]
    assert (r.value, r.source, r.partition, r.key) == (
        b'{"i": 0}',
        f"redis:{stream}",
        stream,
        b"s0",
    )


def test_source_batches_are_single_items(rclient, rport, make_stream):
    stream = make_stream()
    add(rclient, stream, 10)
    part = RedisStreamSource("127.0.0.1", rport, [stream], count=4).build_part("s", stream, None)
    out = part.next_batch()
    assert len(out) == 1 and len(out[0]) == 4
    assert all(isinstance(r, RawRecord) for r in out[0])


def test_source_tail_false_stops_at_last_id_at_build(rclient, rport, make_stream):
    stream = make_stream()
    ids = add(rclient, stream, 5)
    part = RedisStreamSource("127.0.0.1", rport, [stream], tail=False).build_part("s", stream, None)
    add(rclient, stream, 5, start=5)  # after build: not part of this bounded read
    assert [r.offset for r in drain(part)] == ids


def test_source_tail_true_never_blocks_and_sees_new_entries(rclient, rport, make_stream):
    stream = make_stream()
    part = RedisStreamSource("127.0.0.1", rport, [stream]).build_part("s", stream, None)
    for _ in range(20):
        t0 = time.perf_counter()
        assert part.next_batch() == []
        assert time.perf_counter() - t0 < 0.05
    assert part.next_awake() is not None
    ids = add(rclient, stream, 3)
    assert [r.offset for r in drain(part, until=3)] == ids


def test_source_start_dollar_skips_existing(rclient, rport, make_stream):
    stream = make_stream()
    add(rclient, stream, 5)
    src = RedisStreamSource("127.0.0.1", rport, [stream], start="$")
    part = src.build_part("s", stream, None)
    new = add(rclient, stream, 2, start=5)
    assert [r.offset for r in drain(part, until=2)] == new


def test_source_entry_without_value_field_keeps_content(rclient, rport, make_stream):
    stream = make_stream()
    rclient.xadd(stream, {"sensor_id": "a", "v": "1"})
    part = RedisStreamSource("127.0.0.1", rport, [stream], tail=False).build_part("s", stream, None)
    (rec,) = drain(part)
    assert rec.value == b'{"sensor_id": "a", "v": "1"}'


def test_source_reconnects_after_redis_restart(tmp_path: Path):
    svc = start_private("redis", tmp_path / "redis")
    try:
        client = redis.Redis(port=svc.port)
        stream = "restart-stream"
        ids = add(client, stream, 30)
        part = RedisStreamSource("127.0.0.1", svc.port, [stream], count=10).build_part(
            "s", stream, None
        )
        got = drain(part, until=10)
        svc.stop()
        for _ in range(5):  # down: no exception, no blocking, backoff through next_awake
            t0 = time.perf_counter()
            assert part.next_batch() == []
            assert time.perf_counter() - t0 < 1.0
            assert part.next_awake() is not None
        svc.start()
        ids += add(client, stream, 20, start=30)
        got += drain(part, until=40, timeout=20)
        assert [r.offset for r in got] == ids
        client.close()
        part.close()
    finally:
        svc.stop()


def alerts(n: int, start: int = 0) -> list[OutRecord]:
    return [
        OutRecord(f"a{i}", f"s{i % 4}", f'{{"alert_id": "a{i}", "n": {i}}}'.encode())
        for i in range(start, start + n)
    ]


def stream_ids(client: redis.Redis, stream: str) -> list[str]:
    return [f[b"id"].decode() for _, f in client.xrange(stream)]


def test_sink_dedup_after_rebuild_from_older_snapshot(rclient, rport, make_stream):
    stream = make_stream()
    sink = RedisStreamSink("127.0.0.1", rport, stream, "flow-a")
    part = sink.build_part("o", "0", None)
    part.write_batch(alerts(10))
    old = part.snapshot()
    part.write_batch(alerts(10, start=10))
    # crash; resume from the older snapshot: the replay re-sends 10..19, then new ones
    part2 = sink.build_part("o", "0", old)
    part2.write_batch(alerts(15, start=10))
    assert part2.written == 5
    assert stream_ids(rclient, stream) == [f"a{i}" for i in range(25)]
    (_, fields) = rclient.xrange(stream, count=1)[0]
    assert fields == {b"id": b"a0", b"key": b"s0", b"value": b'{"alert_id": "a0", "n": 0}'}
    ttl = rclient.ttl(f"ad:dedup:{{{stream}}}:flow-a:a0")
    assert 6 * 86400 < ttl <= 7 * 86400


def test_sink_dedup_is_per_flow(rclient, rport, make_stream):
    stream = make_stream()
    RedisStreamSink("127.0.0.1", rport, stream, "f1").build_part("o", "0", None).write_batch(
        alerts(3)
    )
    RedisStreamSink("127.0.0.1", rport, stream, "f2").build_part("o", "0", None).write_batch(
        alerts(3)
    )
    assert len(stream_ids(rclient, stream)) == 6


def test_sink_maxlen(rclient, rport, make_stream):
    stream = make_stream()
    part = RedisStreamSink("127.0.0.1", rport, stream, "f", maxlen=5).build_part("o", "0", None)
    part.write_batch(alerts(20))
    assert stream_ids(rclient, stream) == [f"a{i}" for i in range(15, 20)]


def test_sink_retries_through_redis_restart(tmp_path: Path):
    svc: Service = start_private("redis", tmp_path / "redis")
    try:
        part = RedisStreamSink("127.0.0.1", svc.port, "out", "f").build_part("o", "0", None)
        part.write_batch(alerts(5))
        svc.stop()
        threading.Timer(1.0, svc.start).start()
        part.write_batch(alerts(10))  # 0..4 again (deduplicated) and 5..9, after reconnect
        client = redis.Redis(port=svc.port)
        assert stream_ids(client, "out") == [f"a{i}" for i in range(10)]
        client.close()
    finally:
        time.sleep(1.5)
        svc.stop()


def test_from_url(rport):
    url = parse_url(f"redis://127.0.0.1:{rport}/a,b?tail=false&count=5&start=$&poll=50ms")
    src = source_from_url(url, SETTINGS)
    assert src.list_parts() == ["a", "b"]
    assert (src._tail, src._count, src._start, src._poll) == (False, 5, "$", 0.05)
    sink = sink_from_url(
        parse_url(f"redis://127.0.0.1:{rport}/out?maxlen=9&dedup_ttl=1h"), SETTINGS
    )
    assert (sink._maxlen, sink._ttl, sink._prefix) == (9, 3600, "ad:dedup:{out}:test-flow:")
    with pytest.raises(ValueError):
        sink_from_url(parse_url(f"redis://127.0.0.1:{rport}/a,b"), SETTINGS)
