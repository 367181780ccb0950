"""Incremental key-group snapshots: segment chains, compaction, garbage collection."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from state.snapshots import Manifest, SegmentStore, SnapshotError, resolve_snapshot_dir


def _blob(i: int, gen: int) -> bytes:
    return f"sensor-{i}-gen-{gen}".encode() * 20


def test_chain_holds_the_state_of_each_snapshot(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, min_compact_bytes=1 << 30)  # never compact
    sensors = {f"s{i}": _blob(i, 0) for i in range(100)}
    m0 = store.save("7", None, dict(sensors), sensors, {"p/0": ("v1", "")})
    assert len(m0.segments) == 1 and m0.delta_bytes == 0 and m0.group == "7"
    history = [(m0, dict(sensors))]
    for gen in range(1, 6):
        changed = {f"s{i}": _blob(i, gen) for i in range(gen * 10, gen * 10 + 5)}
        changed[f"new{gen}"] = _blob(-gen, gen)
        sensors.update(changed)
        m = store.save("7", history[-1][0], changed, sensors, None)
        assert len(m.segments) == gen + 1 and m.base_bytes == m0.base_bytes
        history.append((m, dict(sensors)))
    # every manifest still loads exactly the state it was taken at (a stale resume)
    for m, expected in history:
        assert SegmentStore(tmp_path).load(m) == expected
    assert history[0][0].extra == {"p/0": ("v1", "")}
    # an unchanged snapshot writes nothing
    m = store.save("7", history[-1][0], {}, sensors, None)
    assert m.segments == history[-1][0].segments
    # only the small manifest goes to Bytewax's store
    assert len(pickle.dumps(m)) < 1000


def test_compaction_writes_a_base_and_collects_old_chains(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path, min_compact_bytes=0, compact_ratio=1.0, keep=1)
    sensors = {f"s{i}": _blob(i, 0) for i in range(50)}
    m = store.save("0", None, dict(sensors), sensors, None)
    manifests = [m]
    for gen in range(1, 12):
        changed = {f"s{i}": _blob(i, gen) for i in range(0, 50, 2)}  # half of them
        sensors.update(changed)
        m = store.save("0", m, changed, sensors, None)
        manifests.append(m)
        assert SegmentStore(tmp_path).load(m) == sensors
    bases = [m for m in manifests if m.delta_bytes == 0]
    assert len(bases) >= 4  # deltas of half the state: a new base every ~2 snapshots
    # files: the current chain and the one before it, nothing else
    on_disk = {p.name for p in tmp_path.iterdir()}
    assert set(manifests[-1].segments) <= on_disk
    prev_chain = next(
        m.segments for m in reversed(manifests) if m.segments[0] != manifests[-1].segments[0]
    )
    assert on_disk == set(manifests[-1].segments) | set(prev_chain)
    with pytest.raises(SnapshotError, match="missing"):
        SegmentStore(tmp_path).load(manifests[0])


def test_resumed_store_keeps_the_resumed_chain_and_drops_orphans(tmp_path: Path) -> None:
    first = SegmentStore(tmp_path, min_compact_bytes=1 << 30)
    sensors = {"a": b"1", "b": b"2"}
    m1 = first.save("3", None, dict(sensors), sensors, None)
    orphan = first.save("3", m1, {"a": b"never committed"}, {**sensors, "a": b"x"}, None)
    # "crash": the epoch of `orphan` never committed; resume from m1 in a new process
    second = SegmentStore(tmp_path, min_compact_bytes=0)
    assert second.load(m1) == sensors
    m2 = second.save("3", m1, {"b": b"3" * 100}, {"a": b"1", "b": b"3" * 100}, None)
    assert m2.delta_bytes == 0  # compacted (min 0)
    names = {p.name for p in tmp_path.iterdir()}
    assert set(m1.segments) <= names and set(m2.segments) <= names
    assert orphan.segments[-1] not in names  # garbage of the crashed process is gone
    assert not any(n.endswith(".tmp") for n in names)


def test_fsync_off_still_writes_durably_named_files(tmp_path: Path) -> None:
    store = SegmentStore(tmp_path / "deep" / "kg-1", fsync=False)
    m = store.save("1", None, {"a": b"x"}, {"a": b"x"}, ("sw",))
    assert isinstance(m, Manifest) and SegmentStore(tmp_path / "deep" / "kg-1").load(m)


def test_resolve_snapshot_dir() -> None:
    assert resolve_snapshot_dir("inline", [], {}) is None
    assert resolve_snapshot_dir("/x/y", [], {}) == Path("/x/y")
    assert resolve_snapshot_dir("", ["flows.detector"], {}) is None  # no recovery: inline
    argv = ["bytewax.run", "flows.detector", "-r", "/rec", "-s", "1"]
    assert resolve_snapshot_dir("", argv, {}) == Path("/rec/ad-state")
    assert resolve_snapshot_dir("", ["--recovery-directory=/r2"], {}) == Path("/r2/ad-state")
    assert resolve_snapshot_dir("", ["-r/r3"], {}) == Path("/r3/ad-state")
    env = {"BYTEWAX_RECOVERY_DIRECTORY": "/env"}
    assert resolve_snapshot_dir("", [], env) == Path("/env/ad-state")
