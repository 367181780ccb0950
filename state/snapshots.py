"""Incremental key-group snapshots: only what changed since the last snapshot is written.

Bytewax snapshots a key group whole whenever anything in it changed. With uniform
traffic every epoch touches every key group, so every epoch would rewrite the entire
state (which grows with the number of sensors) into the recovery store, and a restart would read it
back and rewrite it again each epoch of the catch-up.

Instead each key group keeps its sensors in a chain of segment files next to the
recovery partitions (``<recovery dir>/ad-state/kg-<group>/``): a *base* holding every
sensor, then *deltas* holding only the sensors changed in one epoch. The snapshot Bytewax
stores is a small :class:`Manifest` naming that chain, so it is written atomically with
the epoch's other state and a resume reads exactly the chain of the resumed epoch.

Crash safety, in order: a segment is written to a temporary name, flushed (``fsync``
unless ``AD_SNAPSHOT_FSYNC=false``) and renamed before its manifest is returned to Bytewax;
segment names are unique per process start, so a replayed epoch never overwrites a
segment an older manifest refers to; segments from epochs that never committed are
never referenced. When the deltas outgrow the base, the next snapshot writes a new base
(compaction); files belonging to neither the current chain nor the previous
``keep`` chains are deleted then, so the snapshots Bytewax may still resume from (the
last committed epoch) always find their files. On disk a key group takes at most about
four times its state: the previous chain, and the current one (a base plus deltas that
add up to at most the base). A backup is the SQLite partitions (online backup) and then
the segment files (immutable; copy ``ad-state/`` right after the SQLite backup).
"""

from __future__ import annotations

import os
import pickle
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.recovery import recovery_dir

__all__ = ["Manifest", "SegmentStore", "SnapshotError", "resolve_snapshot_dir"]

_SUFFIX = ".seg"


class SnapshotError(RuntimeError):
    """A manifest names a segment that is missing or unreadable."""


@dataclass(frozen=True)
class Manifest:
    """The snapshot of one key group as Bytewax stores it: the segment chain (base
    first) and the key group's small shared state (model switches).
    """

    group: str
    segments: tuple[str, ...]
    base_bytes: int
    delta_bytes: int
    extra: Any = None


@dataclass
class SegmentStore:
    """Segment files of one key group under ``root``.

    ``compact_ratio``: write a new base once the deltas add up to more than this times
    the base (and at least ``min_compact_bytes``). ``keep``: older chains whose files
    are kept after a compaction.
    """

    root: Path
    fsync: bool = True
    compact_ratio: float = 1.0
    min_compact_bytes: int = 1 << 20
    keep: int = 1
    _nonce: str = field(default_factory=lambda: secrets.token_hex(4))
    _seq: int = 0
    _chains: list[tuple[str, ...]] = field(default_factory=list)

    def load(self, manifest: Manifest) -> dict[str, bytes]:
        """The sensors of ``manifest``: its base updated by each delta in order."""
        sensors: dict[str, bytes] = {}
        for name in manifest.segments:
            try:
                data = (self.root / name).read_bytes()
            except OSError as exc:
                raise SnapshotError(
                    f"snapshot segment {self.root / name} is missing: the recovery "
                    f"directory must be restored together with its ad-state/ folder "
                    f"({exc})"
                ) from exc
            sensors.update(pickle.loads(data))  # noqa: S301 - segments this store wrote
        self._chains = [manifest.segments]
        return sensors

    def save(
        self,
        group: str,
        prev: Manifest | None,
        changed: dict[str, bytes],
        everything: dict[str, Any],
        extra: Any,
    ) -> Manifest:
        """Write the changes since ``prev`` (or a new base) and return the new manifest.

        ``everything`` is only read when a base is written: the key group's whole
        sensor dict, every value already serialised (``bytes``).
        """
        base = prev is None or (
            prev.delta_bytes + _estimate(changed)
            > max(self.compact_ratio * prev.base_bytes, self.min_compact_bytes)
        )
        if base:
            name, size = self._write(everything, "b")
            segments: tuple[str, ...] = (name,)
            manifest = Manifest(group, segments, size, 0, extra)
            self._chains.append(segments)
            self._collect()
            return manifest
        assert prev is not None  # noqa: S101 - narrowing: prev is None takes the branch above
        if changed:
            name, size = self._write(changed, "d")
            segments = (*prev.segments, name)
        else:
            size, segments = 0, prev.segments
        if self._chains:
            self._chains[-1] = segments
        return Manifest(group, segments, prev.base_bytes, prev.delta_bytes + size, extra)

    # -- internals -------------------------------------------------------------------
    def _write(self, sensors: dict[str, Any], kind: str) -> tuple[str, int]:
        """Write one segment; its file name and size."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"{kind}-{self._nonce}-{self._seq:09d}{_SUFFIX}"
        data = pickle.dumps(sensors, protocol=pickle.HIGHEST_PROTOCOL)
        tmp = self.root / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.root / name)
        if self.fsync:
            _fsync_dir(self.root)
        return name, len(data)

    def _collect(self) -> None:
        """Delete segment files in neither the current chain nor the ``keep`` before it."""
        self._chains = self._chains[-(self.keep + 1) :]
        live = {n for chain in self._chains for n in chain}
        for path in self.root.glob("*" + _SUFFIX + "*"):
            if path.name not in live:
                path.unlink(missing_ok=True)


def resolve_snapshot_dir(
    setting: str, argv: list[str] | None = None, env: dict[str, str] | None = None
) -> Path | None:
    """The directory for segment files, or ``None`` for inline (whole-group) snapshots.

    ``setting`` is ``AD_SNAPSHOT_DIR``: ``"inline"``; a directory; or ``""`` for
    ``ad-state/`` inside Bytewax's recovery directory (``-r``/``--recovery-directory``
    or ``BYTEWAX_RECOVERY_DIRECTORY``), inline when the flow runs without recovery.
    """
    if setting == "inline":
        return None
    if setting:
        return Path(setting)
    rec = recovery_dir(argv, env)
    return rec / "ad-state" if rec else None


def _estimate(changed: dict[str, Any]) -> int:
    return sum(len(v) + len(k) + 8 for k, v in changed.items())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
