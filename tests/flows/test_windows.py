"""Event-time windows driven by event time only; lateness; the whole flow in-process."""

from __future__ import annotations

import json
import random

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.base import RawRecord
from flows.settings import load_settings
from flows.windows import FUTURE, LATE, Closed, WindowSpec, WindowState

S = 1000  # ms

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _feed(spec: WindowSpec, events: list[tuple[int, float]]) -> tuple[list[tuple], list]:
    st, out, rejected = WindowState(), [], []
    closed: list[Closed] = []
    for ts, v in events:
        r = st.add(spec, ts, v, closed)
        if r:
            rejected.append((ts, r))
    st.close(spec, None, closed)
    out = [(c.start, c.end, c.count, c.mean) for c in closed]
    return out, rejected


def test_tumbling_closes_on_event_time_and_flags_late() -> None:
    spec = WindowSpec("tumbling", size=10 * S, lateness=5 * S)
    out, rejected = _feed(
        spec, [(1 * S, 1), (4 * S, 3), (12 * S, 5), (8 * S, 7), (31 * S, 1), (9 * S, 9)]
    )
    # 8s arrives while the watermark is 12-5=7 < 10: still on time; 9s arrives at wm 26
    assert out[0] == (0, 10 * S, 3, pytest.approx(11 / 3))
    assert rejected == [(9 * S, LATE)]
    assert [o[:2] for o in out] == [(0, 10 * S), (10 * S, 20 * S), (30 * S, 40 * S)]


def test_sliding_windows_overlap() -> None:
    spec = WindowSpec("sliding", size=10 * S, slide=5 * S)
    out, _ = _feed(spec, [(6 * S, 1.0), (12 * S, 3.0)])
    assert [(a, b, n) for a, b, n, _m in out] == [
        (0, 10 * S, 1),
        (5 * S, 15 * S, 2),
        (10 * S, 20 * S, 1),
    ]


def test_session_windows_merge_and_split() -> None:
    spec = WindowSpec("session", gap=10 * S, lateness=30 * S)
    out, _ = _feed(spec, [(0, 1.0), (5 * S, 2.0), (40 * S, 3.0), (12 * S, 4.0)])
    assert [(a, b, n) for a, b, n, _m in out] == [(0, 22 * S, 3), (40 * S, 50 * S, 1)]


def test_future_records_do_not_move_the_watermark() -> None:
    spec = WindowSpec("tumbling", size=10 * S, max_future=60 * S)
    out, rejected = _feed(spec, [(1 * S, 1.0), (10_000 * S, 2.0), (3 * S, 3.0)])
    assert rejected == [(10_000 * S, FUTURE)]
    assert out == [(0, 10 * S, 2, 2.0)]


def test_wall_clock_plays_no_part(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    spec = WindowSpec("tumbling", size=10 * S)
    events = [(i * S, float(i % 7)) for i in range(100)]
    first = _feed(spec, events)
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)
    assert _feed(spec, events) == first


def _raw_batches(records: list[bytes], sizes: list[int]) -> list[list[RawRecord]]:
    out, i = [], 0
    for n in sizes:
        out.append([RawRecord(r, "t", "0", str(i + k)) for k, r in enumerate(records[i : i + n])])
        i += n
    return out


def _run(records: list[bytes], sizes: list[int], env: dict) -> tuple[list, list]:
    from flows.detector import build_flow

    alerts: list = []
    dead: list = []
    flow = build_flow(
        load_settings(env),
        source=TestingSource(_raw_batches(records, sizes)),
        sink=TestingSink(alerts),
        dlq=TestingSink(dead),
    )
    run_main(flow)
    return ([json.loads(r.value) for _k, r in alerts], [json.loads(r.value) for _k, r in dead])


def test_flow_output_does_not_depend_on_batching() -> None:
    rng = random.Random(3)
    records = []
    for i in range(600):
        for s in ("a", "b", "c"):
            v = 10 + rng.gauss(0, 1) + (25 if (i == 400 and s == "b") else 0)
            records.append(
                json.dumps({"sensor_id": s, "timestamp": T0 + i * 20_000, "value": v}).encode()
            )
    records.insert(900, json.dumps({"sensor_id": "a", "timestamp": T0, "value": 1}).encode())
    env = {
        "AD_WINDOW": "tumbling",
        "AD_WINDOW_SIZE": "60s",
        "AD_EMIT": "all",
        "AD_DETECTOR": "mad",
        "AD_KEY_GROUPS": "4",
    }
    one = _run(records, [len(records)], env)
    sizes, left = [], len(records)
    while left:
        sizes.append(min(left, rng.randint(1, 50)))
        left -= sizes[-1]
    many = _run(records, sizes, env)

    def per_sensor(rows: list[dict]) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {}
        for r in rows:  # sensors interleave freely; each sensor's own order is fixed
            out.setdefault(r["sensor_id"], []).append(r)
        return out

    assert per_sensor(one[0]) == per_sensor(many[0]) and one[1] == many[1]
    alerts, dead = one
    assert len(alerts) == 3 * 200 and [d["reason"] for d in dead] == ["late"]
    spike = max(alerts, key=lambda a: a["score"])
    assert spike["sensor_id"] == "b" and spike["window_start"] == "2026-01-01T02:13:00.000Z"
