"""Smoke test of the throughput benchmark harness at a tiny size.

It checks that every section runs against the real local Kafka and that the table and
the JSON have their structure. It asserts nothing about timings: benchmarks are
commands people run (``python -m benchmarks.throughput``), never timed tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.throughput import main
from control.launch import cores

RECORDS = 20_000


def test_throughput_benchmark_runs_at_a_tiny_size(kafka_brokers: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = main(
        [
            "--brokers",
            kafka_brokers,
            "--quick",
            "--records",
            str(RECORDS),
            "--sensors",
            "500",
            "--partitions",
            "4",
            "--no-mad",
            "--latency-seconds",
            "2",
            "--latency-warmup",
            "1",
            "--recovery-keys",
            "2000",
            "--state-keys",
            "1000",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["machine"]["cpus"] >= 1 and res["command"].startswith("python -m benchmarks")

    tp = res["throughput"]
    assert set(tp) == {
        "ceiling",
        "baseline",
        "flow_ensemble_w1",
        "flow_ensemble_w2",
        "flow_ensemble_w1x2p",
        "flow_ensemble_w1_bypart",
        "flow_ensemble_w1x2p_bypart",
        "flow_default",
    }
    for name, row in tp.items():
        assert row["records"] == RECORDS, name  # every record was read, by every run
        assert row["seconds"] > 0 and row["events_per_s"] > 0, name
        assert row["cpu_s_per_m"] > 0, name
    assert tp["flow_ensemble_w1x2p"]["processes"] == 2
    assert tp["flow_ensemble_w1x2p_bypart"]["key_by"] == "partition"
    assert tp["flow_default"]["key_by"] == "auto" and tp["flow_default"]["processes"] == cores()

    assert len(res["latency"]) == 3  # the default deployment at 3 loads
    for lat in res["latency"]:
        assert lat["snapshot_s"] == 1 and lat["target_ms"] == 1250
        assert lat["expected"] > 0 and lat["samples"] > 0 and lat["p99_ms"] >= lat["p50_ms"] > 0
        assert lat["processes"] == cores() and lat["key_by"] == "auto"
    assert Path(res["latency_plot"]).stat().st_size > 1000  # the PNG

    rec = res["recovery"]
    assert rec["keys"] == 2000 and rec["recovery_s"] > 0 and rec["rss_bytes"] > 0

    modes = {(r["detector"], r["mode"]) for r in res["state"]}
    assert modes == {("ensemble", "packed"), ("ensemble", "live")}
    for r in res["state"]:
        assert r["keys"] == 1000 and r["snapshot_bytes"] > 0 and r["rss_bytes_per_key"] > 0

    table = res["table"]
    for head in ("| run |", "| latency:", "| recovery:", "| state:"):
        assert head in table
    assert "| flow_ensemble_w1 |" in table
