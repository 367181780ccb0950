"""Helpers to run the real flow as processes, crash it, and build test input.

Used by the whole-flow tests of every connector: ``python -m bytewax.run flows.detector``
with a recovery store, killed with SIGKILL at random points and restarted.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control.launch import FlowLaunch, clean_env
from control.supervisor import init_recovery as _init_recovery
from tests.conftest import CONTROL_KEY

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

#: One bad record per class, with the dead-letter reason it must get.
#: a 2.4 KB JSON line nested 1,100 levels deep (once crashed the decoder for good)
POISON = (
    b'{"sensor_id":"a","timestamp":1767225660000,"value":1,"x":' + b"[" * 1100 + b"]" * 1100 + b"}"
)

BAD_RECORDS: list[tuple[bytes, str]] = [
    (b"\xff\xfe not json at all", "undecodable"),
    (b"[1, 2, 3]", "schema_mismatch"),
    (b'{"timestamp": 1767225600000, "value": 1.0}', "missing_field"),
    (b'{"sensor_id": "s", "timestamp": 1767225600000}', "missing_field"),
    (b'{"sensor_id": 42, "timestamp": 1767225600000, "value": 1.0}', "bad_type"),
    (b'{"sensor_id": "s", "timestamp": 1767225600000, "value": "high"}', "bad_type"),
    (b'{"sensor_id": "s", "timestamp": 1767225600000, "value": NaN}', "non_finite"),
    (b'{"sensor_id": "s", "timestamp": 1767225600000, "value": 1e999}', "non_finite"),
    (b'{"sensor_id": "s", "timestamp": "yesterday", "value": 1.0}', "bad_timestamp"),
    (b'{"sensor_id": "s", "timestamp": -5, "value": 1.0}', "bad_timestamp"),
    (b'{"sensor_id": "s", "timestamp": "2026-01-01T00:00:00", "value": 1.0}', "bad_timestamp"),
    (b'{"sensor_id": "s", "timestamp": 0, "value": 1.0}', "bad_timestamp"),  # a placeholder
    (POISON, "undecodable"),
]


KEY = CONTROL_KEY.encode()


def signed_marker(version: str, ref: str = "", detector: str = "mad") -> bytes:
    """A model-switch marker signed with the tests' control key."""
    from schemas.markers import encode_marker

    return encode_marker(detector, version, ref, KEY)


def with_bad_records(good: int = 100, at: int = 50) -> list[bytes]:
    """``good`` readings of one sensor a minute apart, with one record of every bad
    class (``BAD_RECORDS``) inserted after the first ``at``."""
    rows = [
        json.dumps(
            {
                "sensor_id": "pump-1",
                "timestamp": START_MS + i * 60_000,
                "value": 10.0 + (i % 7) * 0.1,
            }
        ).encode()
        for i in range(good)
    ]
    return rows[:at] + [b for b, _r in BAD_RECORDS] + rows[at:]


def flow_env(**overrides: str) -> dict[str, str]:
    """The environment for a flow subprocess: no stray AD_* settings, the tests' control
    key (as a deployment shares one between adctl and its flows), plus overrides."""
    return clean_env(ROOT, **{"AD_CONTROL_KEY": CONTROL_KEY, **overrides})


def init_recovery(path: Path, parts: int = 2) -> Path:
    _init_recovery(path, parts)
    return path


class FlowProcs:
    """One flow execution: ``processes`` OS processes with ``workers`` workers each."""

    def __init__(
        self,
        env: dict[str, str],
        recovery: Path | None,
        workers: int = 1,
        processes: int = 1,
        log: Path | None = None,
        snapshot_s: int = 1,
    ) -> None:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        launch = FlowLaunch(
            workers=workers,
            processes=processes,
            recovery_dir=str(recovery) if recovery is not None else None,
            snapshot_s=snapshot_s,
            python=PY,
        )
        self.procs = launch.spawn(env, cwd=ROOT, stdout=out)

    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait()

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return [p.returncode for p in self.procs]


def run_to_completion(
    env: dict[str, str],
    recovery: Path | None,
    workers: int = 1,
    processes: int = 1,
    log: Path | None = None,
    timeout: float = 300,
) -> None:
    procs = FlowProcs(env, recovery, workers, processes, log)
    codes = procs.wait(timeout)
    if any(codes):
        tail = log.read_text()[-4000:] if log and log.exists() else ""
        raise AssertionError(f"flow exited with {codes}\n{tail}")


def crash_run(
    env: dict[str, str],
    recovery: Path,
    *,
    kills: int = 5,
    workers: int = 1,
    processes: int = 1,
    log: Path | None = None,
    seed: int = 0,
    min_s: float = 1.0,
    max_s: float = 4.0,
    timeout: float = 600,
    between: Callable[[int], None] | None = None,
) -> int:
    """Run, SIGKILL at random moments ``kills`` times (only counting kills that hit a
    running flow), then run to completion. Returns the number of kills made."""
    rng = random.Random(seed)
    made = 0
    attempts = 0
    while made < kills and attempts < kills * 4:
        attempts += 1
        procs = FlowProcs(env, recovery, workers, processes, log)
        time.sleep(rng.uniform(min_s, max_s))
        if procs.running():
            procs.kill()
            made += 1
            if between is not None:
                between(made)
        else:
            codes = procs.wait(10)
            if any(codes):
                tail = log.read_text()[-4000:] if log and log.exists() else ""
                raise AssertionError(f"flow failed with {codes} before being killed\n{tail}")
            break  # finished before the kill: nothing left to crash
    run_to_completion(env, recovery, workers, processes, log, timeout)
    return made


def make_readings(
    sensors: int = 50,
    per_sensor: int = 2000,
    bad_every: int = 100,
    seed: int = 1,
    step_ms: int = 10_000,
) -> list[tuple[str, bytes]]:
    """Keyed JSON readings, time-ordered per sensor, with injected spikes and level
    shifts and one bad record of a rotating class every ``bad_every`` records."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    anomalies = {s: rng.sample(range(200, per_sensor), 3) for s in range(sensors)}
    shift_at = {s: rng.randrange(per_sensor // 2, per_sensor) for s in range(0, sensors, 5)}
    bad_i = 0
    for i in range(per_sensor):
        for s in range(sensors):
            v = 20 + s + 5 * math.sin(i / 90.0 + s) + rng.gauss(0, 0.5)
            if i in anomalies[s]:
                v += rng.choice((-1, 1)) * 30
            if s in shift_at and i >= shift_at[s]:
                v += 15
            sid = f"sensor-{s:03d}"
            out.append(
                (
                    sid,
                    json.dumps(
                        {
                            "sensor_id": sid,
                            "timestamp": START_MS + i * step_ms,
                            "value": round(v, 4),
                            "tenant_id": "t1",
                        }
                    ).encode(),
                )
            )
            if len(out) % bad_every == 0:
                raw, _reason = BAD_RECORDS[bad_i % len(BAD_RECORDS)]
                bad_i += 1
                out.append((sid, raw))
    return out


def crash_env(source: str, sink: str, dlq: str, flow_id: str, **extra: str) -> dict[str, str]:
    """The settings every whole-flow crash test uses: every window emitted."""
    return flow_env(
        AD_SOURCE=source,
        AD_SINK=sink,
        AD_DLQ=dlq,
        AD_FORMAT="json",
        AD_EMIT="all",
        AD_WINDOW="tumbling",
        AD_WINDOW_SIZE="60s",
        AD_FLOW_ID=flow_id,
        **extra,
    )


def by_id(rows: list[dict[str, Any]], id_field: str) -> dict[str, dict[str, Any]]:
    """Rows by id, failing on duplicates; ``_``-prefixed metadata and ``flow_id`` (which
    differs between the runs compared) are dropped."""
    counts = Counter(r[id_field] for r in rows)
    dups = {k: n for k, n in counts.items() if n > 1}
    assert not dups, f"{len(dups)} duplicated {id_field}s, e.g. {list(dups.items())[:3]}"
    return {
        r[id_field]: {k: v for k, v in r.items() if not k.startswith("_") and k != "flow_id"}
        for r in rows
    }


def assert_same_output(ref: list[dict], got: list[dict], id_field: str) -> None:
    """``got`` has exactly ``ref``'s records: same ids, same contents, no duplicates."""
    a, b = by_id(ref, id_field), by_id(got, id_field)
    missing, extra = a.keys() - b.keys(), b.keys() - a.keys()
    assert not missing and not extra, f"{len(missing)} lost, {len(extra)} unexpected"
    diff = [
        (
            k,
            {
                f: (a[k].get(f), b[k].get(f))
                for f in a[k].keys() | b[k].keys()
                if a[k].get(f) != b[k].get(f)
            },
        )
        for k in a
        if a[k] != b[k]
    ]
    assert not diff, f"{len(diff)} records differ, e.g. {diff[:2]}"
