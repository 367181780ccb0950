"""Model switches inside the flow: at the marker's input position, per-key models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.base import MessageBatch, RawRecord
from connectors.kafka_keys import Homes
from control.markers import encode_marker
from flows.settings import load_settings
from state import model_store
from tests.flowrun import KEY


def _run(records: list[bytes], key_by: str, store: str) -> list[dict]:
    from flows.detector import build_flow

    alerts: list = []
    batches: list = [[RawRecord(r, "t", "0", str(i))] for i, r in enumerate(records)]
    env = {
        "AD_WINDOW": "none",
        "AD_EMIT": "all",
        "AD_DETECTOR": "mad",
        "AD_KEY_GROUPS": "2",
        "AD_KEY_BY": key_by,
        "AD_CONTROL_KEY": KEY.decode(),
        "AD_MODEL_STORE": store,
    }
    if key_by == "partition":  # as the Kafka source emits them (the source is not read)
        env["AD_SOURCE"] = "kafka://127.0.0.1:9/t"
        batches = [MessageBatch([b[0].value], b, "t", "t#0~7") for b in batches]
    elif key_by == "auto":  # read from partition 0 of 3; "a" and "b" live in 1 and 2
        homes = Homes("t", ["t#0", "t#1", "t#2"], "murmur2")
        assert homes.group("a") == homes.groups[1] and homes.group("b") == homes.groups[2]
        env["AD_SOURCE"] = "kafka://127.0.0.1:9/t"
        batches = [MessageBatch([b[0].value], b, "t", homes.groups[0], homes) for b in batches]
    run_main(
        build_flow(
            load_settings(env),
            source=TestingSource(batches),
            sink=TestingSink(alerts),
            dlq=TestingSink([]),
        )
    )
    return [json.loads(r.value) for _k, r in alerts]


@pytest.mark.parametrize("key_by", ["sensor", "partition", "auto"])
def test_switch_applies_at_the_marker_with_per_key_models(tmp_path: Path, key_by: str) -> None:
    base = {"detector": "mad", "params": {"window": 16, "min_periods": 4, "z_scale": 4.0}}
    model = {
        **base,
        "version": "v2",
        # sensor "a" gets a model of its own that never saturates; "b" the pooled one
        "keys": {"a": {**base, "version": "v2", "params": {**base["params"], "z_scale": 1e9}}},
    }
    ref = model_store.put(f"file://{tmp_path}", "mad", "v2", model)
    rows = []
    for i in range(60):
        for s in ("a", "b"):
            v = 10.0 + (i % 3) * 0.1 + (50.0 if i == 50 else 0.0)
            rows.append(
                json.dumps(
                    {"sensor_id": s, "timestamp": 1_767_225_600_000 + i * 1000, "value": v}
                ).encode()
            )
        if i == 30:
            rows.append(encode_marker("mad", "v2", ref, KEY))
    out = _run(rows, key_by, f"file://{tmp_path}")
    by = {(r["sensor_id"], r["window_start"]): r for r in out}
    t = "2026-01-01T00:00:{:02d}.000Z".format
    assert by[("a", t(30))]["model_version"] == "builtin-1"
    assert by[("a", t(31))]["model_version"] == "v2" == by[("b", t(31))]["model_version"]
    assert by[("b", t(50))]["score"] > 0.9  # the pooled model sees the spike
    assert by[("a", t(50))]["score"] < 1e-6  # a's own model is (deliberately) blind


@pytest.mark.parametrize("forgery", ["unsigned", "wrong key", "foreign model_ref"])
def test_a_forged_marker_changes_nothing_and_is_a_dead_letter(tmp_path: Path, forgery: str) -> None:
    from connectors.base import RawRecord as Raw
    from flows.detector import build_flow

    store = f"file://{tmp_path}/store"
    ref = model_store.put(store, "mad", "v2", {"detector": "mad", "version": "v2", "params": {}})
    elsewhere = model_store.put(
        f"file://{tmp_path}/evil", "mad", "v2", {"detector": "mad", "version": "v2", "params": {}}
    )
    marker = {
        "unsigned": encode_marker("mad", "v2", ref, KEY).replace(b',"sig":', b',"nosig":'),
        "wrong key": encode_marker("mad", "v2", ref, b"not-the-flows-key-0123"),
        "foreign model_ref": encode_marker("mad", "v2", elsewhere, KEY),
    }[forgery]
    rows = [
        json.dumps(
            {"sensor_id": "a", "timestamp": 1_767_225_600_000 + i * 1000, "value": 1.0}
        ).encode()
        for i in range(10)
    ]
    rows.insert(5, marker)
    alerts: list = []
    dead: list = []
    env = {
        "AD_WINDOW": "none",
        "AD_EMIT": "all",
        "AD_DETECTOR": "mad",
        "AD_CONTROL_KEY": KEY.decode(),
        "AD_MODEL_STORE": store,
    }
    run_main(
        build_flow(
            load_settings(env),
            source=TestingSource([[Raw(r, "t", "0", str(i))] for i, r in enumerate(rows)]),
            sink=TestingSink(alerts),
            dlq=TestingSink(dead),
        )
    )
    assert {json.loads(r.value)["model_version"] for _k, r in alerts} == {"builtin-1"}
    [d] = [json.loads(r.value) for _k, r in dead]
    assert d["reason"] == "bad_control" and d["offset"] == "5"
