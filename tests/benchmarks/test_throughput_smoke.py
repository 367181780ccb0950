"""Smoke test of the throughput benchmark harness at a tiny size.

It checks that every section runs against the real local Kafka and that the table and
the JSON have their structure. It asserts nothing about timings: benchmarks are
commands people run (``python -m benchmarks.throughput``), never timed tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.throughput import main, processed_rate
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
            "--linger",
            "30ms",  # in the product flows' source URL (a bad one exits 2 and fails the run)
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["machine"]["cpus"] >= 1 and res["command"].startswith("python -m benchmarks")
    assert res["config"]["linger"] == "30ms"

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

    # the live maximum first (bisection between 10% and 75% of the replay rate), then
    # the default deployment at 3 fractions of it and at half the replay rate
    mx = res["latency_max"]
    assert mx["replay"] == tp["flow_default"]["events_per_s"]
    tries = mx["search_s1"]
    assert len(tries) == 2 and tries[0]["rate"] == pytest.approx(0.425 * mx["replay"])
    kept = [t["rate"] for t in tries if t["kept_up"]]
    assert mx["live_s1"] == pytest.approx(max(kept, default=0.1 * mx["replay"]))
    assert len(res["latency"]) == 4
    for lat, load in zip(res["latency"][:3], (0.25, 0.5, 0.75), strict=True):
        assert lat["load_vs_live_max"] == pytest.approx(load)
    assert res["latency"][3]["load_vs_replay_max"] == pytest.approx(0.5)
    for lat in res["latency"]:
        assert lat["snapshot_s"] == 1 and lat["target_ms"] == 1250 and not lat["probe"]
        assert lat["expected"] > 0 and lat["samples"] > 0 and lat["p99_ms"] >= lat["p50_ms"] > 0
        assert lat["processes"] == cores() and lat["key_by"] == "auto"
        assert lat["processed_rate"] > 0
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


def test_processed_rate_is_the_slope_of_visible_progress() -> None:
    # output k closes at input record 1000 * k; the flow that keeps up shows output k
    # at k/10 s (10,000 records/s); one that falls behind shows it at k/5 s; outputs
    # become visible a commit (every second) at a time
    closes = {(f"s{k}", 0): 1000 * k for k in range(100)}
    keeps_up = {key: idx // 10_000 + 1.0 for key, idx in closes.items()}
    behind = {key: idx // 5_000 + 1.0 for key, idx in closes.items()}
    assert processed_rate(keeps_up, closes, 1.0, 9.0) == pytest.approx(10_000)
    assert processed_rate(behind, closes, 2.0, 18.0) == pytest.approx(5_000)
    # output that is not a window close of the input is ignored; nothing seen: 0
    assert processed_rate({**keeps_up, ("other", 1): 5.0}, closes, 1.0, 9.0) == pytest.approx(
        10_000
    )
    assert processed_rate({}, closes, 1.0, 9.0) == 0.0
