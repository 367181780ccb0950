"""Fuzz the decoders (JSON, Avro, Protobuf, CSV) and the settings loader with atheris.

``python -m benchmarks.fuzz --inputs 1000000`` runs that many coverage-guided,
generated and mutated inputs (seeded with valid records of every format) and reports
the crashes: any exception a decoder lets out (every bad record must become a dead
letter), or any exception of the settings loader other than its one-line
``SettingsError``. Exit status 1 when there was a crash. The modules run interpreted
(``AD_COMPILED=0``) so that atheris can see their branches.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import struct
import sys
import tempfile
import traceback
from pathlib import Path

os.environ["AD_COMPILED"] = "0"

import atheris  # noqa: E402

with atheris.instrument_imports(include=["flows", "schemas", "connectors"]):
    from connectors.base import RawRecord
    from flows.decode import Decoder
    from flows.settings import SettingsError, load_settings

TARGETS = ("json", "avro", "protobuf", "csv", "settings")
CSV_HEADERS = (b"timestamp,value", b"sensor_id,timestamp,value,tenant_id", b"name,ts,reading")
#: the environment names the settings target draws from (and some that are not settings)
ENV_NAMES = (
    "AD_SOURCE",
    "AD_SINK",
    "AD_WINDOW",
    "AD_WINDOW_SIZE",
    "AD_WINDOW_SLIDE",
    "AD_THRESHOLD",
    "AD_DETECTOR_PARAMS",
    "AD_KEY_GROUPS",
    "AD_KEY_BY",
    "AD_TIMESTAMP_UNIT",
    "AD_EARLIEST_TIME",
    "AD_MAX_FUTURE",
    "AD_SNAPSHOT_FSYNC",
    "AD_KAFKA_SASL_PASSWORD",
    "AD_WORKERS",
    "AD_SORUCE",
    "AD_",
)


class Stats:
    """Inputs run and crashes found (deduplicated by exception type and place)."""

    def __init__(self) -> None:
        self.inputs = 0
        self.last = 0
        self.crashes: dict[str, tuple[str, bytes]] = {}

    def report(self) -> None:
        """Print the findings; exit status 1 when there are crashes."""
        print(f"fuzz: {self.inputs:,} inputs, {len(self.crashes)} crashes", flush=True)
        for key, (msg, data) in self.crashes.items():
            print(f"  {key}: {msg} (input {data!r})", flush=True)
        if self.crashes:
            os._exit(1)

    def crash(self, target: str, data: bytes, exc: BaseException) -> None:
        frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        where = f"{frame.filename}:{frame.lineno}" if frame else "?"
        key = f"{target}: {type(exc).__name__} at {where}"
        self.crashes.setdefault(key, (str(exc)[:200], data[:300]))


STATS = Stats()
DECODERS: dict[str, Decoder] = {}


def _decoder(fmt: str) -> Decoder:
    if fmt not in DECODERS:
        mapping = {"timestamp": "ts", "value": "reading", "sensor_id": "name"}
        DECODERS[fmt] = Decoder(fmt, csv_mapping=mapping if fmt == "csv" else None)
        if fmt == "csv":
            DECODERS["csv-plain"] = Decoder("csv")
    return DECODERS[fmt]


def one_input(data: bytes) -> None:
    """Run one input on the target its first byte picks."""
    STATS.inputs += 1
    if STATS.inputs == STATS.last:
        STATS.report()  # libFuzzer ends the process after its last run, skipping atexit
    if not data:
        return
    target = TARGETS[data[0] % len(TARGETS)]
    body = data[1:]
    try:
        if target == "settings":
            _settings(body)
        else:
            _decode(target, body)
    except Exception as exc:  # noqa: BLE001 - every escaping exception is a finding
        STATS.crash(target, data, exc)


def _decode(fmt: str, body: bytes) -> None:
    key = None
    if fmt == "csv":
        key = CSV_HEADERS[body[0] % len(CSV_HEADERS)] if body else None
        body = body[1:]
    raw = RawRecord(body, "file:fuzz.csv", "0", "1", key)
    decoders = [_decoder(fmt)] + ([DECODERS["csv-plain"]] if fmt == "csv" else [])
    for d in decoders:
        d.decode_batch([raw])
        d.decode_grouped([raw, raw], 4, {})


def _settings(body: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(body)
    env: dict[str, str] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        name = ENV_NAMES[fdp.ConsumeIntInRange(0, len(ENV_NAMES) - 1)]
        env[name] = fdp.ConsumeUnicodeNoSurrogates(40)
    if fdp.ConsumeBool():
        with tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as f:
            f.write(fdp.ConsumeBytes(200))
        env["AD_CONFIG"] = f.name
    try:
        load_settings(env)
    except SettingsError:
        pass
    finally:
        if "AD_CONFIG" in env:
            Path(env["AD_CONFIG"]).unlink(missing_ok=True)


def seeds() -> list[bytes]:
    """Valid (and nearly valid) inputs of every target to start from."""
    rec = {"sensor_id": "s", "timestamp": 1767225600000, "value": 1.5, "tenant_id": "t"}
    out = [bytes([0]) + json.dumps(rec).encode(), bytes([0]) + b'{"sensor_id":"a","x":[[1]]}']
    import fastavro

    from schemas import HERE

    schema = fastavro.parse_schema(json.loads((HERE / "sensor_reading_v2.avsc").read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, {**rec, "unit": "C", "extra": {"rpm": 1.0}})
    out.append(bytes([1]) + b"\x00" + struct.pack(">I", 2) + buf.getvalue())
    from schemas import sensor_reading_v2_pb2 as v2

    msg = v2.SensorReading(sensor_id="s", timestamp_ms=1767225600000, value=2.0)
    out.append(bytes([2]) + msg.SerializeToString())
    out.append(bytes([3, 0]) + b"2014-04-01 00:00:00,3.5")
    out.append(bytes([3, 1]) + b"pump,1767225600,1.0,t")
    out.append(bytes([4]) + b"\x02\x00\x05tumbl\x01\x03\x10kafka://h:1/x")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__)
    ap.add_argument("--inputs", type=int, default=1_000_000, help="inputs to run")
    ap.add_argument("--seed", type=int, default=1, help="the fuzzer's random seed")
    ap.add_argument("--max-len", type=int, default=4096, help="longest input in bytes")
    args = ap.parse_args(argv)
    corpus = Path(tempfile.mkdtemp(prefix="ad-fuzz-"))
    for i, s in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(s)
    flags = [
        sys.argv[0],
        f"-runs={args.inputs}",
        f"-seed={args.seed}",
        f"-max_len={args.max_len}",
        "-print_final_stats=0",
        str(corpus),
    ]

    STATS.last = args.inputs
    logging.disable(logging.WARNING)  # "ignoring AD_…" for every generated environment
    atheris.Setup(flags, one_input)
    atheris.Fuzz()  # ends the process after the last run
    return 0


if __name__ == "__main__":
    sys.exit(main())
