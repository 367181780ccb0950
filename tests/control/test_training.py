"""Retraining on real Dask: an embedded LocalCluster and a separately started scheduler
with two ``dask worker`` processes must produce the same model; the ``adctl retrain``
command reads history from Kafka and files, stores the artifact and announces it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from control.history import Series
from control.markers import encode_marker
from control.training import assemble_model, train_on_dask
from state import model_store
from tests.conftest import CONTROL_KEY, ROOT
from tests.control.helpers import free_port, produce_json, read_topic, write_readings
from tests.flowrun import KEY

DASK = str(Path(sys.executable).with_name("dask"))


def _series(keys: int = 12, n: int = 600, seed: int = 3) -> dict[str, Series]:
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(keys):
        noise = rng.normal(0, 1 + k / 4, n)
        noise[rng.choice(n, 5, replace=False)] += 25
        out[f"s{k:02d}"] = Series(np.arange(n, dtype=np.float64) * 10.0, noise + k)
    return out


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``dask scheduler --port P`` and two ``dask worker`` processes (each its own pid)."""
    port = free_port()
    logs = tmp_path_factory.mktemp("dask")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dashboard-address",
                ":0",
                "--no-show",
            ],
            cwd=ROOT,
            env=env,
            stdout=open(logs / "scheduler.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ]
    addr = f"tcp://127.0.0.1:{port}"
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "worker",
                    addr,
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "1",
                    "--no-nanny",
                    "--dashboard-address",
                    ":0",
                    "--name",
                    f"w{i}",
                ],
                cwd=ROOT,
                env=env,
                stdout=open(logs / f"worker{i}.log", "wb"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    from distributed import Client

    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                with Client(addr, timeout="5s") as c:
                    c.wait_for_workers(2, timeout=60)
                    break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield addr
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _canonical(per_key: dict[str, dict[str, Any]]) -> str:
    return model_store.canonical_json(assemble_model("mad", "v1", per_key, {}))


def test_localcluster_and_remote_scheduler_train_the_same_model(dask_cluster: str) -> None:
    from distributed import Client, get_task_stream

    series = _series()
    progress: list[tuple[int, int]] = []
    local = train_on_dask(series, "mad", n_workers=2, progress=lambda d, n: progress.append((d, n)))
    with Client(dask_cluster) as watcher, get_task_stream(client=watcher) as ts:
        remote = train_on_dask(series, "mad", scheduler=dask_cluster)
    assert list(local) == sorted(series)
    assert _canonical(local) == _canonical(remote)
    assert progress[-1] == (len(series), len(series))
    # real per-key fits: each key learns its own scale, equal to detectors.fit on that key
    import detectors

    scales = [local[k]["params"]["z_scale"] for k in sorted(series)]
    assert len(set(scales)) == len(scales)
    s = series["s05"]
    assert local["s05"]["params"] == detectors.fit("mad", s.values, s.timestamps)["params"]
    # the remote run's tasks ran on both separately started workers
    workers = {t["worker"] for t in ts.data if str(t.get("key", "")).startswith("fit_batch")}
    assert len(workers) == 2, ts.data[:3]


def _adctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}
    base["AD_CONTROL_KEY"] = CONTROL_KEY  # shared by adctl and flows
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "control", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_retrain_from_kafka_stores_and_announces(
    kafka_brokers: str, kafka_topic: Any, dask_cluster: str, tmp_path: Path
) -> None:
    src, control = kafka_topic(2), kafka_topic(1)
    readings = write_readings(None, sensors=4, per_sensor=300)
    produce_json(kafka_brokers, src, readings)
    # a marker and a bad record in the history are skipped, not trained on
    produce_json(
        kafka_brokers,
        src,
        [("x", encode_marker("mad", "v0", "file:///x/mad/v0.json", KEY)), ("x", b"not json")],
    )
    store = (tmp_path / "models").as_uri()
    res = _adctl(
        "retrain",
        "--from",
        f"kafka://{kafka_brokers}/{src}",
        "--model-store",
        store,
        "--scheduler",
        dask_cluster,
        "--bootstrap",
        kafka_brokers,
        "--control-topic",
        control,
        env={"AD_DETECTOR": "mad"},
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["version"] == "v1" and out["model_ref"] == model_store.model_ref(store, "mad", "v1")
    assert "1 bad, 1 control markers skipped" in res.stderr
    assert "training: 4/4 keys (100%)" in res.stderr  # plain progress lines off a terminal
    model = model_store.fetch(out["model_ref"])
    assert sorted(model["keys"]) == [f"sensor-{i:03d}" for i in range(4)]
    assert model["version"] == "v1" and model["training"]["records"] == 4 * 300
    events = read_topic(kafka_brokers, control)
    assert [(e["type"], e["event"], e["version"]) for e in events] == [("model", "trained", "v1")]
    # the same history from a JSON-lines file on the LocalCluster gives the same keys' models
    path = tmp_path / "hist.jsonl"
    path.write_bytes(b"\n".join(v for _k, v in readings) + b"\n")
    res2 = _adctl(
        "retrain",
        "--from",
        str(path),
        "--model-store",
        store,
        "--no-announce",
        "--detector",
        "mad",
        "--progress",
        "none",
    )
    assert res2.returncode == 0, res2.stderr
    m2 = model_store.fetch(json.loads(res2.stdout)["model_ref"])
    assert json.loads(res2.stdout)["version"] == "v2"
    assert {k: v["params"] for k, v in m2["keys"].items()} == {
        k: v["params"] for k, v in model["keys"].items()
    }


def test_retrain_errors_are_clear(tmp_path: Path) -> None:
    res = _adctl("retrain", "--model-store", tmp_path.as_uri())
    assert res.returncode == 2 and "no history given" in res.stderr
    res = _adctl(
        "retrain", "--from", str(tmp_path / "nope.csv"), "--model-store", tmp_path.as_uri()
    )
    assert res.returncode == 2 and "history file not found" in res.stderr
    bad = tmp_path / "h.jsonl"
    bad.write_text('{"sensor_id": "a", "timestamp": 1, "value": 1}\n')
    res = _adctl(
        "retrain",
        "--from",
        str(bad),
        "--model-store",
        tmp_path.as_uri(),
        "--scheduler",
        f"tcp://127.0.0.1:{free_port()}",
        "--no-announce",
    )
    assert res.returncode == 2 and "cannot reach Dask scheduler" in res.stderr


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_history_file_formats(tmp_path: Path, fmt: str) -> None:
    from control.history import Fields, load_series

    rows = [
        {"sensor": f"k{i % 3}", "t": f"2026-01-01T00:{i // 3:02d}:00Z", "v": float(i)}
        for i in range(30)
    ][::-1]  # reversed: the reader sorts by event time
    path = tmp_path / f"h.{fmt}"
    if fmt == "csv":
        import csv

        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["sensor", "t", "v"])
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    series = load_series(
        [str(path)],
        fields=Fields("sensor", "t", "v"),
        since=1767225600.0 + 60,
        until=1767225600.0 + 540,
    )
    assert sorted(series) == ["k0", "k1", "k2"]
    assert series["k1"].values.tolist() == [4.0, 7.0, 10.0, 13.0, 16.0, 19.0, 22.0, 25.0]
    assert np.all(np.diff(series["k1"].timestamps) == 60.0)
