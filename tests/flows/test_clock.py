"""The clock rules: one wrong-dated reading never moves a sensor's clock, and a sensor
that comes back after any gap resumes (README, Event time)."""

from __future__ import annotations

import json
import pickle

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.base import RawRecord
from flows.logic import KeyGroupLogic
from flows.models import Models
from flows.records import Reading, SubBatch
from flows.settings import load_settings

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
Y2150 = 5_680_281_600_000


def _flow(rows: list[tuple[str, int, float]], **env: str) -> tuple[list[dict], list[dict]]:
    from flows.detector import build_flow

    alerts: list = []
    dead: list = []
    batches = [
        [
            RawRecord(
                json.dumps({"sensor_id": s, "timestamp": t, "value": v}).encode(), "t", "0", str(i)
            )
        ]
        for i, (s, t, v) in enumerate(rows)
    ]
    settings = load_settings({"AD_WINDOW": "none", "AD_EMIT": "all", "AD_DETECTOR": "mad", **env})
    run_main(
        build_flow(
            settings, source=TestingSource(batches), sink=TestingSink(alerts), dlq=TestingSink(dead)
        )
    )
    return [json.loads(r.value) for _k, r in alerts], [json.loads(r.value) for _k, r in dead]


def _scored(alerts: list[dict]) -> list[int]:
    from datetime import datetime

    return [int(datetime.fromisoformat(a["window_start"]).timestamp() * 1000) for a in alerts]


def test_a_sensor_back_after_a_long_weekend_resumes() -> None:
    before = [("a", T0 + i * 60_000, 10.0) for i in range(20)]
    after = [("a", T0 + 3 * DAY + i * 60_000, 10.0) for i in range(20)]
    alerts, dead = _flow(before + after)
    assert dead == []
    assert _scored(alerts) == [t for _s, t, _v in before + after]


def test_a_first_reading_from_the_future_does_not_blind_the_sensor() -> None:
    rows = [("a", Y2150, 10.0)] + [("a", T0 + i * 60_000, 10.0) for i in range(20)]
    alerts, dead = _flow(rows)
    assert [(d["reason"], d["offset"]) for d in dead] == [("future", "0")]
    assert _scored(alerts) == [t for _s, t, _v in rows[1:]]


@pytest.mark.parametrize("wrong", [Y2150, T0 - 30 * DAY])
def test_one_wrong_reading_mid_stream_moves_nothing(wrong: int) -> None:
    rows = [("a", T0 + i * 60_000, 10.0) for i in range(20)]
    rows.insert(10, ("a", wrong, 10.0))
    alerts, dead = _flow(rows)
    assert [(d["reason"], d["offset"]) for d in dead] == [
        ("future" if wrong > T0 else "late", "10")
    ]
    assert _scored(alerts) == [t for _s, t, _v in rows if t != wrong]


def test_a_single_reading_sensor_is_scored_at_the_end_of_input() -> None:
    alerts, dead = _flow([("a", T0, 1.0), ("b", T0 + 5, 2.0)])
    assert dead == [] and sorted(a["sensor_id"] for a in alerts) == ["a", "b"]


def test_held_readings_survive_snapshots_exactly() -> None:
    """Snapshot and rebuild the key group after every reading: same output as without."""
    rows = [("a", Y2150, 1.0)] + [("a", T0 + i * 60_000, 10.0 + i % 3) for i in range(8)]
    rows += [("a", T0 + 4 * DAY + i * 60_000, 10.0) for i in range(5)] + [("a", Y2150, 1.0)]
    rows += [("a", T0 + 4 * DAY + (5 + i) * 60_000, 10.0) for i in range(3)]
    s = load_settings(
        {
            "AD_WINDOW": "tumbling",
            "AD_EMIT": "all",
            "AD_DETECTOR": "mad",
            "AD_SNAPSHOT_DIR": "inline",
        }
    )
    models = Models(s.detector, s.detector_params)
    subs = [
        SubBatch.of("0", [Reading(sid, t, v, None, None, RawRecord(b"{}", "src", "0", str(i)))])
        for i, (sid, t, v) in enumerate(rows)
    ]

    def run(snapshot_every_batch: bool) -> list:
        lg = KeyGroupLogic(s, models, None, None)
        out: list = []
        for sub in subs:
            out.extend(lg.on_batch([sub])[0])
            if snapshot_every_batch:
                lg = KeyGroupLogic(s, models, pickle.loads(pickle.dumps(lg.snapshot())), None)
        out.extend(lg.on_eof()[0])
        return [(k, rec.key, rec.value) for k, (_key, rec) in out]

    plain = run(False)
    assert plain == run(True)
    assert sum(1 for k, _key, _v in plain if k == "dlq") == 2  # the two 2150 readings


@pytest.mark.parametrize("window", ["none", "tumbling"])
@pytest.mark.parametrize("snap_dir", [None, "segments"])
def test_records_waiting_to_be_reordered_survive_snapshots(tmp_path, snap_dir, window) -> None:
    """A source without order (Pub/Sub): records wait in the key group's state, are in
    its snapshots (inline and incremental), and come out in event-time order."""
    import random

    rng = random.Random(4)
    rows = [("a", T0 + i * 1000, float(i % 5)) for i in range(200)]
    shuffled = rows[:]
    for i in range(0, 200, 10):  # disorder within blocks of 10
        block = shuffled[i : i + 10]
        rng.shuffle(block)
        shuffled[i : i + 10] = block
    s = load_settings(
        {
            "AD_SOURCE": "pubsub://p/s",
            "AD_WINDOW": window,
            "AD_EMIT": "all",
            "AD_DETECTOR": "mad",
            "AD_REORDER_WAIT": "1h",
        }
    )
    models = Models(s.detector, s.detector_params)
    directory = tmp_path / snap_dir if snap_dir else None

    def run(rows: list, snapshots: bool) -> list:
        lg = KeyGroupLogic(s, models, None, directory)
        out: list = []
        for i, (sid, t, v) in enumerate(rows):
            raw = RawRecord(b"{}", "src", "0", str(i))
            out.extend(lg.on_batch([SubBatch.of("0", [Reading(sid, t, v, None, None, raw)])])[0])
            if snapshots and i % 7 == 0:
                lg = KeyGroupLogic(s, models, lg.snapshot(), directory)
        out.extend(lg.on_eof()[0])
        return [(k, rec.key, json.loads(rec.value)["window_start"]) for k, (_k, rec) in out]

    ordered = run(rows, False)
    assert run(shuffled, True) == run(shuffled, False)
    assert [r[2] for r in run(shuffled, True)] == [r[2] for r in ordered]
    # every reading scored (none), or every 60 s window of the 200 s, the last one at the end
    assert all(k == "alert" for k, _s, _w in ordered)
    assert len(ordered) == (200 if window == "none" else 4)
