"""Tenant quotas and tenant-registry switches inside the flow (in-process runs).

Quotas are decided per input partition in its input order (flows.quotas), so the
dead letters do not depend on how the input is batched; a signed registry marker
switches unknown-tenant checks, quotas and thresholds at its position; a forged one is
a dead letter ``bad_control`` and changes nothing. The SIGKILL runs on real Kafka are in
``test_tenant_quotas_kafka.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.base import RawRecord
from flows.settings import load_settings
from schemas.markers import encode_registry_marker
from state.tenants import parse_registry, store_registry
from tests.flowrun import KEY, START_MS


def _rec(tenant: str | None, sensor: str, ts: int, value: float = 1.0) -> bytes:
    body: dict[str, Any] = {"sensor_id": sensor, "timestamp": ts, "value": value}
    if tenant is not None:
        body["tenant_id"] = tenant
    return json.dumps(body).encode()


def _run(
    records: list[bytes],
    registry: Path | None,
    store: str = "",
    batch: int = 1,
    parts: int = 1,
    **env: str,
) -> tuple[list[dict], list[dict]]:
    """Alerts and dead letters of a flow over ``records`` (partition: index % parts)."""
    from flows.detector import build_flow

    alerts: list = []
    dead: list = []
    raws = [RawRecord(r, "t", str(i % parts), str(i)) for i, r in enumerate(records)]
    by_part = [[r for r in raws if r.partition == str(p)] for p in range(parts)]
    # batches of one partition each, the partitions interleaved
    batches = []
    for start in range(0, max(len(b) for b in by_part), batch):
        batches.extend(b[start : start + batch] for b in by_part if b[start : start + batch])
    settings = {
        "AD_WINDOW": "none",
        "AD_DETECTOR": "mad",
        "AD_EMIT": "all",
        "AD_KEY_GROUPS": "4",
        "AD_CONTROL_KEY": KEY.decode(),
        "AD_MODEL_STORE": store,
        **env,
    }
    if registry is not None:
        settings["AD_TENANTS"] = str(registry)
    run_main(
        build_flow(
            load_settings(settings),
            source=TestingSource(batches),
            sink=TestingSink(alerts),
            dlq=TestingSink(dead),
        )
    )
    return [json.loads(r.value) for _k, r in alerts], [json.loads(r.value) for _k, r in dead]


def _expected_quota(
    records: list[tuple[str, str, int]], rate: float, burst: float, most: int
) -> list[str | None]:
    """The token bucket and sensor limit, written out independently of flows.quotas."""
    tokens: dict[str, float] = {}
    newest: dict[str, int] = {}
    seen: dict[str, set[str]] = {}
    out: list[str | None] = []
    for tenant, sensor, ts in records:
        known = seen.setdefault(tenant, set())
        if sensor not in known and len(known) >= most:
            out.append("sensor_quota")
            continue
        if tenant not in tokens:
            tokens[tenant], newest[tenant] = burst, ts
        elif ts > newest[tenant]:
            tokens[tenant] = min(burst, tokens[tenant] + (ts - newest[tenant]) / 1000 * rate)
            newest[tenant] = ts
        if tokens[tenant] < 1:
            out.append("quota_exceeded")
            continue
        tokens[tenant] -= 1
        known.add(sensor)
        out.append(None)
    return out


def _registry(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_quotas_refuse_the_excess_the_same_for_any_batching(tmp_path: Path, batch: int) -> None:
    reg = _registry(
        tmp_path / "t.yaml",
        "tenants:\n  acme: {quota: {rate: 2, burst: 3, max_sensors: 3}}\n  free: {}\n",
    )
    rows: list[tuple[str, str, int]] = []
    for i in range(200):  # 4 acme sensors at ~5 readings per event-time second, bursty
        rows.append(("acme", f"s{i % 4}", START_MS + (i // 5) * 1000 + (i % 5) * 10))
        rows.append(("free", f"s{i % 9}", START_MS + i * 10))  # no quota: all taken
    alerts, dead = _run([_rec(*r) for r in rows], reg, batch=batch)
    want = _expected_quota([r for r in rows if r[0] == "acme"], 2.0, 3.0, 3)
    refused = [w for w in want if w]
    assert [d["reason"] for d in dead] == refused
    assert refused.count("sensor_quota") == 50 and refused.count("quota_exceeded") > 50
    assert len(alerts) == 400 - len(refused)  # AD_EMIT=all, window none: one per reading
    assert sum(a["tenant_id"] == "free" for a in alerts) == 200


def test_quota_is_split_over_the_input_partitions(tmp_path: Path) -> None:
    """rate 4 and max_sensors 4 over 2 partitions: each partition enforces 2 and 2."""
    reg = _registry(tmp_path / "t.yaml", "tenants: {acme: {quota: {rate: 4, max_sensors: 4}}}\n")
    rows = [("acme", f"s{i % 6}", START_MS + (i // 12) * 1000) for i in range(600)]
    # (the testing source is one Bytewax partition carrying two record partitions)
    _alerts, dead = _run([_rec(*r) for r in rows], reg, batch=5, parts=2, AD_QUOTA_PARTITIONS="2")
    want: list[str | None] = []
    for p in range(2):
        want += [w for w in _expected_quota(rows[p::2], 2.0, 2.0, 2) if w]
    assert sorted(d["reason"] for d in dead) == sorted(want)
    assert "sensor_quota" in want and "quota_exceeded" in want
    # the same with AD_QUOTA_PARTITIONS=1: each partition would take the whole quota
    _alerts, dead1 = _run([_rec(*r) for r in rows], reg, batch=5, parts=2, AD_QUOTA_PARTITIONS="1")
    assert len(dead1) < len(dead)


def test_no_quota_no_registry_same_output(tmp_path: Path) -> None:
    rows = [_rec("acme", f"s{i % 3}", START_MS + i * 100, float(i % 7)) for i in range(300)]
    reg = _registry(tmp_path / "t.yaml", "tenants: {acme: {}}\n")
    assert _run(rows, None, batch=10) == _run(rows, reg, batch=10)


def _store_reg(tmp_path: Path, text: str) -> tuple[str, str, str]:
    import yaml

    store = f"file://{tmp_path}/store"
    reg = parse_registry(yaml.safe_load(text))
    return store, store_registry(store, reg), reg.digest


def test_registry_switch_applies_at_its_position(tmp_path: Path) -> None:
    start = _registry(tmp_path / "t.yaml", "tenants: {acme: {threshold: 1.0}}\n")
    store, ref, digest = _store_reg(
        tmp_path,
        "tenants:\n  acme: {threshold: 0.0, quota: {max_sensors: 1}}\n  globex: {}\n",
    )
    rows = []
    for i in range(40):
        rows += [_rec("acme", "a", START_MS + i * 1000), _rec("globex", "g", START_MS + i * 1000)]
        rows += [_rec("acme", "b", START_MS + i * 1000)]
        if i == 19:
            rows.append(encode_registry_marker(digest, ref, KEY))
    for batch in (1, 13):
        alerts, dead = _run(rows, start, store, batch=batch, AD_EMIT="alerts")
        reasons = [d["reason"] for d in dead]
        # before: globex unknown (20); after: acme's second sensor over max_sensors 1
        assert reasons.count("unknown_tenant") == 20 and reasons.count("sensor_quota") == 20
        assert len(reasons) == 40
        # threshold 1.0 before the marker (nothing is an alert), 0.0 after it
        times = sorted(a["window_start"] for a in alerts if a["tenant_id"] == "acme")
        assert len(times) == 20 and times[0].startswith("2026-01-01T00:00:20")
        assert {(a["tenant_id"], a["sensor_id"]) for a in alerts} == {("acme", "a")}


@pytest.mark.parametrize(
    "forge",
    ["unsigned", "wrong_key", "edited", "foreign_store", "no_registry"],
)
def test_forged_registry_markers_change_nothing(tmp_path: Path, forge: str) -> None:
    start = _registry(tmp_path / "t.yaml", "tenants: {acme: {}}\n")
    store, ref, digest = _store_reg(tmp_path, "tenants: {acme: {}, globex: {}}\n")
    marker = encode_registry_marker(digest, ref, KEY)
    if forge == "unsigned":
        body = json.loads(marker[6:])
        del body["sig"]
        marker = b"#ADCTL" + json.dumps(body).encode()
    elif forge == "wrong_key":
        marker = encode_registry_marker(digest, ref, b"another-key-0123456789")
    elif forge == "edited":
        marker = marker.replace(b'"version":"', b'"version":"0')
    elif forge == "foreign_store":
        other, oref, odigest = _store_reg(tmp_path / "x", "tenants: {acme: {}, globex: {}}\n")
        marker = encode_registry_marker(odigest, oref, KEY)
    rows = [marker] + [_rec("globex", "g", START_MS + i * 1000) for i in range(10)]
    alerts, dead = _run(rows, None if forge == "no_registry" else start, store)
    reasons = [d["reason"] for d in dead]
    assert reasons[0] == "bad_control"
    if forge == "no_registry":
        assert len(alerts) == 10  # no registry: every tenant is taken, as before
    else:
        assert reasons[1:] == ["unknown_tenant"] * 10 and not alerts


def _signal(tenant: str, sensor: str, n: int, shift: float) -> list[bytes]:
    rows = []
    for i in range(n):
        v = 10.0 + (i % 5) * 0.2 * shift + (30.0 if i % 97 == 50 else 0.0)
        rows.append(_rec(tenant, sensor, START_MS + i * 1000, v))
    return rows


def test_a_tenants_own_detector_gives_what_it_gives_alone(tmp_path: Path) -> None:
    params = {"window": 12, "min_periods": 4, "z_scale": 2.0}
    reg = _registry(
        tmp_path / "t.yaml",
        f"tenants:\n  acme: {{detector: mad, detector_params: {json.dumps(params)}}}\n"
        "  globex: {}\n",
    )
    plain = _registry(tmp_path / "plain.yaml", "tenants: {acme: {}, globex: {}}\n")
    a, g = _signal("acme", "p", 300, 1.0), _signal("globex", "p", 300, 2.0)
    both = [r for pair in zip(a, g, strict=True) for r in pair]
    mixed, _ = _run(both, reg, batch=9)
    alone_a, _ = _run(a, plain, batch=9, AD_DETECTOR_PARAMS=json.dumps(params))
    alone_g, _ = _run(g, plain, batch=9)
    assert [x for x in mixed if x["tenant_id"] == "acme"] == alone_a
    assert [x for x in mixed if x["tenant_id"] == "globex"] == alone_g
    assert alone_a != _run(a, plain, batch=9)[0]  # the parameters do change the scores


def test_a_registry_switch_changes_a_tenants_detector_at_its_position(tmp_path: Path) -> None:
    params = {"window": 12, "min_periods": 4, "z_scale": 2.0}
    start = _registry(tmp_path / "t.yaml", "tenants: {acme: {}}\n")
    store, ref, digest = _store_reg(
        tmp_path, f"tenants: {{acme: {{detector_params: {json.dumps(params)}}}}}\n"
    )
    rows = _signal("acme", "p", 300, 1.0)
    marked = rows[:120] + [encode_registry_marker(digest, ref, KEY)] + rows[120:]
    got, dead = _run(marked, start, store, batch=7)
    assert not dead
    before, _ = _run(rows[:120], start, store, batch=7)
    # after the marker: the new parameters, from a fresh detector state
    after, _ = _run(rows[120:], start, store, batch=7, AD_DETECTOR_PARAMS=json.dumps(params))
    assert got == before + after
    assert got != _run(rows, start, store, batch=7)[0]


def test_adctl_tenants_push_switches_a_flow_reading_a_file(tmp_path: Path) -> None:
    """The CLI stores the registry and appends its signed marker to the input file; a
    flow over the file applies it there (globex is unknown before, taken after)."""
    import os
    import subprocess
    import sys

    from tests.conftest import CONTROL_KEY, ROOT

    data = tmp_path / "in.jsonl"
    first = [_rec("globex", "g", START_MS + i * 1000) for i in range(5)]
    data.write_bytes(b"".join(r + b"\n" for r in first))
    (tmp_path / "next.yaml").write_text("tenants: {acme: {}, globex: {}}\n")
    start = _registry(tmp_path / "t.yaml", "tenants: {acme: {}}\n")
    store = f"file://{tmp_path}/store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}
    env.update(AD_CONTROL_KEY=CONTROL_KEY, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "control", "tenants", "push", "--model-store", store]
    cmd += ["--registry", str(tmp_path / "next.yaml"), "--input", data.as_uri()]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["registry_ref"].startswith(store + "/") and out["tenants"] == ["acme", "globex"]
    with data.open("ab") as fh:
        fh.writelines(_rec("globex", "g", START_MS + (5 + i) * 1000) + b"\n" for i in range(5))
    lines = data.read_bytes().splitlines()
    alerts, dead = _run(lines, start, store)
    assert [d["reason"] for d in dead] == ["unknown_tenant"] * 5
    assert len(alerts) == 5  # the five after the marker
    # without the key adctl refuses to sign
    env.pop("AD_CONTROL_KEY")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "AD_CONTROL_KEY" in res.stderr


@pytest.mark.parametrize(
    ("settings", "alone"),
    [
        ("{window: session, session_gap: 4s}", {"AD_WINDOW": "session", "AD_SESSION_GAP": "4s"}),
        ("{window_size: 20s}", {"AD_WINDOW_SIZE": "20s"}),
        (
            "{window: sliding, window_size: 30s, window_slide: 10s}",
            {"AD_WINDOW": "sliding", "AD_WINDOW_SIZE": "30s", "AD_WINDOW_SLIDE": "10s"},
        ),
    ],
)
def test_a_tenants_own_windows_give_what_they_give_alone(
    tmp_path: Path, settings: str, alone: dict[str, str]
) -> None:
    reg = _registry(tmp_path / "t.yaml", f"tenants:\n  acme: {settings}\n  globex: {{}}\n")
    plain = _registry(tmp_path / "plain.yaml", "tenants: {acme: {}, globex: {}}\n")
    a = _signal("acme", "p", 400, 1.0)
    a = [r for i, r in enumerate(a) if i % 11 not in (3, 4, 5, 6, 7)]  # gaps: sessions end
    g = _signal("globex", "p", 400, 2.0)
    both = [r for pair in zip(a, g, strict=False) for r in pair] + g[len(a) :]
    flow = {"AD_WINDOW": "tumbling", "AD_WINDOW_SIZE": "60s"}
    mixed, _ = _run(both, reg, batch=9, **flow)
    alone_a, _ = _run(a, plain, batch=9, **{**flow, **alone})
    alone_g, _ = _run(g, plain, batch=9, **flow)
    assert [x for x in mixed if x["tenant_id"] == "acme"] == alone_a
    assert [x for x in mixed if x["tenant_id"] == "globex"] == alone_g
    assert alone_a != _run(a, plain, batch=9, **flow)[0]


def test_a_registry_switch_changes_a_tenants_windows_at_its_position(tmp_path: Path) -> None:
    start = _registry(tmp_path / "t.yaml", "tenants: {acme: {}}\n")
    store, ref, digest = _store_reg(tmp_path, "tenants: {acme: {window_size: 20s}}\n")
    rows = _signal("acme", "p", 600, 1.0)
    marked = rows[:290] + [encode_registry_marker(digest, ref, KEY)] + rows[290:]
    flow = {"AD_WINDOW": "tumbling", "AD_WINDOW_SIZE": "60s"}
    got, dead = _run(marked, start, store, batch=7, **flow)
    assert not dead
    ends = [(x["window_start"][11:19], x["window_end"][11:19]) for x in got]
    # 60 s windows up to the marker (at 00:04:50; the open one closed there), 20 s after
    assert ("00:04:00", "00:05:00") in ends and ("00:04:40", "00:05:00") in ends
    assert ("00:05:00", "00:06:00") not in ends and ("00:05:00", "00:05:20") in ends
    assert ("00:03:40", "00:04:00") not in ends
    # the replay of a resumed run applies it at the same position: batching does not matter
    assert got == _run(marked, start, store, batch=50, **flow)[0]


def test_a_tenants_alerts_go_to_its_own_sink(tmp_path: Path) -> None:
    template = f"file://{tmp_path}/alerts-{{tenant}}.jsonl"
    reg = _registry(
        tmp_path / "t.yaml", f"tenants:\n  acme: {{alerts: '{template}'}}\n  globex: {{}}\n"
    )
    plain = _registry(tmp_path / "plain.yaml", "tenants: {acme: {}, globex: {}}\n")
    a, g = _signal("acme", "p", 200, 1.0), _signal("globex", "p", 200, 2.0)
    both = [r for pair in zip(a, g, strict=True) for r in pair]
    ours, _ = _run(both, reg, batch=9)
    routed = [json.loads(x) for x in (tmp_path / "alerts-acme.jsonl").read_text().splitlines()]
    assert routed == _run(a, plain, batch=9)[0] and len(routed) == 200
    assert ours == _run(g, plain, batch=9)[0]  # globex: the flow's own sink


def test_a_tenants_dead_letters_go_to_its_own_sink(tmp_path: Path) -> None:
    """Sensor-quota and late dead letters of acme go to its sink; globex's, undecodable records
    and unknown tenants to the flow's; together exactly the dead letters of a run
    without routing."""
    template = f"file://{tmp_path}/dead-{{tenant}}.jsonl"
    quota = "{max_sensors: 1}"
    reg = _registry(
        tmp_path / "t.yaml",
        f"tenants:\n  acme: {{quota: {quota}, dead_letters: '{template}'}}\n  globex: {{}}\n",
    )
    plain = _registry(
        tmp_path / "p.yaml", f"tenants:\n  acme: {{quota: {quota}}}\n  globex: {{}}\n"
    )
    rows = []
    for i in range(200):
        for t in ("acme", "globex"):
            rows.append(_rec(t, "p", START_MS + i * 500))
            if i % 50 == 49:  # 90 s behind the sensor's clock: late
                rows.append(_rec(t, "p", START_MS + i * 500 - 90_000))
        if i % 70 == 0:
            rows += [b"not json", _rec("evil", "p", START_MS), _rec("acme", "q", START_MS)]
    flow = {"AD_WINDOW": "tumbling", "AD_WINDOW_SIZE": "10s"}
    alerts, ours = _run(rows, reg, batch=11, **flow)
    routed = [json.loads(x) for x in (tmp_path / "dead-acme.jsonl").read_text().splitlines()]
    ref_alerts, ref_dead = _run(rows, plain, batch=11, **flow)
    assert alerts == ref_alerts
    by_id = {d["dlq_id"]: d for d in ref_dead}
    assert sorted(d["dlq_id"] for d in routed + ours) == sorted(by_id)
    assert {d["reason"] for d in routed} == {"sensor_quota", "late"}
    assert {d["reason"] for d in ours} == {"late", "undecodable", "unknown_tenant"}
    assert all(by_id[d["dlq_id"]] == d for d in routed + ours)


def test_quotas_with_key_groups_by_partition(tmp_path: Path) -> None:
    """As the Kafka source emits batches (MessageBatch naming the partition's group):
    the same dead letters and alerts with key groups by partition as by sensor."""
    from bytewax.testing import TestingSink, TestingSource, run_main

    from connectors.base import MessageBatch
    from flows.detector import build_flow

    reg = _registry(tmp_path / "t.yaml", "tenants: {acme: {quota: {rate: 2, max_sensors: 3}}}\n")
    rows = [_rec("acme", f"s{i % 5}", START_MS + (i // 4) * 1000) for i in range(400)]
    outs = []
    for key_by in ("sensor", "partition"):
        alerts: list = []
        dead: list = []
        raws = [RawRecord(r, "t", "0", str(i)) for i, r in enumerate(rows)]
        batches = [MessageBatch([r.value for r in b], b, "t", "t#0~7") for b in _chunks(raws, 9)]
        env = {
            "AD_WINDOW": "none",
            "AD_DETECTOR": "mad",
            "AD_EMIT": "all",
            "AD_KEY_BY": key_by,
            "AD_SOURCE": "kafka://127.0.0.1:9/t",  # not read: the testing source replaces it
            "AD_TENANTS": str(reg),
            "AD_QUOTA_PARTITIONS": "1",
        }
        run_main(
            build_flow(
                load_settings(env),
                source=TestingSource(batches),
                sink=TestingSink(alerts),
                dlq=TestingSink(dead),
            )
        )
        outs.append((sorted(r.value for _k, r in alerts), [r.value for _k, r in dead]))
    assert outs[0] == outs[1]
    reasons = {json.loads(v)["reason"] for v in outs[0][1]}
    assert reasons == {"quota_exceeded", "sensor_quota"}


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


class _Msg:
    """A client message type that does not pickle (as confluent_kafka's)."""

    def __init__(self, value: bytes) -> None:
        self.v = value

    def __reduce__(self) -> tuple:
        raise TypeError("not picklable")


def test_a_message_batch_crosses_processes_as_raw_records() -> None:
    """The partition-keyed decode step may run on another process than the source: a
    MessageBatch then pickles its messages as RawRecords."""
    import pickle

    from connectors.base import MessageBatch, as_raw, register_message_type

    register_message_type(_Msg, lambda m: RawRecord(m.v, "t", "3", "7"))
    batch = MessageBatch([b"x"], [_Msg(b"x")], "t", "t#3~1")
    back = pickle.loads(pickle.dumps(batch))
    assert type(back) is MessageBatch and back.group == "t#3~1" and back.values == [b"x"]
    assert [as_raw(i) for i in back.items] == [RawRecord(b"x", "t", "3", "7")]
