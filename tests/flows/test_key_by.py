"""Key groups by partition in the flow: unkeyed input is reported, keyed input is not."""

from __future__ import annotations

import json
import logging

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.base import MessageBatch, RawRecord
from flows import detector, metrics
from flows.settings import load_settings


def _run(key: bytes | None) -> list:
    alerts: list = []
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
    env = {
        "AD_WINDOW": "none",
        "AD_EMIT": "all",
        "AD_DETECTOR": "mad",
        "AD_KEY_BY": "partition",
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
