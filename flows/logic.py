"""The stateful heart of the flow: windows + detector per sensor, grouped in key groups.

Records are routed to one of ``AD_KEY_GROUPS`` key groups (crc32 of ``sensor_id``), so
the stateful step receives whole column sub-batches, not single records: per-item
overhead is paid per (batch, key group), and every window closed in a sub-batch is
scored in one ``score_batch`` call per model. Each key group's state (every sensor's
windows, watermark, detector state and model version) is snapshotted with the epoch —
incrementally, as segment files plus a manifest (state.snapshots), when a recovery
directory is known — so a restart resumes exactly.

Determinism: a sensor's records arrive in input-partition order (the same on every
replay), windows close on event time only, and the detector is deterministic, so the
same input gives the same alerts with the same ``alert_id``.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from connectors import placement
from connectors.base import OutRecord, RawRecord, as_raw
from detectors.base import explain_in_batch, state_before_batch
from flows import metrics, summary
from flows.models import TENANT_PREFIX, Models
from flows.quotas import alert_routes, dead_letter_routes, dead_letter_tags, load_ref
from flows.records import (
    Columns,
    Control,
    SubBatch,
    dead_letter,
    iso,
    key_group,
    split_key,
    stable_id,
)

# Sensor stays importable from here: snapshots of earlier versions pickled it as
# flows.logic.Sensor (see CHANGELOG, compatibility shims)
from flows.sensor_state import PackedState, Sensor, freeze_sensor, gc_paused, thaw_sensor
from flows.windows import FUTURE, LATE, Closed, WindowSpec, add_to_agg, new_agg
from state.snapshots import Manifest, SegmentStore, SnapshotError

__all__ = ["KeyGroupLogic", "key_group", "ALERT", "DLQ", "BUILTIN"]

#: readings a sensor holds at most while they wait to confirm a jump of its clock
MAX_HELD = 2

#: keys in ``KeyGroupLogic.switches`` (origins never start with U+001F): a registry
#: marker's (digest, ref) per origin, and the sensors' registry refs
_REG = "\x1fregistry:"
_SREG = "\x1fsensors"

ALERT = "alert"
DLQ = "dlq"
BUILTIN = "builtin"

log = logging.getLogger(__name__)


def _event_time(entry: tuple) -> int:
    return entry[1]


def tenant_specs(base: WindowSpec, registry: Any) -> dict[str, WindowSpec]:
    """Tenant -> its window spec (``base`` with the tenant's window settings), for the
    tenants of ``registry`` that set any; lateness and clock rules stay the flow's.
    """
    out = {}  # type: dict[str, WindowSpec]
    for t in registry:
        if (t.window, t.window_size, t.window_slide, t.session_gap) == (None, None, None, None):
            continue
        out[t.id] = replace(
            base,
            kind=t.window or base.kind,
            size=base.size if t.window_size is None else int(round(t.window_size * 1000)),
            slide=base.slide if t.window_slide is None else int(round(t.window_slide * 1000)),
            gap=base.gap if t.session_gap is None else int(round(t.session_gap * 1000)),
        )
    return out


def _split_extra(extra: Any) -> tuple[dict[str, tuple[str, str]], list]:
    """A manifest's extra: the switches, or (switches, waiting records)."""
    if type(extra) is tuple:
        return extra[0], list(extra[1])
    return extra, []


class KeyGroupLogic:
    """``StatefulBatchLogic`` for one key group (subclassed in flows.detector).

    Args:
        settings: the flow's settings (window, detector, threshold, …).
        models: the detector instances by model version, shared by the key groups.
        resume: the key group's snapshot, or ``None`` for a fresh start.
        snapshot_dir: where incremental snapshots go (``None``: whole key groups inline).
        registry: the tenant registry (per-tenant thresholds), if any.
    """

    #: take the specialised tumbling-window loop when it applies (tests compare both)
    lean = True

    def __init__(
        self,
        settings: Any,
        models: Models,
        resume: bytes | None,
        snapshot_dir: Path | None = None,
        registry: Any = None,
    ) -> None:
        self.s = settings
        # tenant -> its own alert threshold (from the tenant registry)
        self._thresholds: dict[str, float] = {
            t.id: t.threshold for t in (registry or ()) if t.threshold is not None
        }
        self.spec = WindowSpec.from_settings(settings)
        self.models = models
        self.emit_all = settings.emit == "all"
        self.threshold = settings.threshold
        self.flow_id = settings.flow_id
        # sensor id -> Sensor, or the Sensor pickled ("cold": not touched since the last
        # snapshot; unpickled when its next record arrives). Cold sensors make a snapshot
        # cost a copy of bytes, not a pickling of objects, and a resume a load of bytes.
        self.sensors: dict[str, Sensor | bytes]
        # origin partition -> (model version, model ref) announced by a control marker
        self.switches: dict[str, tuple[str, str]] = {}
        # incremental snapshots (state.snapshots) when a directory is configured: the
        # key group (known from its first sub-batch or its manifest) and its chain
        self.group: str | None = None
        self._snap_dir = snapshot_dir
        self._store: SegmentStore | None = None
        self._manifest: Manifest | None = None
        # records of a source that does not keep order, waiting to be used in event-time
        # order: (arrival wall time, ts, sensor, value, tenant, raw), in arrival order
        self._wait_s = float(getattr(settings, "reorder_s", 0.0))
        # the tenants of the readings not yet added to the metric, one list per part
        # (counted every so many batches: a labelled counter costs microseconds per
        # update, and counting them all at once costs less than a Counter per part)
        self._readings: list[list[str | None]] = []
        self._batches = 0
        self._buf: list[tuple[float, int, str, float, str | None, Any]] = []
        # a tenant-registry marker's ref per origin partition is kept in ``switches``
        # under _REG + origin; _SREG holds each sensor's registry ref from its first
        # record after such a marker on (its alerts use that registry's thresholds)
        self._sreg: dict[str, str] = {}
        if resume is None:
            self.sensors = {}
        else:
            with gc_paused():
                saved = pickle.loads(resume)  # noqa: S301 - our own snapshot state
                if type(saved) is Manifest:  # incremental: load the segment chain
                    self.group, self._manifest = saved.group, saved
                    self.sensors = cast("dict[str, Sensor | bytes]", self._segments().load(saved))
                    self.switches, self._buf = _split_extra(saved.extra)
                else:  # inline: the whole key group (and waiting records, if any)
                    self.sensors, self.switches = saved[:2]
                    self._buf = saved[2] if len(saved) > 2 else []
        # tenant -> the version of its own detector, per registry ref ("": the start's)
        self._tver: dict[str, dict[str, str]] = {
            "": models.tenant_versions(registry) if registry is not None else {}
        }
        # tenant -> its own window spec, per registry ref ("": the start's); while no
        # registry sets one, every sensor has the flow's (and tumbling takes the lean loop)
        self._wspecs: dict[str, dict[str, WindowSpec]] = {
            "": tenant_specs(self.spec, registry) if registry is not None else {}
        }
        self._tenant_windows = bool(self._wspecs[""])
        for k, v in list(self.switches.items()):
            if k.startswith(_REG):  # registries switched to before the snapshot
                self._specs_of(v[1])
        if _SREG in self.switches:
            self._sreg = self.switches[_SREG]  # type: ignore[assignment]  # see _REG
        self._reg_thr: dict[str, dict[str, float]] = {}  # registry ref -> thresholds
        # alert routing: the sink URLs the flow has a sink for (from the start registry),
        # and per registry ref the tenants' alert tags (ALERT + ">" + URL)
        self._routes: frozenset[str] = frozenset(alert_routes(registry))
        self._tags: dict[str, dict[str, str]] = {}
        if self._routes:
            self._tags[""] = self._tags_of(registry)
        # dead-letter routing likewise (late, future): by the registry in force for the
        # record's partition when the decision is taken
        self._droutes: frozenset[str] = frozenset(dead_letter_routes(registry))
        self._dtags: dict[str, dict[str, str]] = {}
        if self._droutes:
            self._dtags[""] = dead_letter_tags(registry, self._droutes)
        # sensors held as objects (touched since the last snapshot)
        self._warm: set[str] = {sid for sid, s in self.sensors.items() if type(s) is not bytes}
        self._placed = settings.key_by == "sensor"  # placement checked (or moot)

    # -- Bytewax hooks -------------------------------------------------------------
    def on_batch(self, values: list[SubBatch]) -> tuple[Iterable, bool]:
        """Bytewax hook: process one batch for this key group."""
        out: list[tuple[str, tuple[str, OutRecord]]] = []
        pending: dict[str, list[Closed]] = {}
        if self.group is None and values:
            self.group = getattr(values[0], "group", None)
        if not self._placed and self.group is not None:
            self._check_placement()
        lean = self.lean and self.spec.kind == "tumbling" and not self._tenant_windows
        if self._wait_s:
            now = time.time()
        for sub in values:
            for part in sub:
                if type(part) is Columns:
                    self._readings.append(part.tenants)
                    if self._wait_s:
                        self._buf.extend(
                            (now, t, sid, v, ten, raw)
                            for sid, t, v, ten, raw in zip(
                                part.sids,
                                part.ts,
                                part.vals,
                                part.tenants,
                                part.raws,
                                strict=True,
                            )
                        )
                    elif lean and not self.switches:
                        self._add_tumbling(part, pending, out)
                    else:
                        for r in zip(
                            part.sids, part.ts, part.vals, part.tenants, part.raws, strict=True
                        ):
                            self._add(*r, pending, out)
                else:
                    self._control(part, pending, out)
        if self._buf:
            self._release(now if self._wait_s else float("inf"), pending, out)
        self._score(pending, out)
        self._batches += 1
        if self._batches % 64 == 0:
            self._count_readings()
        return out, False

    def _count_readings(self) -> None:
        """Add the readings counted since the last time to ``ad_readings_total``."""
        for ten, n in Counter(chain.from_iterable(self._readings)).items():
            metrics.READINGS.labels(ten or "").inc(n)
        self._readings.clear()

    def notify_at(self) -> datetime | None:
        """When the oldest waiting record (reordering) is due."""
        if not self._buf:
            return None
        return datetime.fromtimestamp(self._buf[0][0] + self._wait_s, UTC)

    def on_notify(self) -> tuple[Iterable, bool]:
        """Use the waiting records that are due."""
        out: list[tuple[str, tuple[str, OutRecord]]] = []
        pending: dict[str, list[Closed]] = {}
        self._release(time.time(), pending, out)
        self._score(pending, out)
        return out, False

    def _release(self, now: float, pending: dict[str, list[Closed]], out: list) -> None:
        """Use the records that have waited ``reorder_wait`` (all for ``now`` = inf), and
        with them every record of the same sensor that is older in event time (it
        arrived late, but before its turn passed), in event-time order.
        """
        buf = self._buf
        due = now - self._wait_s
        if not buf or buf[0][0] > due:
            return
        cut: dict[str, int] = {}
        for arrived, t, sid, *_rest in buf:
            if arrived > due:
                break
            if t > cut.get(sid, t - 1):
                cut[sid] = t
        ready = []  # type: list[tuple[float, int, str, float, str | None, Any]]
        self._buf = []
        for entry in buf:
            (ready if entry[1] <= cut.get(entry[2], -1) else self._buf).append(entry)
        ready.sort(key=_event_time)  # stable: equal times keep their arrival order
        for _arrived, t, sid, v, ten, raw in ready:
            self._add(sid, t, v, ten, raw, pending, out)

    def on_eof(self) -> tuple[Iterable, bool]:
        """End of finite input: close every open window, in order."""
        self._count_readings()
        out: list[tuple[str, tuple[str, OutRecord]]] = []
        pending: dict[str, list[Closed]] = {}
        if self._buf:
            self._release(float("inf"), pending, out)
        for sid in list(self.sensors):
            sensor = cast(Sensor, self._sensor(sid))  # sid is known: never None
            # after the windows the released records closed, in order
            closed: list[Closed] = pending.get(sid) or []
            if sensor.held is not None:
                self._settle(sid, sensor, closed, out)
            sensor.win.close(self._spec(sid, sensor), None, closed)
            if closed:
                pending[sid] = closed
        self._score(pending, out)
        return out, False

    def _settle(self, sid: str, sensor: Sensor, closed: list[Closed], out: list) -> None:
        """At the end of the input: a new sensor's held readings that agree with its
        last one are its readings (nothing contradicts them); a jump of a running
        sensor's clock that nothing confirmed is not taken.
        """
        held, sensor.held = sensor.held or [], None
        spec = self._spec(sid, sensor)
        top = sensor.win.max_ts
        if top is not None:
            for h in held:
                self._unconfirmed(h, top, out, sensor.tenant)
            return
        last = held[-1][0]
        for h in held:
            if abs(h[0] - last) > spec.max_future:
                self._unconfirmed(h, last, out, sensor.tenant)
            elif (rejected := sensor.win.add(spec, h[0], h[1], closed)) is not None:
                self._reject(h[2], rejected, h[0], sensor.win.watermark(spec), out, sensor.tenant)

    def snapshot(self) -> bytes:
        """Bytewax hook: the key group's state to save."""
        self._count_readings()
        changed = list(self._warm)
        self._freeze()
        with gc_paused():
            if self._snap_dir is None or self.group is None:
                whole = (self.sensors, self.switches, *((self._buf,) if self._buf else ()))
                return pickle.dumps(whole, protocol=pickle.HIGHEST_PROTOCOL)
            sensors = self.sensors
            self._manifest = self._segments().save(
                self.group,
                self._manifest,
                cast("dict[str, bytes]", {sid: sensors[sid] for sid in changed}),  # frozen
                sensors,
                (self.switches, self._buf) if self._buf else self.switches,
            )
            return pickle.dumps(self._manifest, protocol=pickle.HIGHEST_PROTOCOL)

    def _check_placement(self) -> None:
        """With key groups by (home) partition, say so when this group does not run on
        the worker reading its partition (connectors.placement): the output is the same,
        but every record then crosses between workers.
        """
        self._placed = True
        group = self.group or ""  # type: str
        if "~" in group and not placement.is_local(group):  # a partition's group (not a hash)
            metrics.REMOTE_KEY_GROUPS.inc()
            log.warning(
                "key group %s runs on another worker than the one reading its "
                "partition: its records cross between workers (a worker count "
                "that does not divide %d, or a Bytewax whose placement changed)",
                self.group,
                placement.MODULUS,
            )

    def _segments(self) -> SegmentStore:
        if self._store is None:
            if self._snap_dir is None:
                raise SnapshotError(
                    "this snapshot was written incrementally (segment files): resume it "
                    "with the same recovery directory / AD_SNAPSHOT_DIR, not inline"
                )
            self._store = SegmentStore(
                self._snap_dir / f"kg-{self.group}", fsync=self.s.snapshot_fsync
            )
        return self._store

    def _freeze(self) -> None:
        """Make every warm sensor cold: pickle the sensor (its detector state was packed
        when it was scored; a live one, from an older snapshot, is packed here).
        """
        sensors = self.sensors
        with gc_paused():
            for sid in self._warm:
                sensor = cast(Sensor, sensors[sid])  # warm sensors are objects
                det = sensor.det
                if det is not None and type(det) is not PackedState:
                    sensor.det = PackedState(self.models.get(*sensor.model, sid).pack_state(det))
                sensors[sid] = freeze_sensor(sensor)
        self._warm.clear()

    def _sensor(self, sid: str) -> Sensor | None:
        """The sensor ``sid`` as an object (warm), or ``None`` if unknown."""
        sensor = self.sensors.get(sid)
        if type(sensor) is bytes:
            sensor = self.sensors[sid] = thaw_sensor(sensor)
            self._warm.add(sid)
        return sensor  # type: ignore[return-value]  # thawed above when it was bytes

    # -- internals -----------------------------------------------------------------
    @staticmethod
    def _origin(raw: Any) -> str:
        raw = as_raw(raw)
        return f"{raw.source}/{raw.partition}"

    def _new_sensor(self, sid: str, raw: RawRecord, tenant: str | None) -> Sensor:
        switches = self.switches
        model = switches.get(self._origin(raw), (BUILTIN, "")) if switches else (BUILTIN, "")
        if model[0] == BUILTIN and tenant is not None:  # the tenant's own detector, if any
            reg = switches.get(_REG + self._origin(raw)) if switches else None
            version = self._tenant_versions(reg[1] if reg is not None else "").get(tenant)
            if version is not None:
                model = (version, "")
        self.models.get(*model, sid)  # fetch (and fail) now, not at scoring
        sensor = self.sensors[sid] = Sensor(None, model, tenant)  # det: created when scored
        self._warm.add(sid)
        return sensor

    def _reject(
        self, raw: Any, reason: str, ts: int, wm: int | None, out: list, tenant: str | None
    ) -> None:
        error = f"event time {iso(ts)} vs watermark {iso(wm) if wm is not None else '-'}"
        raw = as_raw(raw)
        tag = self._dlq_tag(raw, tenant) if self._droutes else DLQ
        out.append((tag, dead_letter(raw, reason, error, self.flow_id)))
        metrics.DEAD_LETTERS.labels(reason, tenant or "").inc()

    def _add_tumbling(self, c: Columns, pending: dict[str, list[Closed]], out: list) -> None:
        """``_add`` for every reading of ``c``, specialised for tumbling windows and no
        model switch: the same windows, closes and rejections, with the per-record work
        inlined (this is the flow's hot loop).
        """
        spec = self.spec
        size, lateness, max_future = spec.size, spec.lateness, spec.max_future
        sensors, warm, thaw = self.sensors, self._warm, thaw_sensor
        for sid, t, v, ten, raw in zip(c.sids, c.ts, c.vals, c.tenants, c.raws, strict=True):
            # a Sensor, its frozen bytes or None (the type() tests below; no cast per record)
            sensor = sensors.get(sid)  # type: Any
            if sensor is None:
                sensor = self._new_sensor(sid, raw, ten)
            elif type(sensor) is bytes:
                sensor = sensors[sid] = thaw(sensor)
                warm.add(sid)
                if ten is not None:
                    sensor.tenant = ten
            elif ten is not None:
                sensor.tenant = ten
            w = sensor.win
            top = w.max_ts
            if top is None or sensor.held is not None or not -max_future <= t - top <= max_future:
                self._admit(sid, sensor, t, v, raw, pending, out)  # the clock rules
                continue
            start = t - t % size
            if start + size <= top - lateness:
                self._reject(raw, LATE, t, top - lateness, out, sensor.tenant)
                continue
            wins = w.open
            agg = wins.get(start)
            if agg is None:
                wins[start] = new_agg(v)
            else:
                add_to_agg(agg, v)
            if top is None or t > top:
                w.max_ts = t
                if len(wins) > 1:  # the watermark moved: close what ended before it
                    wm = t - lateness
                    ready = sorted(s for s in wins if s + size <= wm)
                    if ready:
                        closed = pending.get(sid)
                        if closed is None:
                            closed = pending[sid] = []
                        for s in ready:
                            closed.append(Closed(s, s + size, wins.pop(s)))

    def _add(
        self,
        sid: str,
        ts: int,
        value: float,
        tenant: str | None,
        raw: RawRecord,
        pending: dict[str, list[Closed]],
        out: list,
    ) -> None:
        """One reading, any window kind, with model switches."""
        sensor = self._sensor(sid)
        switches = self.switches
        origin = self._origin(raw) if switches else ""
        if sensor is None:
            sensor = self._new_sensor(sid, raw, tenant)
        elif tenant is not None:
            sensor.tenant = tenant
        switch = switches.get(origin) if switches else None
        if switches:
            reg = switches.get(_REG + origin)
            if reg is not None and self._sreg.get(sid) != reg[1]:
                # a registry switch reached this sensor's partition: windows closed so
                # far are scored under the registry before it; if the tenant's windows
                # change, every open window is closed (and scored) first
                closing = pending.pop(sid, [])
                old_spec = self._spec(sid, sensor)
                if self._specs_of(reg[1]).get(sensor.tenant or "", self.spec) != old_spec:
                    sensor.win.close(old_spec, None, closing)
                if closing:
                    self._score({sid: closing}, out)
                self._sreg[sid] = reg[1]
                switches[_SREG] = self._sreg  # type: ignore[assignment]  # see _REG
                model = sensor.model
                if not model[1] and (model[0] == BUILTIN or model[0].startswith(TENANT_PREFIX)):
                    version = self._tenant_versions(reg[1]).get(sensor.tenant or "", BUILTIN)
                    if version != model[0]:  # the tenant's detector changed: state restarts
                        sensor.model = (version, "")
                        self.models.get(version, "", sid)
                        sensor.det = None
        if switch is not None and switch != sensor.model:
            # a model switch reached this sensor's partition: score windows that close
            # from here on with the new model (state restarts from the new model)
            before = pending.pop(sid, None)
            if before:
                self._score({sid: before}, out)
            sensor.model = switch
            self.models.get(*switch, sid)
            sensor.det = None
        self._admit(sid, sensor, ts, value, raw, pending, out)

    def _admit(
        self,
        sid: str,
        sensor: Sensor,
        ts: int,
        value: float,
        raw: Any,
        pending: dict[str, list[Closed]],
        out: list,
    ) -> None:
        """Add one reading to its sensor's windows, through the clock rules."""
        closed = pending.get(sid)
        if closed is None:
            closed = pending[sid] = []
        spec = self._spec(sid, sensor) if self._tenant_windows else self.spec
        for t, v, r in self._clock(sid, sensor, ts, value, raw, closed, out):
            rejected = sensor.win.add(spec, t, v, closed)
            if rejected is not None:
                self._reject(r, rejected, t, sensor.win.watermark(spec), out, sensor.tenant)

    def _clock(
        self,
        sid: str,
        sensor: Sensor,
        ts: int,
        value: float,
        raw: Any,
        closed: list[Closed],
        out: list,
    ) -> list[tuple[int, float, Any]]:
        """The readings to add now, by the clock rules (README, Event time).

        A sensor's clock (its newest event time) moves by more than ``max_future`` only
        when two readings agree on the new time (within ``max_future`` of each other):
        a reading that would move it alone is held (at most ``MAX_HELD``) until a later
        one confirms it, and is dead-lettered (``future``/``late``) when the next
        reading agrees with the current clock instead. A new sensor's clock starts the
        same way, from two agreeing readings. On a confirmed jump every open window is
        closed first. Event time only, so a replay decides the same.
        """
        jump = self.spec.max_future
        w = sensor.win
        top = w.max_ts
        if top is not None and -jump <= ts - top <= jump:
            if sensor.held is not None:  # the clock was right: what waited was wrong
                self._drop_held(sensor, top, out)
            return [(ts, value, raw)]
        held = sensor.held or []
        agree = [h for h in held if abs(h[0] - ts) <= jump]
        if not agree:
            held.append((ts, value, raw))
            if len(held) > MAX_HELD:
                old = held.pop(0)
                self._unconfirmed(old, top if top is not None else ts, out, sensor.tenant)
            sensor.held = held
            return []
        sensor.held = None
        if top is not None:  # a confirmed jump: close what the old clock had open
            w.close(self._spec(sid, sensor), None, closed)
            w.max_ts = None
        for h in held:
            if abs(h[0] - ts) > jump:
                self._unconfirmed(h, ts, out, sensor.tenant)
        return [*agree, (ts, value, raw)]

    def _unconfirmed(
        self, held: tuple[int, float, Any], clock: int, out: list, tenant: str | None
    ) -> None:
        ts, _value, raw = held
        reason = FUTURE if ts > clock else LATE
        error = (
            f"event time {iso(ts)} was not confirmed by the sensor's next readings "
            f"(its clock: {iso(clock)})"
        )
        raw = as_raw(raw)
        tag = self._dlq_tag(raw, tenant) if self._droutes else DLQ
        out.append((tag, dead_letter(raw, reason, error, self.flow_id)))
        metrics.DEAD_LETTERS.labels(reason, tenant or "").inc()

    def _drop_held(self, sensor: Sensor, clock: int, out: list) -> None:
        for h in sensor.held or ():
            self._unconfirmed(h, clock, out, sensor.tenant)
        sensor.held = None

    def _control(self, c: Control, pending: dict[str, list[Closed]], out: list) -> None:
        body = c.body  # signed, and its model in the store (flows.decode)
        if body["type"] == "tenants":  # applied by flows.quotas; here: per-sensor settings
            ref = str(body["registry_ref"])
            try:
                self._thresholds_of(ref)
                self._specs_of(ref)
            except Exception:  # noqa: BLE001 - the gate dead-lettered it already
                return
            self.switches[_REG + self._origin(c.raw)] = (str(body["version"]), ref)
            return
        version, ref = str(body["version"]), str(body.get("model_ref", ""))
        try:
            self.models.get(version, ref)
        except Exception as exc:  # noqa: BLE001 - a bad artifact must not stop the flow
            out.append(
                (DLQ, dead_letter(c.raw, "bad_control", f"model {ref}: {exc}", self.flow_id))
            )
            return
        self.switches[self._origin(c.raw)] = (version, ref)
        metrics.MODEL_VERSION.labels(self.models.name, version).set(1)

    def _spec(self, sid: str, sensor: Sensor) -> WindowSpec:
        """The window spec of ``sensor``: its tenant's (registry ``window`` settings, in
        the registry in force for it), else the flow's.
        """
        if not self._tenant_windows:
            return self.spec
        return self._specs_of(self._sreg.get(sid, "")).get(sensor.tenant or "", self.spec)

    def _specs_of(self, ref: str) -> dict[str, WindowSpec]:
        """Tenant -> its window spec, for the tenants of registry ``ref`` ("": the start
        registry) that set window settings.
        """
        got = self._per_registry(self._wspecs, ref, lambda reg: tenant_specs(self.spec, reg))
        if got:
            self._tenant_windows = True
        return got

    def _tenant_versions(self, ref: str) -> dict[str, str]:
        """Tenant -> its own detector's version under the registry ``ref`` ("": the
        registry the flow started with).
        """
        return self._per_registry(self._tver, ref, self.models.tenant_versions)

    def _tags_of(self, registry: Any) -> dict[str, str]:
        """Tenant -> the output tag of its alerts under ``registry``: its own sink's, or
        (no template, or a URL the flow has no sink for) the flow's ``ALERT``.
        """
        tags = {}  # type: dict[str, str]
        for t in registry:
            url = t.alerts_url
            if url and url in self._routes:
                tags[t.id] = f"{ALERT}>{url}"
            elif url:
                log.warning(
                    "tenant %s: alerts to %s need a restart with that registry (the "
                    "flow has no sink for it); they go to the flow's alert sink",
                    t.id,
                    url.split("?")[0],
                )
        return tags

    def _tag(self, sid: str, tenant: str | None) -> str:
        """The output tag of an alert of sensor ``sid`` (see ``_tags_of``)."""
        ref = self._sreg.get(sid, "") if self._sreg else ""
        tags = self._per_registry(self._tags, ref, self._tags_of)
        return tags.get(tenant or "", ALERT)

    def _dlq_tag(self, raw: RawRecord, tenant: str | None) -> str:
        """The output tag of a dead letter of ``tenant`` read from ``raw``'s partition."""
        reg = self.switches.get(_REG + self._origin(raw)) if self.switches else None
        ref = reg[1] if reg is not None else ""
        tags = self._per_registry(self._dtags, ref, lambda r: dead_letter_tags(r, self._droutes))
        return tags.get(tenant or "", DLQ)

    def _thresholds_of(self, ref: str) -> dict[str, float]:
        """The per-tenant thresholds of the registry stored under ``ref``."""
        return self._per_registry(
            self._reg_thr,
            ref,
            lambda reg: {t.id: t.threshold for t in reg if t.threshold is not None},
        )

    @staticmethod
    def _per_registry(cache: dict[str, Any], ref: str, build: Callable[[Any], Any]) -> Any:
        """``build(registry)`` for the registry stored under ``ref`` ("": the one the flow
        started with), once per ref (registries are immutable).
        """
        got = cache.get(ref)
        if got is None:
            got = cache[ref] = build(load_ref(ref))
        return got

    def _score(self, pending: dict[str, list[Closed]], out: list) -> None:
        """Score every sensor's closed windows: one ``score_batch`` call per model."""
        sensors = self.sensors
        by_det: dict[int, tuple[Any, list[str]]] = {}
        for sid, closed in pending.items():
            if closed:
                det = self.models.get(*sensors[sid].model, sid)  # type: ignore[union-attr, call-arg]  # warm
                entry = by_det.get(id(det))
                if entry is None:
                    entry = by_det[id(det)] = (det, [])
                entry[1].append(sid)
        for det, sids in by_det.values():
            states, values, ends, pre = [], [], [], []
            unpack = det.unpack_state
            for sid in sids:
                closed = pending[sid]
                state = sensors[sid].det  # type: ignore[union-attr]  # pending: warm
                states.append(unpack(state) if type(state) is PackedState else state)
                pre.append(state_before_batch(det, state, len(closed)))
                values.append(np.fromiter((w.mean for w in closed), np.float64, len(closed)))
                ends.append(np.fromiter((w.end / 1000.0 for w in closed), np.float64, len(closed)))
            new_states, scores = det.score_batch(states, values, ends)
            pack = det.pack_state
            for sid, state, sc, bef in zip(sids, new_states, scores, pre, strict=True):
                sensor = sensors[sid]
                self._emit(sid, sensor, det, pending[sid], sc.tolist(), out, bef, state)  # type: ignore[arg-type]  # warm
                # packed now, not at the snapshot: the epoch's end (which the epoch's
                # alerts wait for) then only pickles sensors, whatever was scored
                sensor.det = PackedState(pack(state))  # type: ignore[union-attr]  # pending: warm
            metrics.WINDOWS_OUT.inc(sum(len(pending[sid]) for sid in sids))
            last = max(pending[sid][-1].end for sid in sids)
            metrics.WINDOW_CLOSE_LATENCY.observe(max(0.0, time.time() - last / 1000.0))

    def _emit(
        self,
        sid: str,
        sensor: Sensor,
        det: Any,
        closed: list[Closed],
        scores: list[float],
        out: list,
        before: bytes | None,
        after: Any,
    ) -> None:
        """The alerts (or, with ``AD_EMIT=all``, the scores) of a sensor's scored windows;
        ``before``/``after``: its detector state before and after them (explanations).
        """
        name, threshold, emit_all = det.name, self.threshold, self.emit_all
        thresholds = self._thresholds
        if self._sreg and sid in self._sreg:
            thresholds = self._thresholds_of(self._sreg[sid])
        if thresholds and sensor.tenant in thresholds:
            threshold = thresholds[sensor.tenant]
        for i, (w, score) in enumerate(zip(closed, scores, strict=True)):
            if score < threshold and not emit_all:
                continue
            alert_id = stable_id(sid, w.start, w.end, name)  # sid: the state key (records)
            sensor_id = split_key(sid)[1]
            body = {
                "alert_id": alert_id,
                "sensor_id": sensor_id,
                "tenant_id": sensor.tenant,
                "window_start": iso(w.start),
                "window_end": iso(w.end),
                "score": score,
                "is_anomaly": score >= threshold,
                "value": w.mean,
                "features": {
                    "count": w.count,
                    "mean": w.mean,
                    "min": w.min,
                    "max": w.max,
                    "last": w.last,
                },
                "detector": name,
                "model_version": det.model_version,
            }
            if score >= threshold:  # why: component, expected range, reason
                vals, ts = [c.mean for c in closed], [c.end / 1000.0 for c in closed]
                body["explain"] = explain_in_batch(det, after, before, vals, ts, i)
            tag = self._tag(sid, sensor.tenant) if self._routes else ALERT
            out.append((tag, (sid, OutRecord(alert_id, sensor_id, orjson.dumps(body)))))
            if score >= threshold:
                metrics.ALERTS_OUT.labels(name, sensor.tenant or "").inc()
                summary.note_alert(sensor_id, w.start, w.end, score)
