"""State scale of the flow's stateful step, in one process (no Kafka, no Bytewax runtime).

``python -m benchmarks.bench_state KEYS DETECTOR MODE`` builds the flow's 64 key groups
(``flows.logic.KeyGroupLogic``, product default settings) holding KEYS sensors, each
with one open window and a *mature* detector state (a copy of the state after scoring
300 windows of a noisy series, so histograms are populated as in production), then
measures resident memory per key and the snapshots as the flow takes them with a
recovery directory (incremental, ``state.snapshots``): a *full* snapshot (every key
group writes a base segment holding all its sensors: the first snapshot, and each
compaction), a *delta* after 1% of the sensors changed (what a steady epoch costs), the
manifests written to SQLite as Bytewax's recovery store does, and restoring every key
group from its segments. Prints one JSON line.

MODE ``live``: every sensor was touched and scored since the last snapshot (held as
objects, their detector states packed as ``KeyGroupLogic._score`` leaves them; the
snapshot pickles each: the worst case). ``packed``: no sensor was touched since the
last snapshot (each held as its pickled bytes, as ``KeyGroupLogic.snapshot`` leaves
them: the steady state of keys idle for an epoch).
"""

from __future__ import annotations

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
from flows.logic import KeyGroupLogic, Models, PackedState, key_group
from flows.records import Reading, SubBatch
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


def _touch(logic: KeyGroupLogic, g: str, sids: list[str], raw: RawRecord) -> None:
    """Two readings per sensor, so its clock starts (a first reading alone is held)."""
    for ts in (START_MS + 1000, START_MS + 2000):
        logic.on_batch([SubBatch.of(g, [Reading(sid, ts, 20.0, None, None, raw) for sid in sids])])


def measure(keys: int, detector: str, mode: str = "live", groups: int = 64) -> dict[str, Any]:
    settings = Settings(detector=detector, key_groups=groups)
    models = Models(detector, {})
    det = models.get("builtin", "")
    templates = mature_states(detector, models)
    packed = [det.pack_state(t) for t in templates]
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    tmp = tempfile.TemporaryDirectory()
    snap_dir = Path(tmp.name) / "ad-state"
    logics = {str(g): KeyGroupLogic(settings, models, None, snap_dir) for g in range(groups)}
    raw = RawRecord(b"", "kafka:bench", "0", "0", None)
    chunk = 20000
    t0 = time.perf_counter()
    for lo in range(0, keys, chunk):
        by_group: dict[str, list[str]] = {}
        for i in range(lo, min(keys, lo + chunk)):
            sid = sensor_id(i)
            by_group.setdefault(key_group(sid, groups), []).append(sid)
        for g, sids in by_group.items():
            logic = logics[g]
            _touch(logic, g, sids, raw)
            for sid in sids:  # a mature detector state per sensor (its own copy)
                j = zlib.crc32(sid.encode()) % 8
                sensor = logic.sensors[sid]
                # packed, as KeyGroupLogic._score leaves it (its own copy of the bytes)
                sensor.det = PackedState(bytes(bytearray(packed[j])))  # type: ignore[union-attr]
            if mode != "live":  # pickled, as KeyGroupLogic.snapshot leaves it
                logic._freeze()
    fill_s = time.perf_counter() - t0
    gc.collect()
    rss1 = proc.memory_info().rss
    snap_s = delta_s = restore_s = store_s = 0.0
    manifests: dict[str, bytes] = {}
    db = sqlite3.connect(str(Path(tmp.name) / "snaps.sqlite3"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE snaps (step TEXT, key TEXT, epoch INT, ser BLOB)")

    def store(epoch: int) -> float:
        t = time.perf_counter()
        with db:
            db.executemany(
                "INSERT INTO snaps VALUES (?, ?, ?, ?)",
                [("detect", g, epoch, m) for g, m in manifests.items()],
            )
        return time.perf_counter() - t

    for g, logic in logics.items():  # full: every group writes a base
        t = time.perf_counter()
        manifests[g] = logic.snapshot()
        snap_s += time.perf_counter() - t
    store_s += store(1)
    full_bytes = _dir_bytes(snap_dir)
    changed = [sensor_id(i) for i in range(0, keys, 100)]  # 1% of the sensors
    by_group = {}
    for sid in changed:
        by_group.setdefault(key_group(sid, groups), []).append(sid)
    for g, sids in by_group.items():
        _touch(logics[g], g, sids, raw)
    for g, logic in logics.items():
        t = time.perf_counter()
        manifests[g] = logic.snapshot()
        delta_s += time.perf_counter() - t
    store_s += store(2)
    delta_bytes = _dir_bytes(snap_dir) - full_bytes
    for g in list(logics):
        t = time.perf_counter()
        restored = KeyGroupLogic(settings, models, manifests[g], snap_dir)
        restore_s += time.perf_counter() - t
        assert len(restored.sensors) == len(logics[g].sensors)
        del restored
    db.close()
    gc.collect()
    rss2 = proc.memory_info().rss
    tmp.cleanup()
    st = templates[0]
    return {
        "keys": keys,
        "detector": detector,
        "mode": mode,
        "rss_bytes_per_key": (rss1 - rss0) / keys,
        "rss_total_bytes": rss1,
        "rss_bytes_per_key_after_snapshot": (rss2 - rss0) / keys,
        "snapshot_bytes": full_bytes,
        "snapshot_bytes_per_key": full_bytes / keys,
        "snapshot_s": snap_s,
        "delta_keys": len(changed),
        "delta_bytes": delta_bytes,
        "delta_s": delta_s,
        "manifest_bytes": sum(len(m) for m in manifests.values()),
        "store_s": store_s,
        "restore_s": restore_s,
        "fill_s": fill_s,
        "det_state_components": component_bytes(st),
        "det_state_pickled": len(pickle.dumps(st, protocol=pickle.HIGHEST_PROTOCOL)),
        "det_state_packed": len(packed[0]),
    }


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.seg"))


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), sys.argv[2], sys.argv[3])))
