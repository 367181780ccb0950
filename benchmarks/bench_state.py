"""State scale of the flow's stateful step, in one process (no Kafka, no Bytewax runtime).

``python -m benchmarks.bench_state KEYS DETECTOR MODE`` builds the flow's 64 key groups
(``flows.logic.KeyGroupLogic``, product default settings) holding KEYS sensors, each
with one open window and a *mature* detector state (a copy of the state after scoring
300 windows of a noisy series, so histograms are populated as in production), then
measures resident memory per key, the snapshot (``KeyGroupLogic.snapshot`` of every key
group: bytes and seconds), writing those snapshots to SQLite as Bytewax's recovery
store does, and restoring them. Prints one JSON line.

MODE ``live``: every sensor was touched and scored since the last snapshot (held as
objects with a live detector state; the snapshot packs and pickles each: the worst
case, and what every snapshot cost before states were packed). ``packed``: no sensor
was touched since the last snapshot (each held as its pickled bytes with a packed
detector state, as ``KeyGroupLogic.snapshot`` leaves them: the steady state of keys
idle for an epoch).
"""

from __future__ import annotations

import copy
import gc
import json
import pickle
import sqlite3
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.bench_kafka import START_MS, sensor_id
from connectors.base import RawRecord
from flows.logic import KeyGroupLogic, Models, PackedState, key_group, pack_state
from flows.records import Reading
from flows.settings import Settings


def mature_states(detector: str, models: Models, count: int = 8) -> list[Any]:
    det = models.get("builtin", "")
    out = []
    rng = np.random.default_rng(3)
    for i in range(count):
        x = 20 + i + 5 * np.sin(np.arange(300) / 30.0) + rng.normal(0, 0.5, 300)
        t = (START_MS / 1000.0) + np.arange(300) * 60.0
        st, _ = det.score(det.init_state(), x, t)
        out.append(st)
    return out


def component_bytes(state: Any) -> dict[str, int]:
    """Pickled bytes of each top-level component of a dict state."""
    if not isinstance(state, dict):
        return {"state": len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))}
    return {k: len(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL)) for k, v in state.items()}


def measure(keys: int, detector: str, mode: str = "live", groups: int = 64) -> dict[str, Any]:
    settings = Settings(detector=detector, key_groups=groups)
    models = Models(detector, {})
    templates = mature_states(detector, models)
    packed = [pack_state(t) for t in templates]
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    logics = {str(g): KeyGroupLogic(settings, models, None) for g in range(groups)}
    raw = RawRecord(b"", "kafka:bench", "0", "0", None)
    chunk = 20000
    t0 = time.perf_counter()
    for lo in range(0, keys, chunk):
        by_group: dict[str, list[Reading]] = {}
        for i in range(lo, min(keys, lo + chunk)):
            sid = sensor_id(i)
            by_group.setdefault(key_group(sid, groups), []).append(
                Reading(sid, START_MS + 1000, 20.0, "t1", None, raw))
        for g, sub in by_group.items():
            logic = logics[g]
            logic.on_batch([sub])
            for r in sub:  # a mature detector state per sensor (its own copy)
                j = zlib.crc32(r.sensor_id.encode()) % 8
                sensor = logic.sensors[r.sensor_id]
                if mode == "live":  # as KeyGroupLogic._score_one leaves it
                    sensor.det = copy.deepcopy(templates[j])  # type: ignore[union-attr]
                else:  # as KeyGroupLogic.snapshot leaves it (packed, then pickled)
                    sensor.det = PackedState(packed[j])  # type: ignore[union-attr]
            if mode != "live":
                logic._freeze()
    fill_s = time.perf_counter() - t0
    gc.collect()
    rss1 = proc.memory_info().rss
    snap_s = 0.0
    restore_s = 0.0
    store_s = 0.0
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        db = sqlite3.connect(str(Path(tmp) / "snaps.sqlite3"))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE snaps (step TEXT, key TEXT, epoch INT, ser BLOB)")
        for g, logic in logics.items():
            t = time.perf_counter()
            snap = logic.snapshot()
            snap_s += time.perf_counter() - t
            total += len(snap)
            t = time.perf_counter()
            with db:
                db.execute("INSERT INTO snaps VALUES (?, ?, ?, ?)", ("detect", g, 1, snap))
            store_s += time.perf_counter() - t
            t = time.perf_counter()
            restored = KeyGroupLogic(settings, models, snap)
            restore_s += time.perf_counter() - t
            del restored, snap
        db.close()
    gc.collect()
    rss2 = proc.memory_info().rss
    st = templates[0]
    return {
        "keys": keys,
        "detector": detector,
        "mode": mode,
        "rss_bytes_per_key": (rss1 - rss0) / keys,
        "rss_total_bytes": rss1,
        "rss_bytes_per_key_after_snapshot": (rss2 - rss0) / keys,
        "snapshot_bytes": total,
        "snapshot_bytes_per_key": total / keys,
        "snapshot_s": snap_s,
        "store_s": store_s,
        "restore_s": restore_s,
        "fill_s": fill_s,
        "det_state_components": component_bytes(st),
        "det_state_pickled": len(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)),
        "det_state_packed": len(packed[0]),
    }


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), sys.argv[2], sys.argv[3])))
