"""Control markers written into every partition of real brokers (Kafka, Redis Streams)
and files, and read back at the positions ``push_marker`` reports."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from control.markers import MarkerError, decode_marker, encode_marker, push_marker
from tests.conftest import CONTROL_KEY, REDIS_PORT
from tests.control.helpers import produce_json, read_topic

KEY = CONTROL_KEY.encode()
MARKER = encode_marker("mad", "v3", "redis://127.0.0.1:16379/ad:models/mad/v3", KEY)


def test_encode_decode_roundtrip() -> None:
    assert MARKER.startswith(b"#ADCTL{")
    assert decode_marker(MARKER, KEY) == {
        "type": "model",
        "detector": "mad",
        "version": "v3",
        "model_ref": "redis://127.0.0.1:16379/ad:models/mad/v3",
    }
    assert decode_marker(b'{"sensor_id": "a"}', KEY) is None
    with pytest.raises(ValueError):
        decode_marker(b'#ADCTL{"type": "model", "detector": "mad"}', KEY)
    # the flow's decoder recognises the same prefix
    from flows.decode import CONTROL_PREFIX

    assert MARKER[: len(CONTROL_PREFIX)] == CONTROL_PREFIX


@pytest.mark.parametrize(
    ("marker", "why"),
    [
        (MARKER.replace(b',"sig":', b',"xsig":'), "unsigned"),
        (
            encode_marker("mad", "v3", "redis://127.0.0.1:16379/ad:models/mad/v3", b"k" * 32),
            "does not match",
        ),
        (MARKER.replace(b"/v3", b"/v4"), "does not match"),  # a signed marker, edited
    ],
)
def test_forged_markers_are_refused(marker: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_marker(marker, KEY)
    with pytest.raises(ValueError, match="no AD_CONTROL_KEY"):
        decode_marker(MARKER, None)


def test_kafka_marker_lands_in_every_partition_after_existing_data(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(3)
    for p in range(3):
        produce_json(
            kafka_brokers, topic, [("k", b'{"x": %d}' % i) for i in range(p + 2)], partition=p
        )
    written = push_marker(f"kafka://{kafka_brokers}/{topic}?tail=false", MARKER)
    assert {w.partition: w.position for w in written} == {
        f"{topic}:0": "2",
        f"{topic}:1": "3",
        f"{topic}:2": "4",
    }
    rows = read_topic(kafka_brokers, topic, raw=True)
    last = {p: (off, v) for p, off, v in rows}
    assert all(v == MARKER for _off, v in last.values())


def test_redis_stream_markers(redis_url: str) -> None:
    client = redis.Redis(port=REDIS_PORT)
    streams = [f"ctl-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    try:
        for s in streams:
            client.xadd(s, {"value": b'{"x": 1}'})
        written = push_marker(f"{redis_url}/{','.join(streams)}", MARKER)
        assert [w.partition for w in written] == streams
        for s, w in zip(streams, written, strict=True):
            entry = client.xrange(s, w.position, w.position)
            assert entry[0][1][b"value"] == MARKER
        with pytest.raises(MarkerError, match="does not exist"):
            push_marker(f"{redis_url}/no-such-{uuid.uuid4().hex}", MARKER)
    finally:
        client.delete(*streams)


def test_file_marker_and_unsupported_sources(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_bytes(b'{"a": 1}\n')
    (w,) = push_marker(f.as_uri(), MARKER)
    assert w.position == "9" and f.read_bytes().splitlines()[-1] == MARKER
    with pytest.raises(MarkerError, match="Pub/Sub"):
        push_marker("pubsub://proj/sub", MARKER)
    with pytest.raises(MarkerError, match="does not exist"):
        push_marker((tmp_path / "missing").as_uri(), MARKER)
