"""A sensor's state and its codec: windows, detector state, model version, tenant.

Sensors at rest are pickled tuples of plain values (``freeze_sensor``/``thaw_sensor``);
detector states at rest stay as their detector's packed bytes (:class:`PackedState`)
until the sensor is scored again.
"""

from __future__ import annotations

import gc
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flows.windows import WindowState

__all__ = ["PackedState", "Sensor", "freeze_sensor", "gc_paused", "thaw_sensor"]


class PackedState(bytes):
    """A detector state at rest, as the detector's ``pack_state`` wrote it.

    A state is packed as soon as its sensor's windows are scored and stays packed until
    they are scored again, so a sensor holds its detector's compact packed state instead
    of the live arrays, in memory and in the recovery store, and a snapshot (the end of
    an epoch, which that epoch's alerts wait for) only pickles sensors. The round trip is
    exact, so scores are unchanged.
    """

    __slots__ = ()


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while (un)pickling a key group: (un)pickling a group allocates
    many objects that stay alive, so the collector would run full collections over the
    whole heap again and again, which would dominate the time to restore large key
    groups. (Un)pickling creates no reference cycles, so nothing is left for the
    collector.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Sensor:
    """Per-sensor state: windows, detector state, model version, origin partition.

    ``det`` is a :class:`PackedState`, or ``None`` for the model's initial state (created
    when the sensor's first window is scored); live only while its windows are scored.

    Args:
        det_state: the detector state (live, packed, or ``None`` for the model's initial one).
        model: the model ``(detector, version)`` the sensor is scored with.
        tenant: the sensor's tenant, if any.
    """

    __slots__ = ("win", "det", "model", "tenant", "held")

    def __init__(self, det_state: Any, model: tuple[str, str], tenant: str | None) -> None:
        self.win = WindowState()
        self.det = det_state
        self.model = model  # (version, model ref)
        self.tenant = tenant
        #: readings whose event time awaits confirmation before it may move the
        #: sensor's clock: ``[(ts, value, raw), ...]`` in arrival order, or ``None``
        self.held: list[tuple[int, float, Any]] | None = None

    def __getstate__(self) -> tuple:
        return (self.win, self.det, self.model, self.tenant, self.held)

    def __setstate__(self, st: tuple) -> None:
        self.win, self.det, self.model, self.tenant = st[:4]
        self.held = st[4] if len(st) > 4 else None


def freeze_sensor(sensor: Sensor) -> bytes:
    """A sensor at rest: a pickled tuple of plain values, which pickles and unpickles
    much faster than the objects (no class lookup or ``__setstate__`` per object). Its
    detector state must already be packed (or ``None``).
    """
    w, det = sensor.win, sensor.det
    return pickle.dumps(
        (
            w.max_ts,
            w.open,
            w.sessions,
            None if det is None else bytes(det),
            sensor.model,
            sensor.tenant,
            sensor.held,
        ),
        pickle.HIGHEST_PROTOCOL,
    )


def thaw_sensor(data: bytes) -> Sensor:
    """Inverse of :func:`freeze_sensor` (also reads sensors pickled as objects: see
    the compatibility shims in CHANGELOG.md).
    """
    obj = pickle.loads(data)  # noqa: S301 - our own snapshot state
    if type(obj) is not tuple:
        return obj  # an older snapshot's pickled Sensor
    max_ts, wins, sessions, det, model, tenant = obj[:6]
    w = WindowState.__new__(WindowState)
    w.max_ts, w.open, w.sessions = max_ts, wins, sessions
    sensor = Sensor.__new__(Sensor)
    sensor.win, sensor.model, sensor.tenant = w, model, tenant
    sensor.held = obj[6] if len(obj) > 6 else None  # 6-tuples: written before held readings
    sensor.det = None if det is None else PackedState(det)
    return sensor
