"""Kafka source and exactly-once sink at partition level, against the real broker."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from confluent_kafka import KafkaException

from connectors import placement
from connectors.base import ConnectorContext, OutRecord, parse_url
from connectors.kafka import ExactlyOnceKafkaSink, KafkaSource, source_from_url
from tests.kafka_util import produce, read_committed


def _drain(part: Any, limit: int | None = None) -> list[str]:
    got: list[str] = []
    for _ in range(2000):
        try:
            batch = part.next_batch()
        except StopIteration:
            break
        if not batch:
            time.sleep(0.01)
        for b in batch:
            got.extend(r.value.decode() for r in b)
        if limit is not None and len(got) >= limit:
            break
    return got


def test_source_resumes_from_snapshot_without_gap_or_repeat(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(1)
    produce(kafka_brokers, topic, [("k", str(i).encode()) for i in range(1000)])
    src = KafkaSource(kafka_brokers, [topic], tail=False, batch_size=100)
    assert src.list_parts() == [f"{topic}#0"]
    part = src.build_part("read", f"{topic}#0", None)
    first = _drain(part, limit=300)
    state = part.snapshot()
    group = placement.partition_group(f"{topic}#0", 0)
    assert state == (len(first), group)
    part.close()
    part = src.build_part("read", f"{topic}#0", state)
    rest = _drain(part, limit=300)
    state2 = part.snapshot()
    part.close()
    # a bare offset, as earlier versions snapshotted, resumes the same way
    part = src.build_part("read", f"{topic}#0", state2[0])
    assert part.snapshot() == state2
    rest += _drain(part)
    part.close()
    assert first + rest == [str(i) for i in range(1000)]


def test_source_batches_carry_a_key_group_fixed_at_first_read(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(3)
    produce(kafka_brokers, topic, [(f"k{i}", b"x") for i in range(60)])
    src = KafkaSource(kafka_brokers, [topic], tail=False, batch_size=100)
    for rank, p in enumerate(src.list_parts()):
        part = src.build_part("read", p, None)
        groups = set()
        for _ in range(200):
            try:
                groups.update(b.group for b in part.next_batch())
            except StopIteration:
                break
        offset, group = part.snapshot()
        part.close()
        assert group == placement.partition_group(p, rank) and groups <= {group}
        assert all(placement.route(group, w) == rank % w for w in range(1, 9))
        # the name is kept from the resume state, whatever the ranks are now
        part = src.build_part("read", p, (offset, "renamed"))
        assert part.snapshot() == (offset, "renamed")
        part.close()


def test_source_tail_false_stops_at_the_end_seen_at_start(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(2)
    produce(kafka_brokers, topic, [(f"k{i}", b"x") for i in range(50)])
    src = source_from_url(
        parse_url(f"kafka://{kafka_brokers}/{topic}?tail=false"), ConnectorContext()
    )
    total = 0
    for p in src.list_parts():
        part = src.build_part("read", p, None)
        total += len(_drain(part))
        with pytest.raises(StopIteration):
            part.next_batch()
    assert total == 50


def test_source_reports_a_missing_topic_clearly(kafka_brokers: str) -> None:
    name = f"no-such-topic-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError, match=name):
        KafkaSource(kafka_brokers, [name], tail=False).list_parts()


def _recs(lo: int, hi: int) -> list[OutRecord]:
    return [
        OutRecord(f"id-{i}", "k", json.dumps({"alert_id": f"id-{i}"}).encode())
        for i in range(lo, hi)
    ]


def test_sink_skips_records_committed_after_the_resumed_snapshot(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(1)
    sink = ExactlyOnceKafkaSink(kafka_brokers, topic, "unit-flow")
    (pname,) = sink.list_parts()
    part = sink.build_part("out", pname, None)
    part.write_batch(_recs(0, 10))
    s1 = part.snapshot()  # epoch 1 committed and recorded
    part.write_batch(_recs(10, 20))
    part.snapshot()  # epoch 2 committed ... but the process dies before it is recorded
    # resume from epoch 1's state: the replay writes epoch 2 (and 3) again
    part = sink.build_part("out", pname, s1)
    part.write_batch(_recs(10, 30))
    part.snapshot()
    part.close()
    ids = [r["alert_id"] for r in read_committed(kafka_brokers, topic)]
    assert ids == [f"id-{i}" for i in range(30)]


def test_sink_new_instance_fences_the_zombie_and_aborts_its_transaction(
    kafka_brokers: str, kafka_topic: Any
) -> None:
    topic = kafka_topic(1)
    sink = ExactlyOnceKafkaSink(kafka_brokers, topic, "zombie-flow")
    (pname,) = sink.list_parts()
    zombie = sink.build_part("out", pname, None)
    zombie.write_batch(_recs(0, 5))
    state = zombie.snapshot()
    zombie.write_batch(_recs(5, 10))  # open transaction, never committed by the zombie
    zombie._producer.flush(10)
    fresh = sink.build_part("out", pname, state)  # same transactional.id: fences it
    with pytest.raises((KafkaException, RuntimeError)):
        zombie.snapshot()
    fresh.write_batch(_recs(5, 8))
    fresh.snapshot()
    ids = [r["alert_id"] for r in read_committed(kafka_brokers, topic)]
    assert ids == [f"id-{i}" for i in range(8)]  # the zombie's 5..9 were aborted


def test_sinks_starting_together_find_their_coordinator_at_once(
    kafka_brokers: str, kafka_topic: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    """No sink partition looks up its transaction coordinator while it has no broker
    connection up (librdkafka then retries only after 500 ms: one process's stalled
    start put its epochs out of step with the others', ``_TxnSinkPartition._connect``).
    Read from librdkafka's own ``eos`` debug log, not from timings.
    """
    topic = kafka_topic(8)
    sink = ExactlyOnceKafkaSink(
        kafka_brokers,
        topic,
        f"start-{uuid.uuid4().hex[:8]}",
        partitions=8,
        extra={"debug": "eos"},
    )
    names = sink.list_parts()
    with ThreadPoolExecutor(len(names)) as pool:  # as the processes of a flow start theirs
        parts = list(pool.map(lambda n: sink.build_part("out", n, None), names))
    for part in parts:
        part.close()
    log = capfd.readouterr().err
    assert log.count("Querying for transaction coordinator") >= len(names)  # the log is on
    assert "Unable to query for transaction coordinator" not in log


def test_security_settings_pass_through_to_the_clients(kafka_brokers: str) -> None:
    """AD_KAFKA_* settings reach every librdkafka client the connectors build."""
    from connectors import make_sink, make_source
    from flows.settings import load_settings

    s = load_settings(
        {
            "AD_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "AD_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "AD_KAFKA_SASL_USERNAME": "svc",
            "AD_KAFKA_SASL_PASSWORD": "pw",
        }
    )
    want = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "pw",
    }
    assert s.kafka == want
    no_check = "?connect_timeout=0s"  # the broker here speaks plaintext
    src = make_source(f"kafka://{kafka_brokers}/in{no_check}", s.connector_context())
    sink = make_sink(f"kafka://{kafka_brokers}/out{no_check}", s.connector_context())
    with pytest.raises(ValueError, match="cannot reach Kafka") as exc:
        make_sink(f"kafka://{kafka_brokers}/out?connect_timeout=2s", s.connector_context())
    assert "pw" not in str(exc.value)
    assert src._extra == want and sink._extra == want
