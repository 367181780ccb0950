"""Batch detection: the flow's own windows, detector and alerts over history.

History (``control.history_columns.Readings``) is split into ``partitions`` by sensor
(``flows.records.key_group``: crc32 of the state key, the flow's own key-group hash),
each partition's readings grouped by sensor in input order (stable), as the flow sees
them (or sorted by event time, ``by_time``). A task runs one partition through
``flows.logic.KeyGroupLogic``, the very object the streaming flow's stateful step runs,
then closes every window at the end of input (``on_eof``, as the flow does at the end
of a finite source). So the alerts, their bodies and their ``alert_id`` are the flow's,
and so are the dead letters of readings its clock rules refuse (``late``, ``future``:
a task names the reading by its row; the driver makes the flow's dead letter from the
row's raw record). With tumbling windows, sensors whose readings need no clock rule
take a columnar path to the same output (:func:`detect_partition`).

Results are cached by a content hash of the partition's readings plus the detection
settings and the detection code (:func:`config_digest`), and the model with
``--model``: re-running over unchanged history recomputes nothing.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from connectors.base import RawRecord, register_message_type
from control.history_columns import Readings
from flows.records import Columns, SubBatch, key_group
from flows.settings import Settings

if TYPE_CHECKING:
    from flows.logic import KeyGroupLogic

__all__ = [
    "DetectTask",
    "PartResult",
    "Partition",
    "ResultCache",
    "config_digest",
    "detect_partition",
    "detect_settings",
    "split_partitions",
]

#: records per ``on_batch`` call inside a task (bounds the memory of the columns)
CHUNK = 65_536
ROOT = Path(__file__).resolve().parents[1]
#: the flow modules whose code decides a partition's alerts (part of the cache key)
FLOW_CODE = (
    "flows/windows.py",
    "flows/records.py",
    "flows/sensor_state.py",
    "flows/models.py",
    "flows/logic.py",
)


class RowRef(int):
    """A reading's row in its partition, standing in for the RawRecord the flow keeps
    per reading; made into one only for a dead letter (a reading the flow's clock rules
    refuse).
    """

    __slots__ = ()


register_message_type(RowRef, lambda r: RawRecord(None, "adctl-detect", "history", str(int(r))))
#: the origin (source/partition) of every RowRef, where a model switch applies
ORIGIN = "adctl-detect/history"


@dataclass
class Partition:
    """One partition's readings, sorted by sensor then event time (stable)."""

    index: int
    names: list[str]  # sensor ids of this partition
    codes: np.ndarray  # int32 index into names, per reading
    ts: np.ndarray  # int64 epoch ms
    vals: np.ndarray  # float64
    tenants: np.ndarray  # object: str | None (empty: no reading has a tenant)
    rows: np.ndarray  # int64: each reading's index into the raw records (empty: none)
    digest: str = ""

    def filled(self) -> Partition:
        """This partition with its empty tenant and row columns filled in (None, -1)."""
        n = len(self.ts)
        if len(self.tenants) != n:
            self.tenants = np.full(n, None, dtype=object)
        if len(self.rows) != n:
            self.rows = np.full(n, -1, dtype=np.int64)
        return self

    def __len__(self) -> int:
        return len(self.ts)


@dataclass
class DetectTask:
    """What a task needs: the partition, the flow settings, and its cache key."""

    part: Partition
    settings: Settings
    key: str
    fail_once: str | None = None  # fault injection: fail the first attempt (tests)
    #: (version, model ref): score with this stored model, as the flow does after a
    #: model switch at the start of its input
    model: tuple[str, str] | None = None
    #: tumbling windows of clean sensors as columns (False: every reading through
    #: ``on_batch``; the tests compare both)
    columnar: bool = True
    #: the tenant registry (``AD_TENANTS``): a tenant's threshold applies to its sensors
    registry: Any = None


@dataclass
class PartResult:
    """A partition's output: alerts as ``(sensor_id, alert_id, JSON body)`` in sensor
    then window order, dead letters as JSON bodies, and counters.
    """

    index: int
    key: str
    records: int
    alerts: list[tuple[str, str, bytes]]
    dead_letters: list[bytes] = field(default_factory=list)
    cached: bool = False


def detect_settings(settings: Settings, **overrides: Any) -> Settings:
    """The flow settings as detection uses them: key groups by sensor, no snapshots, and
    no reordering wait (detection sorts each sensor's readings by event time itself).
    """
    return replace(settings, key_by="sensor", metrics_port=0, reorder_wait=0.0, **overrides)


def _code_digest() -> str:
    h = hashlib.sha256()
    for rel in FLOW_CODE:
        h.update((ROOT / rel).read_bytes())
    for p in sorted((ROOT / "detectors").glob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()


def config_digest(settings: Settings) -> str:
    """Hash of everything besides the input that decides a partition's output."""
    from state.model_store import canonical_json

    spec = {
        "window": settings.window,
        "window_size": settings.window_size,
        "window_slide": settings.window_slide,
        "session_gap": settings.session_gap,
        "allowed_lateness": settings.allowed_lateness,
        "max_future": settings.max_future,
        "detector": settings.detector,
        "detector_params": settings.detector_params,
        "threshold": settings.threshold,
        "emit": settings.emit,
        "code": _code_digest(),
    }
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()


def split_partitions(r: Readings, partitions: int, by_time: bool = False) -> Iterator[Partition]:
    """Readings split by ``key_group(sensor)`` into ``partitions``, each grouped by
    sensor (stable: each sensor's readings keep their input order, as the flow sees
    them; with ``by_time``, sorted by event time instead), with a content digest; one
    partition at a time, so the first can run while the next are cut. Empty partitions
    are left out.
    """
    names, codes = r.names, r.codes
    group_of_name = np.fromiter(
        (int(key_group(n, partitions)) for n in names.tolist()), dtype=np.int64, count=len(names)
    )
    small = np.uint16 if partitions <= 1 << 16 else np.int64  # a radix sort for 16 bits
    group = group_of_name.astype(small)[codes]
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(partitions + 1)).tolist()
    # each column moved by group in one gather, then each partition's (contiguous)
    # slice sorted in cache; no row column without raw records, no tenant column when
    # no reading has a tenant (the worker fills them in: less to ship)
    codes_g, ts_g, vals_g = codes[order], r.ts[order], r.vals[order]
    rows_g = r.rows[order] if len(r.rows) == len(r) and (r.rows >= 0).any() else None
    has_tenant = np.not_equal(r.tenants, np.full(len(r), None, dtype=object)).any()
    tenants_g = r.tenants[order] if has_tenant else None
    empty_rows, empty_tenants = np.empty(0, dtype=np.int64), np.empty(0, dtype=object)
    for p in range(partitions):
        lo, hi = bounds[p], bounds[p + 1]
        if lo == hi:
            continue
        cs = codes_g[lo:hi]
        sub = np.lexsort((ts_g[lo:hi], cs)) if by_time else np.argsort(cs, kind="stable")
        cs = cs[sub]
        change = np.flatnonzero(cs[1:] != cs[:-1]) + 1
        local = np.zeros(len(cs), dtype=np.int32)
        local[change] = 1
        part = Partition(
            p,
            names[cs[np.concatenate(([0], change))]].tolist(),
            np.cumsum(local, dtype=np.int32),
            ts_g[lo:hi][sub],
            vals_g[lo:hi][sub],
            tenants_g[lo:hi][sub] if tenants_g is not None else empty_tenants,
            rows_g[lo:hi][sub] if rows_g is not None else empty_rows,
        )
        part.digest = _part_digest(part)
        yield part


def _part_digest(p: Partition) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update("\x1f".join(p.names).encode())
    h.update(p.codes.tobytes())
    h.update(p.ts.tobytes())
    h.update(p.vals.tobytes())
    h.update(p.rows.tobytes())  # where each reading's dead letter points
    if len(p.tenants):
        h.update("\x1f".join("" if t is None else t for t in p.tenants).encode())
    return h.hexdigest()


def _inject_failure(path: str | None) -> None:
    if not path:
        return
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError(f"injected failure (first attempt; {path} now exists)")


def clean_sensors(part: Partition, max_future: int) -> np.ndarray:
    """Per sensor of ``part``: whether its readings (in input order) never go back in
    event time nor jump ahead by more than ``max_future`` ms. For such a sensor the
    flow's clock rules hold nothing, reject nothing and close every window in order:
    its windows are exactly its readings grouped by window start.
    """
    ok = np.ones(len(part.names), dtype=bool)
    if len(part) > 1:
        same = part.codes[1:] == part.codes[:-1]
        d = np.diff(part.ts)
        ok[part.codes[1:][same & ((d < 0) | (d > max_future))]] = False
    return ok


def tumbling_windows(
    codes: np.ndarray, ts: np.ndarray, vals: np.ndarray, size: int
) -> tuple[np.ndarray, ...]:
    """Tumbling windows of readings grouped by sensor, each sensor's in event-time
    order: ``(first reading index, start ms, count, sum, min, max, last)`` per window,
    with the sum added in reading order (as ``flows.windows.add_to_agg`` does, so the
    mean is bit for bit the flow's).
    """
    start_ms = ts - ts % size
    brk = np.flatnonzero((codes[1:] != codes[:-1]) | (start_ms[1:] != start_ms[:-1])) + 1
    first = np.concatenate((np.zeros(1, dtype=np.int64), brk))
    end = np.append(brk, len(ts))
    count = end - first
    total = vals[first].copy()
    active = np.flatnonzero(count > 1)
    j = 1
    while len(active):
        total[active] += vals[first[active] + j]
        j += 1
        active = active[count[active] > j]
    vmin = np.minimum.reduceat(vals, first)
    vmax = np.maximum.reduceat(vals, first)
    return first, start_ms[first], count, total, vmin, vmax, vals[end - 1]


def _fast_windows(
    logic: KeyGroupLogic, part: Partition, clean: np.ndarray, names: np.ndarray
) -> list:
    """The clean sensors' windows (see :func:`clean_sensors`) computed as columns and
    scored with one ``score_batch`` call per model, as ``KeyGroupLogic._score`` scores
    a batch of closed windows; the windows to emit (scores at or above the threshold, or
    all with ``--emit all``) go through the flow's own alert code (``_emit``: bodies,
    ids, explanations). Returns the logic's output.
    """
    from detectors.base import state_before_batch
    from flows.windows import Closed

    sel = clean[part.codes]
    codes, ts, vals = part.codes[sel], part.ts[sel], part.vals[sel]
    rows, tenants = part.rows[sel], part.tenants[sel]
    size = logic.spec.size
    first, start, count, total, vmin, vmax, last = tumbling_windows(codes, ts, vals, size)
    means = total / count  # the flow's agg[1] / agg[0]
    ends = (start + size) / 1000.0  # the flow's w.end / 1000.0
    win_code = codes[first]
    cut = np.flatnonzero(win_code[1:] != win_code[:-1]) + 1
    bounds = np.concatenate(([0], cut, [len(first)])).tolist()
    by_det: dict[int, tuple[Any, list[tuple[str, Any, int, int]]]] = {}
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        i0 = int(first[lo])
        sid = names[codes[i0]]
        # the flow's sensor, created by its first reading (origin: model switches); a
        # RowRef stands for the record, as everywhere in batch detection
        row = RowRef(int(rows[i0]))
        sensor = logic._new_sensor(sid, row, tenants[i0])  # type: ignore[arg-type]  # noqa: SLF001
        det = logic.models.get(*sensor.model, sid)
        by_det.setdefault(id(det), (det, []))[1].append((sid, sensor, lo, hi))
    out: list[Any] = []
    emit_all, thresholds = logic.emit_all, logic._thresholds  # noqa: SLF001
    for det, group in by_det.values():
        new_states, scores = det.score_batch(
            [None] * len(group),
            [means[lo:hi] for _s, _x, lo, hi in group],
            [ends[lo:hi] for _s, _x, lo, hi in group],
        )
        for (sid, sensor, lo, hi), state, sc in zip(group, new_states, scores, strict=True):
            threshold = thresholds.get(sensor.tenant, logic.threshold)
            if not emit_all and not (sc >= threshold).any():
                continue  # nothing to emit: no window objects needed
            closed = [
                Closed(s, s + size, [n, t, a, b, z])
                for s, n, t, a, b, z in zip(
                    start[lo:hi].tolist(),
                    count[lo:hi].astype(np.float64).tolist(),
                    total[lo:hi].tolist(),
                    vmin[lo:hi].tolist(),
                    vmax[lo:hi].tolist(),
                    last[lo:hi].tolist(),
                    strict=True,
                )
            ]
            before = state_before_batch(det, None, hi - lo)
            logic._emit(sid, sensor, det, closed, sc.tolist(), out, before, state)  # noqa: SLF001
    return out


def detect_partition(task: DetectTask) -> PartResult:
    """Run one partition through the flow's key-group logic (runs on a worker).

    With tumbling windows, the sensors whose readings are in event-time order without
    jumps (:func:`clean_sensors`, the common case) take a columnar path: numpy windows,
    then the flow's own scoring and alert code, all at once. The others go record by
    record through the flow's ``on_batch``, with its clock rules and dead letters.
    """
    from flows.logic import ALERT, KeyGroupLogic
    from flows.models import Models

    _inject_failure(task.fail_once)
    part, s = task.part.filled(), task.settings
    logic = KeyGroupLogic(s, Models(s.detector, s.detector_params), None, registry=task.registry)
    if task.model is not None:
        # a model switch at the start of the input: every sensor starts on this model
        logic.switches[ORIGIN] = task.model
    group = str(part.index)
    names = np.asarray(part.names, dtype=object)
    alerts: list[tuple[str, str, bytes]] = []
    dead: list[bytes] = []

    def collect(out: Any) -> None:
        for tag, item in out:
            if tag == ALERT:
                sid, rec = item
                alerts.append((sid, rec.id, rec.value))
            else:
                dead.append(item[1].value)

    rest = np.arange(len(part))
    if logic.spec.kind == "tumbling" and task.columnar:
        clean = clean_sensors(part, logic.spec.max_future)
        if clean.any():
            collect(_fast_windows(logic, part, clean, names))
            rest = np.flatnonzero(~clean[part.codes])
    for lo in range(0, len(rest), CHUNK):
        sel = rest[lo : lo + CHUNK]
        c = Columns()
        c.sids = names[part.codes[sel]].tolist()
        c.ts = part.ts[sel].tolist()
        c.vals = part.vals[sel].tolist()
        c.tenants = part.tenants[sel].tolist()
        c.raws = list(map(RowRef, part.rows[sel].tolist()))
        collect(logic.on_batch([SubBatch(group, [c])])[0])
    collect(logic.on_eof()[0])
    alerts.sort(key=lambda a: a[0])  # stable: each sensor's windows stay in order
    return PartResult(part.index, task.key, len(part), alerts, dead)


class ResultCache:
    """Partition results on disk, one file per cache key (written atomically).

    Args:
        directory: where the result files go.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pkl"

    def get(self, key: str) -> PartResult | None:
        """The cached result of ``key``, or ``None`` (missing or unreadable)."""
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        try:
            res: PartResult = pickle.loads(data)  # noqa: S301 - our own cache entry
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed
            return None
        res.cached = True
        return res

    def put(self, res: PartResult) -> None:
        """Store ``res`` under its key."""
        path = self._path(res.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(res, pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)


def cache_key(part: Partition, config: str) -> str:
    """The result-cache key of ``part`` under the settings digest ``config``."""
    return hashlib.sha256(f"{part.digest}:{config}".encode()).hexdigest()


def model_digest(ref: str) -> str:
    """Content hash of the stored model ``ref`` (part of the cache key with ``--model``)."""
    from state.model_store import canonical_json, fetch

    return hashlib.sha256(canonical_json(fetch(ref)).encode()).hexdigest()
