"""The one event-time parser of the project (the flow's decoders and adctl's history).

A timestamp is an RFC 3339 string with a UTC offset, or a number of epoch seconds,
milliseconds, microseconds or nanoseconds. With unit ``auto`` a number's magnitude
decides: below 1e11 it is seconds (up to the year 5138), below 1e14 milliseconds, below
1e17 microseconds, else nanoseconds. Times before ``earliest`` (default 2000-01-01,
which catches seconds misread as milliseconds and zero/1970 placeholders) or from 2200
on are refused.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

__all__ = [
    "EARLIEST_MS",
    "LATEST_MS",
    "UNITS",
    "TimestampError",
    "parse_time_setting",
    "to_millis",
]

UNITS = ("auto", "s", "ms", "us", "ns")
_SCALE = {"s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 0.000001}
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST_MS = 7_258_118_400_000  # 2200-01-01T00:00:00Z


class TimestampError(ValueError):
    """An unusable timestamp; ``reason`` is ``bad_type`` or ``bad_timestamp``.

    Args:
        reason: ``bad_type`` or ``bad_timestamp``.
        message: what is wrong with the timestamp.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def unit_of(number: float) -> str:
    """The unit ``auto`` reads ``number`` in."""
    size = abs(number)
    if size < 1e11:
        return "s"
    if size < 1e14:
        return "ms"
    if size < 1e17:
        return "us"
    return "ns"


def to_millis(ts: Any, unit: str = "auto", earliest: int = EARLIEST_MS) -> int:
    """Epoch milliseconds of ``ts`` (RFC 3339 string or number in ``unit``)."""
    if isinstance(ts, bool):
        raise TimestampError("bad_type", "timestamp must be an RFC 3339 string or a number")
    if isinstance(ts, (int, float)):
        try:
            number = float(ts)
        except OverflowError:
            raise TimestampError("bad_timestamp", "timestamp is too large") from None
        if not math.isfinite(number):
            raise TimestampError("bad_timestamp", f"timestamp is {number}")
        used = unit_of(number) if unit == "auto" else unit
        out = number * _SCALE[used]
        shown = f"{ts!r} (read as {_NAMES[used]})"
    elif isinstance(ts, str):
        try:
            dt = datetime.fromisoformat(ts)
        except ValueError:
            raise TimestampError("bad_timestamp", f"unparseable timestamp {ts[:64]!r}") from None
        if dt.tzinfo is None:
            raise TimestampError("bad_timestamp", f"timestamp {ts[:64]!r} has no UTC offset")
        out = dt.timestamp() * 1000.0
        shown = repr(ts[:64])
    else:
        raise TimestampError("bad_type", f"timestamp has type {type(ts).__name__}")
    if not earliest <= out < LATEST_MS:
        lo = datetime.fromtimestamp(earliest / 1000).strftime("%Y-%m-%d")  # noqa: DTZ006
        raise TimestampError(
            "bad_timestamp",
            f"timestamp {shown} is outside {lo}..2200 (AD_TIMESTAMP_UNIT sets the unit, "
            "AD_EARLIEST_TIME the lower bound)",
        )
    return round(out)


_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds"}


def parse_time_setting(text: str) -> int:
    """A time given in a setting or flag (RFC 3339, or epoch seconds) in epoch ms."""
    text = text.strip()
    try:
        number = float(text)
    except ValueError:
        return to_millis(text if text[-1:] != "Z" else text[:-1] + "+00:00", earliest=0)
    return to_millis(number, "s", earliest=0)
