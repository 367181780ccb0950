"""Avro (with a schema registry over HTTP) and Protobuf through the whole flow on Kafka."""

from __future__ import annotations

import io
import json
import struct
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import fastavro
import pytest

from schemas import HERE
from tests.flowrun import START_MS, flow_env, init_recovery, run_to_completion
from tests.kafka_util import produce, read_committed


def _series(n: int = 400) -> list[dict[str, Any]]:
    return [
        {
            "sensor_id": f"m-{i % 2}",
            "timestamp": START_MS + (i // 2) * 60_000,
            "value": 5.0 + (i % 5) * 0.1 + (40.0 if i // 2 == 150 else 0.0),
        }
        for i in range(n)
    ]


@pytest.fixture()
def registry() -> Iterator[str]:
    """A minimal Confluent-compatible registry: GET /schemas/ids/{id} (ids 11 and 12)."""
    schemas = {
        11: (HERE / "sensor_reading_v1.avsc").read_text(),
        12: (HERE / "sensor_reading_v2.avsc").read_text(),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            sid = int(self.path.rsplit("/", 1)[-1])
            body = json.dumps({"schema": schemas[sid]}).encode() if sid in schemas else b"{}"
            self.send_response(200 if sid in schemas else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _avro(schema_file: str, schema_id: int, rec: dict) -> bytes:
    schema = fastavro.parse_schema(json.loads((HERE / schema_file).read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, rec)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


def _run(
    kafka_brokers: str,
    kafka_topic: Any,
    tmp_path: Path,
    records: list[tuple[str, bytes]],
    **env: str,
) -> tuple[list[dict], list[dict]]:
    src, alerts, dlq = kafka_topic(2), kafka_topic(2), kafka_topic(1)
    produce(kafka_brokers, src, records)
    run_to_completion(
        flow_env(
            AD_SOURCE=f"kafka://{kafka_brokers}/{src}?tail=false",
            AD_SINK=f"kafka://{kafka_brokers}/{alerts}",
            AD_DLQ=f"kafka://{kafka_brokers}/{dlq}",
            AD_WINDOW="none",
            AD_EMIT="all",
            AD_DETECTOR="mad",
            AD_FLOW_ID=f"fmt-{uuid.uuid4().hex[:6]}",
            **env,
        ),
        init_recovery(tmp_path / "rec"),
        log=tmp_path / "flow.log",
    )
    return read_committed(kafka_brokers, alerts), read_committed(kafka_brokers, dlq)


def _assert_spike_found(out: list[dict]) -> None:
    spikes = [a for a in out if a["window_start"] == "2026-01-01T02:30:00.000Z"]
    assert len(spikes) == 2 and all(a["is_anomaly"] for a in spikes)
    assert sum(a["is_anomaly"] for a in out) < 20


def test_avro_v1_and_v2_writers_through_a_registry(
    kafka_brokers: str, kafka_topic: Any, registry: str, tmp_path: Path
) -> None:
    recs = []
    for i, r in enumerate(_series()):
        r = {**r, "tenant_id": None, "extra": {}}
        raw = (
            _avro("sensor_reading_v1.avsc", 11, r)
            if i % 2
            else _avro("sensor_reading_v2.avsc", 12, {**r, "unit": "bar"})
        )
        recs.append((r["sensor_id"], raw))
    recs.append(("m-0", b"\x00\x00\x00\x00\x63garbage"))  # unknown schema id 99
    out, dead = _run(
        kafka_brokers,
        kafka_topic,
        tmp_path,
        recs,
        AD_FORMAT="avro",
        AD_SCHEMA="sensor_reading_v2.avsc",
        AD_SCHEMA_REGISTRY=registry,
    )
    assert len(out) == 400
    assert [d["reason"] for d in dead] == ["schema_mismatch"]
    _assert_spike_found(out)


def test_protobuf_v1_data_read_by_a_v2_reader(
    kafka_brokers: str, kafka_topic: Any, tmp_path: Path
) -> None:
    from schemas import sensor_reading_v1_pb2 as v1

    recs = [
        (
            r["sensor_id"],
            v1.SensorReading(
                sensor_id=r["sensor_id"], timestamp_ms=r["timestamp"], value=r["value"]
            ).SerializeToString(),
        )
        for r in _series()
    ]
    out, dead = _run(
        kafka_brokers,
        kafka_topic,
        tmp_path,
        recs,
        AD_FORMAT="protobuf",
        AD_SCHEMA="sensor_reading_v2.proto",
    )
    assert len(out) == 400 and not dead
    _assert_spike_found(out)
