"""Batch detection and retraining on real engines: Dask LocalCluster, local Ray, Spark
local[2] (each started once for the module). For each engine: detect gives the
streaming flow's alerts (same bodies, same ``alert_id``), retrain gives the same
artifact digest as an in-process fit, a cached re-run submits no task, a failed task is
retried by the engine with exact output, and a dependency chain runs in order."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.testing import TestingSink, run_main

from control.detect import ResultCache, detect_settings
from control.detect_output import alerts_of
from control.engine_training import train_on_engine
from control.engines import Engine, make_engine
from control.history import load_series
from control.history_columns import read_readings
from control.jobs import Job, JobStore, run_jobs
from control.training import assemble_model, fit_batch
from flows import detector
from flows.records import sensor_key
from flows.settings import Settings, load_settings
from state.model_store import canonical_json
from tests.conftest import CONTROL_KEY
from tests.control.helpers import (
    START_MS,
    free_port,
    produce_json,
    read_topic,
    write_readings,
)

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ["dask", "ray", "spark"]
#: windows of 30 s over readings every 10 s, the MAD detector (the ensemble needs more
#: history than this small dataset before it scores above 0)
FLOW_ENV = {"AD_WINDOW_SIZE": "30s", "AD_DETECTOR": "mad", "AD_THRESHOLD": "0.999"}

Alert = tuple[str, str, bytes]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 sensors x 360 readings (every 10 s, time-major), a tenant on some, and spikes."""
    path = tmp_path_factory.mktemp("history") / "readings.jsonl"
    lines = []
    for _key, value in write_readings(None, sensors=6, per_sensor=360, spike_every=61):
        rec = json.loads(value)
        if rec["sensor_id"] in ("sensor-001", "sensor-004"):
            rec["tenant_id"] = "plant-7"
        lines.append(json.dumps(rec).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _settings(history: Path, **env: str) -> Settings:
    return load_settings({"AD_SOURCE": f"file://{history}", **FLOW_ENV, **env})


def _stream(history: Path, **env: str) -> list[Alert]:
    """The streaming flow's output on ``history``, as ``(sensor, alert_id, body)``."""
    out: list[Any] = []
    run_main(
        detector.build_flow(_settings(history, **env), sink=TestingSink(out), dlq=TestingSink([]))
    )
    return sorted((sid, rec.id, rec.value) for sid, rec in out)


@pytest.fixture(scope="module")
def stream_alerts(history: Path) -> dict[str, list[Alert]]:
    return {emit: _stream(history, AD_EMIT=emit) for emit in ("alerts", "all")}


@pytest.fixture(scope="module", params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    with make_engine(request.param, workers=2, retries=2) as eng:
        yield eng


def _detect(
    engine: Engine, history: Path, state: Path, env: dict[str, str] | None = None, **kw: Any
) -> tuple[list[Alert], Any]:
    emit = kw.pop("emit", "alerts")
    s = detect_settings(_settings(history, AD_EMIT=emit, **(env or {})))
    readings = read_readings([str(history)], default_tenant=s.default_tenant, settings=s)
    job = Job("detect", "detect", readings, s, partitions=8, **kw)
    (ran,) = run_jobs(engine, [job], JobStore(state), ResultCache(state / "cache"))
    return sorted(alerts_of(ran.result)), ran.record


def _stream_with_dlq(history: Path, **env: str) -> tuple[list[Alert], list[bytes]]:
    """The streaming flow's alerts and dead-letter bodies on ``history``."""
    out: list[Any] = []
    dlq: list[Any] = []
    run_main(
        detector.build_flow(_settings(history, **env), sink=TestingSink(out), dlq=TestingSink(dlq))
    )
    return sorted((sid, rec.id, rec.value) for sid, rec in out), sorted(r.value for _k, r in dlq)


@pytest.fixture(scope="module")
def messy_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Readings with records the flow refuses: undecodable, a missing field, a wrong
    type, a timestamp before 2000, a reading behind its sensor's watermark (late) and
    one two days ahead (future), among good ones."""
    path = tmp_path_factory.mktemp("messy") / "readings.jsonl"
    lines = [v for _k, v in write_readings(None, sensors=4, per_sensor=200, spike_every=61)]
    at = lambda i: START_MS + i * 10_000  # noqa: E731 - a local shorthand
    inserts = {
        10: [b"not json at all"],
        20: [b'{"sensor_id": "sensor-001", "value": 3.0}'],
        30: [json.dumps({"sensor_id": "sensor-002", "timestamp": at(30), "value": "x"}).encode()],
        40: [json.dumps({"sensor_id": "sensor-003", "timestamp": 5, "value": 1.0}).encode()],
        # behind sensor-001's watermark by 10 minutes: late
        400: [json.dumps({"sensor_id": "sensor-001", "timestamp": at(40), "value": 99.0}).encode()],
        # two days ahead of sensor-002's clock, never confirmed: future
        500: [
            json.dumps(
                {"sensor_id": "sensor-002", "timestamp": at(125) + 2 * 86_400_000, "value": 1.0}
            ).encode()
        ],
    }
    out = []
    for i, line in enumerate(lines):
        out.extend(inserts.get(i, []))
        out.append(line)
    path.write_bytes(b"\n".join(out) + b"\n")
    return path


def test_detect_dead_letters_equal_the_flows(
    engine: Engine, messy_history: Path, tmp_path: Path
) -> None:
    from control.detect_output import dead_letters_of

    expected_alerts, expected_dlq = _stream_with_dlq(messy_history, AD_EMIT="all")
    reasons = sorted(orjson.loads(b)["reason"] for b in expected_dlq)
    assert reasons == [
        "bad_timestamp",
        "bad_type",
        "future",
        "late",
        "missing_field",
        "undecodable",
    ]
    s = detect_settings(_settings(messy_history, AD_EMIT="all"))
    readings = read_readings([str(messy_history)], settings=s)
    job = Job("detect", "detect", readings, s, partitions=8, use_cache=False)
    (ran,) = run_jobs(engine, [job], JobStore(tmp_path), ResultCache(tmp_path / "cache"))
    assert sorted(alerts_of(ran.result)) == expected_alerts
    dead = dead_letters_of(readings, ran.result, s.flow_id)
    assert sorted(rec.value for _k, rec in dead) == expected_dlq  # byte-identical bodies
    assert all(k == f"{orjson.loads(r.value)['source']}/0" for k, r in dead)
    # --sort-by-time: the late reading is sorted into place and used
    job = Job("sorted", "detect", readings, s, partitions=8, use_cache=False, by_time=True)
    (ran,) = run_jobs(engine, [job], JobStore(tmp_path), ResultCache(tmp_path / "cache"))
    assert [orjson.loads(b)["reason"] for r in ran.result for b in r.dead_letters] == ["future"]
    assert len(alerts_of(ran.result)) == len(expected_alerts)


@pytest.fixture(scope="module")
def stored_model(history: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A per-key MAD model of ``history`` (keys by tenant and sensor) in a file store."""
    from state import model_store

    store = f"file://{tmp_path_factory.mktemp('models')}"
    series = load_series([str(history)])
    batch = [(k, s.timestamps, s.values) for k, s in series.items()]
    per_key = dict(fit_batch("mad", {"window": 12, "min_periods": 4}, batch))
    model = assemble_model("mad", "v7", per_key, {"sources": ["test"]})
    return store, model_store.put(store, "mad", "v7", model)


def test_detect_with_a_stored_model_equals_the_flow_after_a_switch(
    engine: Engine, history: Path, stored_model: tuple[str, str], tmp_path: Path
) -> None:
    from control.markers import encode_marker

    store, ref = stored_model
    # the flow: a signed switch to the model at the start of its input
    switched = tmp_path / "switched.jsonl"
    marker = encode_marker("mad", "v7", ref, CONTROL_KEY.encode())
    switched.write_bytes(marker + b"\n" + history.read_bytes())
    env = {"AD_MODEL_STORE": store, "AD_CONTROL_KEY": CONTROL_KEY}
    expected, dlq = _stream_with_dlq(switched, AD_EMIT="all", **env)
    assert dlq == [] and len(expected) > 100
    assert {orjson.loads(b)["model_version"] for _k, _a, b in expected} == {"v7"}
    assert expected != _stream(history, AD_EMIT="all")  # the model changes the scores
    batch, rec = _detect(engine, history, tmp_path, env, emit="all", model=("v7", ref))
    assert batch == expected and rec.computed == rec.tasks
    # the model is part of the cache key: without it, the built-in detector's output
    plain, rec2 = _detect(engine, history, tmp_path, env, emit="all")
    assert rec2.cached == 0 and plain == _stream(history, AD_EMIT="all")


@pytest.mark.parametrize("emit", ["alerts", "all"])
def test_detect_equals_the_streaming_flow(
    engine: Engine, history: Path, stream_alerts: dict, emit: str, tmp_path: Path
) -> None:
    batch, rec = _detect(engine, history, tmp_path, emit=emit, use_cache=False)
    expected = stream_alerts[emit]
    assert len(expected) > (100 if emit == "all" else 5)
    assert batch == expected  # same sensors, same alert_ids, byte-identical bodies
    assert rec.state == "done" and rec.computed == rec.tasks > 1 and rec.cached == 0
    tenants = {orjson.loads(b)["tenant_id"] for _s, _a, b in batch}
    assert tenants == {None, "plant-7"}


@pytest.fixture(scope="module")
def tenant_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same sensor ids under tenants ``a`` and ``b`` (different values), and a sensor
    without a tenant (``AD_DEFAULT_TENANT`` gives it one)."""
    path = tmp_path_factory.mktemp("tenants") / "readings.jsonl"
    lines = []
    for _key, value in write_readings(None, sensors=3, per_sensor=360, spike_every=61):
        rec = json.loads(value)
        if rec["sensor_id"] == "sensor-002":
            lines.append(json.dumps(rec).encode())
            continue
        for tenant, scale in (("a", 1.0), ("b", 3.0)):
            lines.append(
                json.dumps({**rec, "tenant_id": tenant, "value": rec["value"] * scale}).encode()
            )
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_detect_keeps_tenants_apart_as_the_flow_does(
    engine: Engine, tenant_history: Path, tmp_path: Path
) -> None:
    env = {"AD_DEFAULT_TENANT": "shared"}
    expected = _stream(tenant_history, **env)
    keys = {k for k, _a, _b in expected}
    assert keys >= {"a\x1fsensor-000", "b\x1fsensor-000", "shared\x1fsensor-002"}
    batch, rec = _detect(engine, tenant_history, tmp_path, env, use_cache=False)
    assert batch == expected and rec.computed == rec.tasks
    assert {orjson.loads(b)["tenant_id"] for _k, _a, b in batch} == {"a", "b", "shared"}


def test_detect_applies_tenant_thresholds_as_the_flow_does(
    engine: Engine, tenant_history: Path, tmp_path: Path
) -> None:
    """With a tenant registry (``AD_TENANTS``), a tenant's threshold applies to its
    sensors, the registry's default tenant to records without one, as in the flow."""
    from state.tenants import load_registry

    registry = tmp_path / "tenants.yaml"
    registry.write_text(
        "default_tenant: shared\ntenants:\n  a: {threshold: 0.01}\n  b: {}\n  shared: {}\n"
    )
    env = {"AD_TENANTS": str(registry)}
    expected = _stream(tenant_history, **env)
    assert len({orjson.loads(b)["tenant_id"] for _k, _a, b in expected}) > 1
    assert len([1 for k, _a, _b in expected if k.startswith("a\x1f")]) > len(
        [1 for k, _a, _b in expected if k.startswith("b\x1f")]
    )  # a's lower threshold
    s = detect_settings(_settings(tenant_history, **env))
    readings = read_readings([str(tenant_history)], settings=s)
    job = Job(
        "detect", "detect", readings, s, partitions=8, use_cache=False,
        registry=load_registry(str(registry)),
    )  # fmt: skip
    (ran,) = run_jobs(engine, [job], JobStore(tmp_path), ResultCache(tmp_path / "cache"))
    assert sorted(alerts_of(ran.result)) == expected


def _digest(models: dict[str, Any]) -> str:
    model = assemble_model("mad", "v1", models, {"sources": ["test"]})
    return hashlib.sha256(canonical_json(model).encode()).hexdigest()


@pytest.fixture(scope="module")
def reference_digest(history: Path) -> str:
    """The artifact digest of an in-process fit (no engine)."""
    series = load_series([str(history)])
    batch = [(k, s.timestamps, s.values) for k, s in series.items()]
    return _digest(dict(fit_batch("mad", None, batch)))


def test_retrain_gives_the_same_digest_on_every_engine(
    engine: Engine, history: Path, reference_digest: str
) -> None:
    series = load_series([str(history)])
    models = train_on_engine(engine, series, "mad")
    assert list(models) == sorted(series)
    assert _digest(models) == reference_digest


def test_cached_rerun_does_no_work(
    engine: Engine, history: Path, stream_alerts: dict, tmp_path: Path
) -> None:
    first, rec1 = _detect(engine, history, tmp_path)
    assert rec1.computed == rec1.tasks > 1 and rec1.cached == 0
    again, rec2 = _detect(engine, history, tmp_path)
    assert rec2.computed == 0 and rec2.cached == rec2.tasks == rec1.tasks
    assert rec2.task_times == []  # nothing ran on the engine
    assert again == first == stream_alerts["alerts"]
    forced, rec3 = _detect(engine, history, tmp_path, use_cache=False)
    assert rec3.computed == rec3.tasks and forced == first
    # other settings are another cache key: everything is computed again
    s = detect_settings(_settings(history), threshold=0.9)
    job = Job("detect", "detect", read_readings([str(history)]), s, partitions=8)
    (ran,) = run_jobs(engine, [job], JobStore(tmp_path), ResultCache(tmp_path / "cache"))
    assert ran.record.computed == ran.record.tasks and ran.record.cached == 0


def test_a_failed_task_is_retried_by_the_engine(
    engine: Engine, history: Path, stream_alerts: dict, tmp_path: Path
) -> None:
    marker = tmp_path / "failed-once"
    batch, rec = _detect(engine, history, tmp_path, use_cache=False, fail_once=str(marker))
    assert marker.exists()  # one task attempt failed ...
    assert rec.state == "done" and rec.computed == rec.tasks  # ... and was retried
    assert batch == stream_alerts["alerts"]


def test_a_dependency_chain_runs_in_order(engine: Engine, history: Path, tmp_path: Path) -> None:
    r = read_readings([str(history)])
    half = START_MS + 180 * 10_000
    s = detect_settings(_settings(history))
    first = Job("first", "detect", r.select(r.ts < half), s, partitions=8, use_cache=False)
    # a higher priority does not let a job overtake the job it depends on
    second = Job(
        "second",
        "detect",
        r.select(r.ts >= half),
        s,
        partitions=8,
        use_cache=False,
        priority=10,
        depends_on=["first"],
    )
    retrain = Job(
        "retrain", "retrain", r, load_settings({"AD_DETECTOR": "mad"}), depends_on=["second"]
    )
    # an independent job of higher priority goes first
    urgent = Job("urgent", "detect", r, s, partitions=8, use_cache=False, priority=20)
    store = JobStore(tmp_path)
    jobs = [retrain, second, first, urgent]
    ran = run_jobs(engine, jobs, store, ResultCache(tmp_path / "c"))
    assert [j.name for j in ran] == ["urgent", "first", "second", "retrain"]
    a, b, c = first.record, second.record, retrain.record
    assert a is not None and b is not None and c is not None
    assert min(t0 for t0, _ in b.task_times) >= max(t1 for _, t1 in a.task_times)
    assert min(t0 for t0, _ in c.task_times) >= max(t1 for _, t1 in b.task_times)
    assert sorted(retrain.result) == sorted(r.names.tolist())
    listed = {rec.name: rec.state for rec in store.list()}
    assert listed == {"urgent": "done", "first": "done", "second": "done", "retrain": "done"}


def _adctl(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}
    env["AD_CONTROL_KEY"] = CONTROL_KEY  # shared by adctl and flows
    env.update(FLOW_ENV, AD_STATE_DIR=str(state), AD_PROGRESS="plain", **extra)
    return subprocess.run(
        [sys.executable, "-m", "control", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_adctl_detect_and_jobs(
    history: Path,
    stream_alerts: dict,
    tmp_path: Path,
    kafka_brokers: str,
    kafka_topic: Any,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # the same readings as Parquet: the alerts are still the flow's
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    table = pa.table({k: [r.get(k) for r in rows] for k in rows[0] | {"tenant_id": None}})
    parquet = tmp_path / "readings.parquet"
    pq.write_table(table, parquet)
    out = tmp_path / "alerts.jsonl"
    res = _adctl(
        tmp_path,
        "detect",
        "--from",
        str(parquet),
        "--out",
        str(out),
        "--partitions",
        "4",
        "--workers",
        "1",
    )
    assert res.returncode == 0, res.stderr
    assert "records/s, ETA" in res.stderr  # the progress lines
    line = json.loads(res.stdout.splitlines()[-1])
    assert line["state"] == "done" and line["computed"] == line["tasks"] > 0
    expected = stream_alerts["alerts"]
    written = out.read_bytes().splitlines()
    assert sorted(written) == sorted(body for _s, _a, body in expected)
    keys = [
        sensor_key(*(lambda b: (b["sensor_id"], b["tenant_id"]))(orjson.loads(x))) for x in written
    ]
    assert keys == sorted(keys)  # by (tenant and) sensor, each in window order

    topic = kafka_topic(partitions=2)
    again = _adctl(
        tmp_path,
        "detect",
        "--from",
        str(parquet),
        "--partitions",
        "4",
        "--workers",
        "1",
        "--out",
        f"kafka://{kafka_brokers}/{topic}",
    )
    assert again.returncode == 0, again.stderr
    line = json.loads(again.stdout.splitlines()[-1])
    assert line["computed"] == 0 and line["cached"] == line["tasks"]  # nothing recomputed
    got = sorted(rec["alert_id"] for rec in read_topic(kafka_brokers, topic))
    assert got == sorted(a for _s, a, _b in expected)

    # history from a Kafka topic (keyed by sensor, 2 partitions): the same alerts
    source = kafka_topic(partitions=2)
    produce_json(
        kafka_brokers,
        source,
        [(json.loads(v)["sensor_id"], v) for v in history.read_bytes().splitlines()],
    )
    from_kafka = tmp_path / "from-kafka.jsonl"
    res = _adctl(
        tmp_path,
        "detect",
        "--from",
        f"kafka://{kafka_brokers}/{source}",
        "--out",
        str(from_kafka),
        "--partitions",
        "4",
        "--workers",
        "1",
    )
    assert res.returncode == 0, res.stderr
    assert from_kafka.read_bytes().splitlines() == out.read_bytes().splitlines()

    jobs = _adctl(tmp_path, "jobs")
    assert jobs.returncode == 0, jobs.stderr
    listed = [ln for ln in jobs.stdout.splitlines()[1:] if ln.strip()]
    assert len(listed) == 3 and all(" done " in ln for ln in listed)
    assert str(out) in listed[0] and topic in listed[1] and str(from_kafka) in listed[2]

    bad = _adctl(tmp_path, "detect", "--from", str(parquet), "--out", str(tmp_path / "a.txt"))
    assert bad.returncode == 2 and "use a .parquet or .jsonl file" in bad.stderr
    bad = _adctl(
        tmp_path,
        "detect",
        "--from",
        str(parquet),
        "--out",
        str(out),
        "--engine",
        "spark",
        "--master",
        "nowhere://x",
    )
    assert bad.returncode == 2 and "cannot start Spark" in bad.stderr
    bad = _adctl(
        tmp_path,
        "detect",
        "--from",
        str(parquet),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--address",
        f"127.0.0.1:{free_port()}",
    )
    assert bad.returncode == 2 and "cannot reach Ray at 127.0.0.1:" in bad.stderr
    bad = _adctl(
        tmp_path, "detect", "--from", str(parquet), "--out", str(out), "--detector", "nope"
    )
    assert bad.returncode == 2 and "detector 'nope'" in bad.stderr


def test_adctl_retrain_gives_one_digest_on_every_engine(history: Path, tmp_path: Path) -> None:
    digests = {}
    for name in ENGINES:
        store = tmp_path / name
        res = _adctl(
            tmp_path,
            "retrain",
            "--engine",
            name,
            "--from",
            str(history),
            "--detector",
            "mad",
            "--model-store",
            f"file://{store}",
            "--version",
            "v1",
            "--no-announce",
            "--progress",
            "none",
        )
        assert res.returncode == 0, res.stderr
        digests[name] = json.loads((store / "mad" / "v1.json").read_text())["sha256"]
    assert len(set(digests.values())) == 1, digests


def test_history_from_s3_reads_as_from_files(
    history: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``s3://`` history (moto's S3 server over HTTP): Parquet and JSON lines, globbed."""
    import boto3
    import moto.server as server_mod
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="history")
        local = read_readings([str(history)])
        lines = history.read_bytes().splitlines(keepends=True)
        half = len(lines) // 2
        s3.put_object(Bucket="history", Key="raw/a.jsonl", Body=b"".join(lines[:half]))
        s3.put_object(Bucket="history", Key="raw/b.jsonl", Body=b"".join(lines[half:]))
        rows = [json.loads(x) for x in lines]
        parquet = tmp_path / "h.parquet"
        columns = rows[0] | {"tenant_id": None}
        pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in columns}), parquet)
        s3.upload_file(str(parquet), "history", "cols/h.parquet")
        for url in ("s3://history/raw/*.jsonl", "s3://history/cols/h.parquet"):
            got = read_readings([url])
            assert got.names.tolist() == local.names.tolist(), url
            for col in ("codes", "ts", "vals"):
                assert np.array_equal(getattr(got, col), getattr(local, col)), (url, col)
        assert got.stats.records == len(lines)
    finally:
        server.stop()


def test_adctl_detect_by_month_then_retrain(tmp_path: Path) -> None:
    """``--split month --then-retrain``: a job per month, each as a flow started at the
    month's start would see it, then a retrain job after them."""
    history = tmp_path / "two-months.jsonl"
    write_readings(history, sensors=3, per_sensor=560, step_ms=3 * 3600 * 1000)  # 70 days
    out = tmp_path / "alerts.jsonl"
    res = _adctl(
        tmp_path,
        "detect",
        "--from",
        str(history),
        "--out",
        str(out),
        "--split",
        "month",
        "--then-retrain",
        "--workers",
        "1",
        "--partitions",
        "2",
        "--model-store",
        f"file://{tmp_path / 'models'}",
        "--version",
        "v1",
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert [ln["name"] for ln in lines] == [
        "detect-2026-01",
        "detect-2026-02",
        "detect-2026-03",
        "retrain",
    ]
    assert all(ln["state"] == "done" for ln in lines)
    assert all(ln["alerts"] > 0 for ln in lines[:-1])
    assert lines[-1]["output"].startswith(f"file://{tmp_path / 'models'}/")
    assert (tmp_path / "models" / "mad" / "v1.json").is_file()
    for ln in lines[:-1]:  # each month as its own flow run over that month
        month = ln["name"].removeprefix("detect-")
        part = tmp_path / f"month-{month}.jsonl"
        part.write_bytes(
            b"".join(
                x + b"\n"
                for x in history.read_bytes().splitlines()
                if iso_month(json.loads(x)["timestamp"]) == month
            )
        )
        got = (tmp_path / f"alerts-{month}.jsonl").read_bytes().splitlines()
        assert ln["output"] == str(tmp_path / f"alerts-{month}.jsonl")
        assert sorted(got) == sorted(b for _s, _a, b in _stream(part))


def iso_month(ts_ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m")


def test_adctl_detect_model_and_dead_letters(
    messy_history: Path, stored_model: tuple[str, str], tmp_path: Path
) -> None:
    """``adctl detect --model v7 --dead-letters``: the alerts of the flow switched to the
    model at its input's start, and the flow's dead letters, byte for byte."""
    from control.markers import encode_marker

    store, ref = stored_model
    switched = tmp_path / "switched.jsonl"
    marker = encode_marker("mad", "v7", ref, CONTROL_KEY.encode())
    switched.write_bytes(marker + b"\n" + messy_history.read_bytes())
    env = {"AD_MODEL_STORE": store, "AD_CONTROL_KEY": CONTROL_KEY}
    expected, _ = _stream_with_dlq(switched, AD_EMIT="all", **env)
    _, expected_dlq = _stream_with_dlq(messy_history)  # the marker shifts line numbers
    assert expected and {orjson.loads(b)["model_version"] for _k, _a, b in expected} == {"v7"}
    out, dead = tmp_path / "alerts.jsonl", tmp_path / "dead.jsonl"
    res = _adctl(
        tmp_path,
        "detect",
        "--from",
        str(messy_history),
        "--out",
        str(out),
        "--emit",
        "all",
        "--model",
        "v7",
        "--model-store",
        store,
        "--dead-letters",
        str(dead),
        "--workers",
        "1",
        "--partitions",
        "4",
    )
    assert res.returncode == 0, res.stderr
    assert sorted(out.read_bytes().splitlines()) == sorted(b for _k, _a, b in expected)
    assert sorted(dead.read_bytes().splitlines()) == expected_dlq
    line = json.loads(res.stdout.splitlines()[-1])
    assert line["dead_letters"] == str(dead) and line["rejected"] == 2  # late, future
    bad = _adctl(
        tmp_path, "detect", "--from", str(messy_history), "--out", str(out), "--model", "v9",
        "--model-store", store,
    )  # fmt: skip
    assert bad.returncode == 2 and "--model v9" in bad.stderr


def test_adctl_retrain_keys_models_by_tenant_and_sensor(
    tenant_history: Path, tmp_path: Path
) -> None:
    """Two tenants' sensors of the same id get separate models, under the flow's state
    keys; a record without a tenant is keyed by ``AD_DEFAULT_TENANT``."""
    store = tmp_path / "models"
    env = {"AD_DEFAULT_TENANT": "shared"}
    res = _adctl(
        tmp_path,
        "retrain",
        "--from",
        str(tenant_history),
        "--detector",
        "mad",
        "--model-store",
        f"file://{store}",
        "--version",
        "v1",
        "--no-announce",
        "--progress",
        "none",
        "--dask-workers",
        "1",
        env=env,
    )
    assert res.returncode == 0, res.stderr
    keys = json.loads((store / "mad" / "v1.json").read_text())["model"]["keys"]
    expected = {f"{t}\x1fsensor-{s:03d}" for t in ("a", "b") for s in (0, 1)}
    assert set(keys) == expected | {"shared\x1fsensor-002"}
    assert keys["a\x1fsensor-000"] != keys["b\x1fsensor-000"]  # trained apart
    # without AD_DEFAULT_TENANT, the tenant registry's default tenant (as the flow)
    registry = tmp_path / "tenants.yaml"
    registry.write_text("default_tenant: plant\ntenants:\n  a: {}\n  b: {}\n  plant: {}\n")
    res = _adctl(
        tmp_path, "retrain", "--from", str(tenant_history), "--detector", "mad",
        "--model-store", f"file://{store}", "--version", "v2", "--no-announce",
        "--progress", "none", "--dask-workers", "1", env={"AD_TENANTS": str(registry)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    keys2 = json.loads((store / "mad" / "v2.json").read_text())["model"]["keys"]
    assert set(keys2) == expected | {"plant\x1fsensor-002"}
    # the flow finds each tenant's own model by its state key
    from flows.models import Models

    models = Models("mad", {})
    ref = f"file://{store}/mad/v1.json"
    for key in expected:
        det = models.get("v1", ref, key)
        assert det is models.get("v1", ref, key) and det is not models.get("v1", ref, "x")


def test_columnar_windows_equal_the_flows_record_path() -> None:
    """The columnar path of clean sensors (numpy windows, the flow's scoring) gives the
    bodies of the record-by-record path: windows of many readings (sums added in
    order), equal timestamps, a one-reading sensor, tenants, the ensemble's
    explanations, and a sensor that goes back in time (left to the record path)."""
    import numpy as np

    from control.detect import DetectTask, clean_sensors, detect_partition, split_partitions
    from control.history_columns import Readings

    rng = np.random.default_rng(3)
    names, ts, vals, tenants = [], [], [], []
    n = 20_000
    for k in range(6):
        t = START_MS + np.cumsum(rng.integers(0, 4_000, n))  # 0..4 s apart, ties
        v = 10.0 + np.sin(np.arange(n) / 200.0 + k) + rng.normal(0, 0.1, n)
        v[rng.random(n) < 0.002] += 7.0
        v[15_000 + 100 * k : 15_300 + 100 * k] += 4.0  # a level shift
        if k == 5:  # goes back 10 minutes once: late readings, the record path
            t[4_000:] -= 600_000
        names += [f"s{k}"] * n
        ts.append(t)
        vals.append(v)
        tenants += [None if k % 2 else "t1"] * n
    names.append("lonely")
    ts.append(np.array([START_MS + 5]))
    vals.append(np.array([1.5]))
    tenants.append(None)
    keys = [sensor_key(n, t) for n, t in zip(names, tenants, strict=True)]
    uniq = sorted(set(keys))
    r = Readings(
        np.array(uniq, dtype=object),
        np.array([uniq.index(k) for k in keys], dtype=np.int32),
        np.concatenate(ts).astype(np.int64),
        np.concatenate(vals),
        np.array(tenants, dtype=object),
        rows=np.arange(len(keys), dtype=np.int64),
    )
    s = detect_settings(
        load_settings({"AD_WINDOW_SIZE": "1m", "AD_EMIT": "all", "AD_THRESHOLD": "0.2"})
    )
    (part,) = list(split_partitions(r, 1))
    assert clean_sensors(part, 86_400_000).tolist().count(False) == 1
    fast = detect_partition(DetectTask(part, s, "k"))
    slow = detect_partition(DetectTask(part, s, "k", columnar=False))
    assert len(fast.alerts) > 1_000 and fast.alerts == slow.alerts
    assert sorted(fast.dead_letters) == sorted(slow.dead_letters) and fast.dead_letters
    bodies = [orjson.loads(b) for _k, _a, b in fast.alerts]
    assert any("explain" in b for b in bodies) and max(b["features"]["count"] for b in bodies) > 20


def test_parquet_rows_the_flow_would_refuse_are_dead_letters(tmp_path: Path) -> None:
    """A Parquet row that fails the flow's checks is a dead letter: the row as JSON, the
    file and row number as its origin, and the reason the flow's decoder gives it."""
    import math

    import pyarrow as pa
    import pyarrow.parquet as pq

    from control.detect_output import dead_letters_of

    rows = [
        {"sensor_id": "s1", "timestamp": START_MS, "value": 1.0, "tenant_id": None},
        {"sensor_id": "s1", "timestamp": 5, "value": 1.0, "tenant_id": None},
        {"sensor_id": "", "timestamp": START_MS, "value": 1.0, "tenant_id": None},
        {"sensor_id": "s2", "timestamp": START_MS, "value": math.nan, "tenant_id": None},
        {"sensor_id": "s2", "timestamp": START_MS, "value": 2.0, "tenant_id": "no spaces!"},
        {"sensor_id": "s2", "timestamp": START_MS + 1, "value": 2.0, "tenant_id": None},
    ]
    path = tmp_path / "h.parquet"
    pq.write_table(pa.table({k: [r[k] for r in rows] for k in rows[0]}), path)
    s = detect_settings(load_settings({}))
    r = read_readings([str(path)], settings=s)
    assert len(r) == 2 and r.stats.bad_records == 4
    dead = [orjson.loads(rec.value) for _k, rec in dead_letters_of(r, [], s.flow_id)]
    assert [(d["source"], d["offset"]) for d in dead] == [
        ("parquet:h.parquet", str(i)) for i in (2, 3, 4, 5)
    ]
    assert dead[0]["reason"] == "bad_timestamp"
    assert all(d["reason"] in {"bad_type", "missing_field", "non_finite"} for d in dead[1:])
    import base64

    assert orjson.loads(base64.b64decode(dead[0]["value_b64"]))["timestamp"] == 5
