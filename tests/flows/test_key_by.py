"""Key groups by partition in the flow: unkeyed input is reported, keyed input is not."""

from __future__ import annotations

import json
import logging

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.base import MessageBatch, RawRecord
from connectors.kafka_keys import Homes
from flows import detector, metrics
from flows.settings import load_settings
from tests.flowrun import START_MS


def _flow(batches: list, key_by: str) -> list:
    """The flow over ``batches`` from a Kafka source (not read): every reading's output."""
    alerts: list = []
    env = {
        "AD_WINDOW": "none",
        "AD_EMIT": "all",
        "AD_DETECTOR": "mad",
        "AD_KEY_BY": key_by,
        "AD_SOURCE": "kafka://127.0.0.1:9/t",
    }
    run_main(
        detector.build_flow(
            load_settings(env),
            source=TestingSource(batches),
            sink=TestingSink(alerts),
            dlq=TestingSink([]),
        )
    )
    return alerts


def _run(key: bytes | None) -> list:
    batches = []
    for b in range(3):
        raws = [
            RawRecord(
                json.dumps(
                    {
                        "sensor_id": f"s{i % 3}",
                        "timestamp": 1_767_225_600_000 + (b * 10 + i) * 1000,
                        "value": 1.0,
                    }
                ).encode(),
                "kafka:t",
                "0",
                str(b * 10 + i),
                key if key is None else key + str(i % 3).encode(),
            )
            for i in range(10)
        ]
        batches.append(MessageBatch([r.value for r in raws], raws, "kafka:t", "t#0~7"))
    alerts = _flow(batches, "partition")
    return alerts


def test_unkeyed_input_by_partition_is_reported(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detector, "_warned_unkeyed", False)
    before = metrics.UNKEYED_BATCHES._value.get()
    with caplog.at_level(logging.WARNING, logger="flows.detector"):
        assert len(_run(b"s")) == 30  # keyed: nothing to say
        assert metrics.UNKEYED_BATCHES._value.get() == before
        assert "without a key" not in caplog.text
        assert len(_run(None)) == 30  # the same output, and a warning, once
    assert metrics.UNKEYED_BATCHES._value.get() == before + 3
    assert caplog.text.count("without a key") == 1


def _auto_batches(homes: Homes, keys: str) -> list[MessageBatch]:
    """Readings of sensors s0..s5 from 3 partitions in turn (a spike at 30 s); ``keys``:
    how they are keyed."""
    batches = []
    for b in range(36):
        part = b % 3
        raws = []
        for i in range(6):
            sid = f"s{i}"
            key = {"sensor": sid.encode(), "none": None, "other": b"x" + sid.encode()}[keys]
            value = 1.0 + 0.1 * ((b * 7 + i) % 5) + 5.0 * (b == 30)
            body = {"sensor_id": sid, "timestamp": START_MS + b * 1000, "value": value}
            raws.append(RawRecord(json.dumps(body).encode(), "kafka:t", str(part), str(b), key))
        batches.append(
            MessageBatch([r.value for r in raws], raws, "kafka:t", homes.groups[part], homes)
        )
    return batches


def _run_auto(batches: list, key_by: str) -> list[dict]:
    alerts = _flow(batches, key_by)
    return sorted((json.loads(r.value) for _k, r in alerts), key=lambda a: a["alert_id"])


@pytest.mark.parametrize(
    ("keys", "why"), [("sensor", "other_partition"), ("none", "unkeyed"), ("other", "other_key")]
)
def test_auto_keys_each_sensor_by_its_home_whatever_the_arrival(keys: str, why: str) -> None:
    """Every sensor's readings arrive from all 3 partitions: by home they still meet one
    state (the output is the one by sensor hash), and those away from home are counted
    with the reason."""
    homes = Homes("t", ["t#0", "t#1", "t#2"], "murmur2")
    home_of = {f"s{i}": homes.groups.index(homes.group(f"s{i}")) for i in range(6)}
    assert len(set(home_of.values())) > 1
    batches = _auto_batches(homes, keys)
    away = metrics.KEY_LOCALITY.labels("away", why)
    home = metrics.KEY_LOCALITY.labels("home", "keyed")
    a0, h0 = away._value.get(), home._value.get()
    by_home = _run_auto(batches, "auto")
    assert by_home == _run_auto(_auto_batches(homes, keys), "sensor")
    assert len(by_home) == 36 * 6 and max(a["score"] for a in by_home) > 0.9
    at_home = sum(1 for b in range(36) for i in range(6) if home_of[f"s{i}"] == b % 3)
    assert home._value.get() - h0 == at_home
    assert away._value.get() - a0 == 36 * 6 - at_home
    # by arrival partition each sensor would have three states: the test tells
    assert by_home != _run_auto(_auto_batches(homes, keys), "partition")


def test_auto_without_homes_keys_by_sensor_hash() -> None:
    """Sources that do not know their producers' partitioning (here: plain batches)."""
    homes = Homes("t", ["t#0", "t#1", "t#2"], "murmur2")
    plain = [list(b) for b in _auto_batches(homes, "sensor")]
    assert _run_auto(plain, "auto") == _run_auto(_auto_batches(homes, "sensor"), "sensor")
