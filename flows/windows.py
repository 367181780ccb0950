"""Per-sensor event-time windows driven by event time only.

Each sensor has its own watermark: ``max event time seen - allowed lateness``. It never
moves with wall-clock time, so replaying the same input from a snapshot classifies
lateness identically and closes the same windows (Bytewax's ``EventClock`` also
advances with system time, which a replay cannot reproduce).

A record is *late* when every window it belongs to has already closed (its end is at
or before the watermark), as in Flink; it is *future* when it is more than
``max_future`` ahead of the newest event time seen (it would otherwise drag the
watermark forward and make everything after it late). Times are integer milliseconds.
With no windows (``none``) and a lateness, records wait until the watermark passes them
and are scored in event-time order: a reorder buffer bounded by the lateness.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.settings import Settings

__all__ = ["WindowSpec", "WindowState", "Closed", "LATE", "FUTURE", "new_agg", "add_to_agg"]

LATE = "late"
FUTURE = "future"


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """``kind`` is tumbling | sliding | session | none; sizes in milliseconds."""

    kind: str
    size: int = 60_000
    slide: int = 30_000
    gap: int = 300_000
    lateness: int = 0
    max_future: int = 86_400_000

    @classmethod
    def from_settings(cls, s: Settings) -> WindowSpec:
        """The window spec from the flow settings."""
        ms = lambda sec: int(round(float(sec) * 1000))  # noqa: E731
        return cls(
            s.window,
            ms(s.window_size),
            ms(s.window_slide),
            ms(s.session_gap),
            ms(s.allowed_lateness),
            ms(s.max_future),
        )


class Closed:
    """A closed window's aggregate, ready to be scored.

    Args:
        start: the window's start (epoch milliseconds).
        end: its end (epoch milliseconds, exclusive).
        agg: its aggregate features.
    """

    __slots__ = ("start", "end", "count", "mean", "min", "max", "last")

    def __init__(self, start: int, end: int, agg: list[float]) -> None:
        self.start = start
        self.end = end
        self.count = int(agg[0])
        self.mean = agg[1] / agg[0]
        self.min = agg[2]
        self.max = agg[3]
        self.last = agg[4]


def _start(entry: list) -> int:
    return entry[0]


def new_agg(value: float) -> list[float]:
    """A new aggregate ``[count, sum, min, max, last]`` of one value."""
    return [1.0, value, value, value, value]


def add_to_agg(agg: list[float], value: float) -> None:
    """Add ``value`` to the aggregate in place."""
    agg[0] += 1.0
    agg[1] += value
    if value < agg[2]:
        agg[2] = value
    if value > agg[3]:
        agg[3] = value
    agg[4] = value


class WindowState:
    """One sensor's open windows and watermark. Picklable; deterministic."""

    __slots__ = ("max_ts", "open", "sessions")

    def __init__(self) -> None:
        self.max_ts: int | None = None
        self.open: dict[int, list[float]] = {}  # tumbling/sliding: start -> agg
        # session: [start, end, agg], sorted by start; none with lateness: the records
        # awaiting their turn, as [ts, ts, agg] in event-time (then arrival) order
        self.sessions: list[list[Any]] = []

    def __getstate__(self) -> tuple:
        return (self.max_ts, self.open, self.sessions)

    def __setstate__(self, st: tuple) -> None:
        self.max_ts, self.open, self.sessions = st

    def watermark(self, spec: WindowSpec) -> int | None:
        """Event-time watermark: the latest time seen less the allowed lateness (None before
        any record).
        """
        return None if self.max_ts is None else self.max_ts - spec.lateness

    def add(self, spec: WindowSpec, ts: int, value: float, out: list[Closed]) -> str | None:
        """Add one record; append windows that close to ``out`` (in end order).

        Returns ``None`` when accepted, or ``LATE`` / ``FUTURE`` when rejected.
        """
        wm = None if self.max_ts is None else self.max_ts - spec.lateness
        if self.max_ts is not None and ts > self.max_ts + spec.max_future:
            return FUTURE
        kind = spec.kind
        if kind == "tumbling":
            start = ts - ts % spec.size
            if wm is not None and start + spec.size <= wm:
                return LATE
            agg = self.open.get(start)
            if agg is None:
                self.open[start] = new_agg(value)
            else:
                add_to_agg(agg, value)
        elif kind == "sliding":
            last_start = ts - ts % spec.slide
            if wm is not None and last_start + spec.size <= wm:
                return LATE
            start = last_start
            while start > ts - spec.size:
                if wm is None or start + spec.size > wm:
                    agg = self.open.get(start)
                    if agg is None:
                        self.open[start] = new_agg(value)
                    else:
                        add_to_agg(agg, value)
                start -= spec.slide
        elif kind == "session":
            if wm is not None and ts + spec.gap <= wm:
                return LATE
            self._merge_session(ts, ts + spec.gap, value)
        else:  # "none": every record is its own window
            if wm is not None and ts < wm:
                return LATE
            if spec.lateness:  # reordered: scored in event-time order once the watermark passes
                insort(self.sessions, [ts, ts, new_agg(value)], key=_start)
            else:
                out.append(Closed(ts, ts, new_agg(value)))
        if self.max_ts is None or ts > self.max_ts:
            self.max_ts = ts
        if kind != "none" or spec.lateness:
            self.close(spec, self.max_ts - spec.lateness, out)
        return None

    def _merge_session(self, start: int, end: int, value: float) -> None:
        merged = [start, end, new_agg(value)]  # type: list[Any]
        keep = []
        for s in self.sessions:
            if s[0] <= merged[1] and merged[0] <= s[1]:  # overlapping or touching
                agg, other = merged[2], s[2]
                merged[0] = min(merged[0], s[0])
                merged[1] = max(merged[1], s[1])
                # merge aggregates; "last" keeps the value of the later session
                later_last = other[4] if s[1] > end else agg[4]
                merged[2] = [
                    agg[0] + other[0],
                    agg[1] + other[1],
                    min(agg[2], other[2]),
                    max(agg[3], other[3]),
                    later_last,
                ]
            else:
                keep.append(s)
        keep.append(merged)
        keep.sort(key=lambda s: s[0])
        self.sessions = keep

    def close(self, spec: WindowSpec, wm: int | None, out: list[Closed]) -> None:
        """Close every window ending at or before ``wm`` (all of them when ``None``)."""
        if spec.kind in ("tumbling", "sliding"):
            if not self.open:
                return
            size = spec.size
            if len(self.open) == 1:  # the common case: only the current window is open
                s = next(iter(self.open))
                if wm is None or s + size <= wm:
                    out.append(Closed(s, s + size, self.open.pop(s)))
                return
            ready = sorted(s for s in self.open if wm is None or s + size <= wm)
            for s in ready:
                out.append(Closed(s, s + size, self.open.pop(s)))
        elif spec.kind in ("session", "none"):  # "none": records awaiting reordering
            keep = []
            for sess in self.sessions:
                if wm is None or sess[1] <= wm:
                    out.append(Closed(sess[0], sess[1], sess[2]))
                else:
                    keep.append(sess)
            self.sessions = keep
