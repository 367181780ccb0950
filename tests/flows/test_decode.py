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
from tests.flowrun import BAD_RECORDS, KEY, signed_marker


def _raw(value: bytes, offset: int = 0) -> RawRecord:
    return RawRecord(value, "kafka:in", "0", str(offset))


def test_json_reading_with_extras_and_rfc3339() -> None:
    d = Decoder("json")
    r = d.decode_one(
        _raw(
            b'{"sensor_id": "a", "timestamp": "2026-01-01T00:00:01.5+00:00",'
            b' "value": 3, "tenant_id": "t", "rpm": 1200}'
        )
    )
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
    batch = [
        _raw(b'{"sensor_id":"a","timestamp":1767225600001,"value":1}', 0),
        _raw(b"x" * 101, 1),
        _raw(b'{"sensor_id":"b","timestamp":1767225600002,"value":2}', 2),
    ]
    good, bad = d.decode_batch(batch)
    assert [g.sensor_id for g in good] == ["a", "b"]
    assert json.loads(bad[0][1].value)["reason"] == "oversize"


def test_control_marker() -> None:
    good, _ = Decoder("json", control_key=KEY).decode_batch([_raw(signed_marker("v2"))])
    assert isinstance(good[0], Control) and good[0].body["version"] == "v2"
    # the same marker without the key, unsigned or forged: dead letters bad_control
    for key, value in (
        (None, signed_marker("v2")),
        (KEY, CONTROL_PREFIX + b'{"type": "model", "version": "v2"}'),
        (b"another-key-0123456789", signed_marker("v2")),
    ):
        good, bad = Decoder("json", control_key=key).decode_batch([_raw(value)])
        assert good == [] and json.loads(bad[0][1].value)["reason"] == "bad_control"


def _avro(schema_file: str, schema_id: int, record: dict) -> bytes:
    schema = fastavro.parse_schema(json.loads((HERE / schema_file).read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


V1 = {
    "sensor_id": "a",
    "timestamp": 1_767_225_600_000,
    "value": 1.5,
    "tenant_id": None,
    "extra": {"rpm": 3.0},
}


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
    _, bad = d.decode_batch(
        [_raw(b"{json}"), _raw(b"\x00\x00\x00\x00\x09abc"), _raw(b"\x00\x00\x00\x00\x01\xff")]
    )
    assert [json.loads(b[1].value)["reason"] for b in bad] == [
        "undecodable",
        "schema_mismatch",
        "schema_mismatch",
    ]


def test_protobuf_evolution_both_ways() -> None:
    from schemas import sensor_reading_v1_pb2 as v1
    from schemas import sensor_reading_v2_pb2 as v2

    old = v1.SensorReading(sensor_id="a", timestamp_ms=1_767_225_600_000, value=2.0)
    new = v2.SensorReading(
        sensor_id="b", timestamp="2026-01-01T00:00:00Z", value=3.0, unit="C", extra={"rpm": 7.0}
    )
    r2 = Decoder("protobuf", "sensor_reading_v2.proto").decode_one(_raw(old.SerializeToString()))
    r1 = Decoder("protobuf", "sensor_reading_v1.proto").decode_one(_raw(new.SerializeToString()))
    assert isinstance(r2, Reading) and (r2.sensor_id, r2.value) == ("a", 2.0)
    assert isinstance(r1, Reading) and (r1.sensor_id, r1.value, r1.extra) == (
        "b",
        3.0,
        {"rpm": 7.0},
    )


def test_protobuf_missing_value_and_garbage() -> None:
    from schemas import sensor_reading_v2_pb2 as v2

    no_value = v2.SensorReading(sensor_id="a", timestamp_ms=5).SerializeToString()
    _, bad = Decoder("protobuf").decode_batch([_raw(no_value), _raw(b"\xff\xff\xff")])
    assert [json.loads(b[1].value)["reason"] for b in bad] == ["missing_field", "undecodable"]


def test_decode_grouped_equals_decode_batch_then_grouping() -> None:
    """The columnar fast path gives the records, order, groups and dead letters of the
    general path, for every kind of record (good, odd but valid, bad, markers)."""
    import random

    from flows.records import Columns, key_group, sensor_key

    rng = random.Random(4)
    odd = [
        b'{"sensor_id": "s1", "timestamp": "2026-01-01T00:00:00Z", "value": 2}',
        b' {"sensor_id": "s2", "timestamp": 1767225600000, "value": 1.5}',
        b'{"sensor_id": "s3", "timestamp": 1767225600000.0, "value": 1.5}',
        b'{"sensor_id": "s4", "timestamp": 1767225600000, "value": 1.5, "rpm": 3}',
        b'{"sensor_id": "s5", "timestamp": 1767225600000, "value": 1.5, "tenant_id": 7}',
        b'{"value": 1.5, "tenant_id": "t", "timestamp": 1767225600000, "sensor_id": "s6"}',
        b'{"sensor_id": "", "timestamp": 1767225600000, "value": 1.5}',
        b'{"sensor_id": "s7", "timestamp": true, "value": 1.5}',
        b'{"sensor_id": "s8", "timestamp": 1767225600000, "value": 1.5, "tenant_id": null}',
        b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": 9007199254740993}',
        b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": 123456789012345678901}',
        b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": ' + b"9" * 400 + b"}",
        b'{"sensor_id": "s9", "timestamp": ' + b"9" * 400 + b', "value": 1.0}',
        b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": -0.0}',
        b'{"sensor_id": "\\ud800", "timestamp": 1767225600000, "value": 1.0}',
        b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": 1.0, "tenant_id": "\\udfff"}',
        b'{"sensor_id": "\\u00e9t\\u00e9", "timestamp": 1767225600000, "value": 1.0}',
        b'\xef\xbb\xbf{"sensor_id": "s9", "timestamp": 1767225600000, "value": 1.0}',
        b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": 1.0} trailing',
        b'{"sensor_id": "s9", "timestamp": -1, "value": 1.0}',
        CONTROL_PREFIX + b'{"type": "model", "version": "v2"}',
        CONTROL_PREFIX + b"[]",
        b"x" * 300,
        b"{" + b" " * 600 + b"}",
        b"",
        None,
    ]
    batch = []
    for i in range(3000):
        r = rng.random()
        if r < 0.8:
            v = json.dumps(
                {
                    "sensor_id": f"s{rng.randrange(40)}",
                    "timestamp": 1_767_225_600_000 + i,
                    "value": rng.gauss(0, 1),
                    **({"tenant_id": "t"} if rng.random() < 0.5 else {}),
                }
            ).encode()
        elif r < 0.9:
            v = rng.choice(BAD_RECORDS)[0]
        else:
            v = rng.choice(odd)
        batch.append(RawRecord(v, "kafka:in", i % 3, i))  # type: ignore[arg-type]
    d = Decoder("json", max_bytes=512)
    good, bad = d.decode_batch(batch)
    parts, bad2 = d.decode_grouped(batch, 8, {})
    assert bad2 == bad and len(bad) > 300
    reasons = {json.loads(b.value)["reason"] for _k, b in bad}
    assert {"non_finite", "bad_timestamp", "bad_type", "oversize", "undecodable"} <= reasons
    assert any("surrogate" in json.loads(b.value)["error"] for _k, b in bad)
    expected: dict[str, list] = {}
    for item in good:
        if type(item) is Reading:
            key = sensor_key(item.sensor_id, item.tenant_id)  # tenants never share a state
            expected.setdefault(key_group(key, 8), []).append(
                (item.sensor_id, item.ts, item.value, item.tenant_id, item.raw)
            )
        else:
            for g in map(str, range(8)):
                expected.setdefault(g, []).append((item.body, item.raw))
    got = {
        g: [
            (x.body, x.raw)
            if type(x) is Control
            else (x.sensor_id, x.ts, x.value, x.tenant_id, x.raw)
            for x in sub.items()
        ]
        for g, sub in parts.items()
    }
    assert got == expected
    assert all(type(p) is not Columns or len(p) for sub in parts.values() for p in sub)
    # types match too (ints stay ints, values are floats)
    for sub in parts.values():
        for p in sub:
            if type(p) is Columns:
                assert all(type(t) is int for t in p.ts)
                assert all(type(v) is float for v in p.vals)


def test_sub_batches_cross_processes_as_columns() -> None:
    """A key group's sub-batch pickled to another process comes back equal."""
    import pickle

    from flows.records import Columns, SubBatch

    items = [
        Reading("a", 1, 1.5, None, None, _raw(b"1", 1)),
        Reading("b", 2, 2.5, "t", None, RawRecord(b"2", "kafka:in", 3, 7, b"k")),
        Control({"type": "model", "version": "v"}, _raw(b"#ADCTL{}", 3)),
        Reading("a", 4, -1.0, "t", None, _raw(b"4", 4)),
    ]
    sub = SubBatch.of("9", items)
    assert [type(p) for p in sub] == [Columns, Control, Columns]
    back = pickle.loads(pickle.dumps(sub))
    assert type(back) is SubBatch and back.group == "9"

    def rows(s: SubBatch) -> list:
        return [
            (x.body, x.raw)
            if type(x) is Control
            else (x.sensor_id, x.ts, x.value, x.tenant_id, x.raw)
            for x in s.items()
        ]

    assert rows(back) == rows(sub) and len(rows(sub)) == 4


def _mixed(n: int, bad: int, marker: int) -> list[RawRecord]:
    """Readings of 7 sensors with one undecodable record and one model-switch marker."""
    raws = [
        _raw(
            json.dumps(
                {"sensor_id": f"s{i % 7}", "timestamp": 1_767_225_600_000 + i, "value": i / 3}
            ).encode(),
            i,
        )
        for i in range(n)
    ]
    raws[bad] = _raw(b"not json", bad)
    raws[marker] = _raw(signed_marker("v2"), marker)
    return raws


class _Msg:
    """A client message object, as a MessageBatch holds them."""

    def __init__(self, raw: RawRecord) -> None:
        self.r = raw


def test_decode_grouped_reads_client_messages_like_raw_records() -> None:
    """A MessageBatch (values + the client's message objects) decodes exactly like the
    RawRecords made from it; RawRecords are made only where needed."""
    import pickle

    from connectors.base import MessageBatch, as_raw, register_message_type
    from flows.records import Columns

    made: list[RawRecord] = []

    def to_raw(m: _Msg) -> RawRecord:
        made.append(m.r)
        return m.r

    register_message_type(_Msg, to_raw)
    raws = _mixed(200, bad=50, marker=90)
    d = Decoder("json", control_key=KEY)
    want_parts, want_bad = d.decode_grouped(raws, 4, {})
    batch = MessageBatch([r.value for r in raws], [_Msg(r) for r in raws], "kafka:in")
    assert len(batch) == 200 and list(batch) == raws
    made.clear()
    parts, bad = d.decode_grouped(batch, 4, {})
    assert bad == want_bad
    assert len(made) == 2  # only the bad record and the control marker
    flat = {
        g: [(x.sensor_id, x.ts, x.value, x.raw) for x in sub.items() if type(x) is Reading]
        for g, sub in parts.items()
    }
    want = {
        g: [(x.sensor_id, x.ts, x.value, x.raw) for x in sub.items() if type(x) is Reading]
        for g, sub in want_parts.items()
    }
    assert flat == want
    cols = next(p for p in parts["0"] if type(p) is Columns)
    assert type(cols.raws[0]) is _Msg and as_raw(cols.raws[0]) == cols.readings()[0].raw
    back = pickle.loads(pickle.dumps(cols))  # to another process: RawRecords
    assert back.raws == [as_raw(m) for m in cols.raws]
    cols.raws[1] = as_raw(cols.raws[1])  # a part may mix both (general-path readings)
    assert pickle.loads(pickle.dumps(cols)).raws == back.raws


def test_decode_grouped_by_partition_puts_the_batch_in_its_group() -> None:
    """Key groups by partition: every reading and marker of a batch goes to the batch's
    group, in input order; dead letters are the same as by sensor."""
    from connectors.base import MessageBatch

    raws = _mixed(100, bad=10, marker=40)
    d = Decoder("json", control_key=KEY)
    by_sensor, want_bad = d.decode_grouped(raws, 4, {})
    batch = MessageBatch([r.value for r in raws], raws, "kafka:in", "in#0~5")
    parts, bad = d.decode_grouped(batch, 4, {}, by_partition=True)
    assert bad == want_bad and list(parts) == ["in#0~5"]
    items = parts["in#0~5"].items()
    assert [x.raw for x in items] == [r for i, r in enumerate(raws) if i != 10]
    assert type(items[39]) is Control
    assert sorted((x.sensor_id, x.ts) for x in items if type(x) is Reading) == sorted(
        (x.sensor_id, x.ts) for sub in by_sensor.values() for x in sub.items() if type(x) is Reading
    )
    with pytest.raises(ValueError, match="partition"):
        d.decode_grouped(raws, 4, {}, by_partition=True)


def test_no_exception_of_any_kind_escapes_decoding() -> None:
    """A poison pill (deep nesting → RecursionError) and a decoder failing in any way
    become dead letters `undecodable`, in every format."""
    from tests.flowrun import POISON

    for fmt in ("json", "avro", "protobuf"):
        d = Decoder(fmt)
        good, bad = d.decode_batch([_raw(POISON, 0)])
        assert good == [] and json.loads(bad[0][1].value)["reason"] in (
            "undecodable",
            "schema_mismatch",
        )
    d = Decoder("json")
    good, bad = d.decode_batch([_raw(POISON, 0)])
    assert json.loads(bad[0][1].value)["reason"] == "undecodable"
    parts, bad = d.decode_grouped([_raw(POISON, 0)], 4, {})
    assert parts == {} and json.loads(bad[0][1].value)["reason"] == "undecodable"

    def explode(data: bytes) -> object:
        raise MemoryError("decoder ran out")

    d._decode = explode
    d._fast = None
    _good, bad = d.decode_batch([_raw(b'{"sensor_id": "a"}', 0)])
    assert "MemoryError" in json.loads(bad[0][1].value)["error"]


@pytest.mark.parametrize(
    ("ts", "unit", "expected"),
    [
        (1_767_225_600, "auto", 1_767_225_600_000),  # seconds
        (1_767_225_600_000, "auto", 1_767_225_600_000),  # milliseconds
        (1_767_225_600_000_000, "auto", 1_767_225_600_000),  # microseconds
        (1_767_225_600_000_000_000, "auto", 1_767_225_600_000),  # nanoseconds
        (1_767_225_600.5, "s", 1_767_225_600_500),
        (1_767_225_600_000, "ms", 1_767_225_600_000),
    ],
)
def test_timestamp_units(ts: int, unit: str, expected: int) -> None:
    d = Decoder("json", timestamp_unit=unit)
    raw = json.dumps({"sensor_id": "a", "timestamp": ts, "value": 1.0}).encode()
    good, bad = d.decode_batch([_raw(raw, 0)])
    assert bad == [] and good[0].ts == expected
    parts, bad = d.decode_grouped([_raw(raw, 0)], 1, {})
    assert bad == [] and next(iter(parts["0"])).ts == [expected]


@pytest.mark.parametrize("ts", [0, 1000, 86_400_000, "1999-12-31T23:59:59Z"])
def test_timestamps_before_2000_are_dead_letters_unless_configured(ts: object) -> None:
    raw = json.dumps({"sensor_id": "a", "timestamp": ts, "value": 1.0}).encode()
    _good, bad = Decoder("json").decode_batch([_raw(raw, 0)])
    assert json.loads(bad[0][1].value)["reason"] == "bad_timestamp"
    good, bad = Decoder("json", timestamp_unit="ms", earliest=0).decode_batch([_raw(raw, 0)])
    assert bad == [] and len(good) == 1


def test_adctl_reads_times_as_the_flow_does() -> None:
    from control.history import parse_time

    for ts in (1_767_225_600, 1_767_225_600_000, "2026-01-01T00:00:00Z"):
        raw = json.dumps({"sensor_id": "a", "timestamp": ts, "value": 1.0}).encode()
        good, _bad = Decoder("json").decode_batch([_raw(raw, 0)])
        assert parse_time(ts) * 1000 == good[0].ts


def _csv_raw(line: bytes, header: bytes | None, source: str = "file:plant-7.csv") -> RawRecord:
    return RawRecord(line, source, "0", "2", header)


def test_csv_nab_style_files_work_as_they_are() -> None:
    d = Decoder("csv")
    good, bad = d.decode_batch([_csv_raw(b"2014-04-01 00:05:00,42.5", b"timestamp,value")])
    assert bad == []
    assert (good[0].sensor_id, good[0].ts, good[0].value) == ("plant-7", 1_396_310_700_000, 42.5)


def test_csv_columns_are_mappable_and_extra_numbers_kept() -> None:
    d = Decoder("csv", csv_mapping={"timestamp": "ts", "value": "reading", "sensor_id": "name"})
    header = b"name,ts,reading,rpm,site"
    good, bad = d.decode_batch(
        [
            _csv_raw(b"pump-1,1767225600000,1.5,3000,north", header),
            _csv_raw(b"pump-1,1767225600000,high,3000,north", header),
            _csv_raw(b"pump-1,1767225600000", header),
            _csv_raw(b'"pump,2",2026-01-01T00:00:00Z,2,1,x', header),
        ]
    )
    assert [(g.sensor_id, g.value, g.extra) for g in good] == [
        ("pump-1", 1.5, {"rpm": 3000.0}),
        ("pump,2", 2.0, {"rpm": 1.0}),
    ]
    assert [json.loads(b[1].value)["reason"] for b in bad] == ["bad_type", "schema_mismatch"]


def test_csv_without_header_says_how_to_give_one() -> None:
    _good, bad = Decoder("csv").decode_batch([_csv_raw(b"1,2", None, "kafka:t")])
    assert "?columns=" in json.loads(bad[0][1].value)["error"]
    good, bad = Decoder("csv", csv_mapping={"columns": "sensor_id,timestamp,value"}).decode_batch(
        [_csv_raw(b"s,1767225600,3", None, "kafka:t")]
    )
    assert bad == [] and good[0].ts == 1_767_225_600_000
