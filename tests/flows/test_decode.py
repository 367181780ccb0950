"""Decoding and validation: JSON, Avro (Confluent wire format), Protobuf, evolution."""

from __future__ import annotations

import io
import json
import struct

import fastavro
import pytest

from connectors.base import RawRecord
from flows.decode import CONTROL_PREFIX, Decoder, parse_timestamp
from flows.records import Control, Reading
from schemas import HERE
from tests.flowrun import BAD_RECORDS


def _raw(value: bytes, offset: int = 0) -> RawRecord:
    return RawRecord(value, "kafka:in", "0", str(offset))


def test_json_reading_with_extras_and_rfc3339() -> None:
    d = Decoder("json")
    r = d.decode_one(_raw(b'{"sensor_id": "a", "timestamp": "2026-01-01T00:00:01.5+00:00",'
                          b' "value": 3, "tenant_id": "t", "rpm": 1200}'))
    assert isinstance(r, Reading)
    assert (r.sensor_id, r.ts, r.value, r.tenant_id) == ("a", 1_767_225_601_500, 3.0, "t")
    assert r.extra == {"rpm": 1200.0}


def test_timestamps() -> None:
    assert parse_timestamp("2026-01-01T00:00:00Z") == 1_767_225_600_000
    assert parse_timestamp(1_767_225_600_000) == 1_767_225_600_000


@pytest.mark.parametrize(("raw", "reason"), BAD_RECORDS)
def test_every_bad_json_class_gets_its_reason(raw: bytes, reason: str) -> None:
    good, bad = Decoder("json").decode_batch([_raw(raw, 7)])
    assert not good and len(bad) == 1
    body = json.loads(bad[0][1].value)
    assert body["reason"] == reason and body["offset"] == "7" and body["error"]


def test_oversize_and_order_is_kept() -> None:
    d = Decoder("json", max_bytes=100)
    batch = [_raw(b'{"sensor_id":"a","timestamp":1,"value":1}', 0), _raw(b"x" * 101, 1),
             _raw(b'{"sensor_id":"b","timestamp":2,"value":2}', 2)]
    good, bad = d.decode_batch(batch)
    assert [g.sensor_id for g in good] == ["a", "b"]
    assert json.loads(bad[0][1].value)["reason"] == "oversize"


def test_control_marker() -> None:
    good, _ = Decoder("json").decode_batch(
        [_raw(CONTROL_PREFIX + b'{"type": "model", "version": "v2"}')])
    assert isinstance(good[0], Control) and good[0].body["version"] == "v2"


def _avro(schema_file: str, schema_id: int, record: dict) -> bytes:
    schema = fastavro.parse_schema(json.loads((HERE / schema_file).read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


V1 = {"sensor_id": "a", "timestamp": 1_767_225_600_000, "value": 1.5, "tenant_id": None,
      "extra": {"rpm": 3.0}}


def test_avro_v2_reader_reads_v1_data() -> None:
    d = Decoder("avro", "sensor_reading_v2.avsc")
    r = d.decode_one(_raw(_avro("sensor_reading_v1.avsc", 1, V1)))
    assert isinstance(r, Reading) and r.value == 1.5 and r.extra == {"rpm": 3.0}


def test_avro_v1_reader_reads_v2_data() -> None:
    d = Decoder("avro", "sensor_reading_v1.avsc")
    r = d.decode_one(_raw(_avro("sensor_reading_v2.avsc", 2, {**V1, "unit": "C"})))
    assert isinstance(r, Reading) and r.sensor_id == "a" and r.ts == 1_767_225_600_000


def test_avro_bad_input() -> None:
    d = Decoder("avro")
    _, bad = d.decode_batch([_raw(b"{json}"), _raw(b"\x00\x00\x00\x00\x09abc"),
                             _raw(b"\x00\x00\x00\x00\x01\xff")])
    assert [json.loads(b[1].value)["reason"] for b in bad] == [
        "undecodable", "schema_mismatch", "schema_mismatch"]


def test_protobuf_evolution_both_ways() -> None:
    from schemas import sensor_reading_v1_pb2 as v1
    from schemas import sensor_reading_v2_pb2 as v2

    old = v1.SensorReading(sensor_id="a", timestamp_ms=1_767_225_600_000, value=2.0)
    new = v2.SensorReading(sensor_id="b", timestamp="2026-01-01T00:00:00Z", value=3.0,
                           unit="C", extra={"rpm": 7.0})
    r2 = Decoder("protobuf", "sensor_reading_v2.proto").decode_one(_raw(old.SerializeToString()))
    r1 = Decoder("protobuf", "sensor_reading_v1.proto").decode_one(_raw(new.SerializeToString()))
    assert isinstance(r2, Reading) and (r2.sensor_id, r2.value) == ("a", 2.0)
    assert isinstance(r1, Reading) and (r1.sensor_id, r1.value, r1.extra) == ("b", 3.0,
                                                                             {"rpm": 7.0})


def test_protobuf_missing_value_and_garbage() -> None:
    from schemas import sensor_reading_v2_pb2 as v2

    no_value = v2.SensorReading(sensor_id="a", timestamp_ms=5).SerializeToString()
    _, bad = Decoder("protobuf").decode_batch([_raw(no_value), _raw(b"\xff\xff\xff")])
    assert [json.loads(b[1].value)["reason"] for b in bad] == ["missing_field", "undecodable"]
