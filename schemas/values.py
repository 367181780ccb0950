"""The parsers of setting values every layer shares: durations and booleans.

Connector URLs (``?idle_exit=5s&tail=false``), the flow's settings, the tenant registry
and ``adctl``'s environment defaults all read these two kinds of value; one parser each
keeps the accepted spellings and the error messages the same everywhere.
"""

from __future__ import annotations

__all__ = ["DURATION_UNITS", "parse_bool", "parse_duration"]

#: seconds per duration unit, in the order the suffixes are tried
DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_bool(text: str | None, default: bool = False) -> bool:
    """Parse a boolean parameter (1/true/yes/on, 0/false/no/off); empty means ``default``."""
    if text is None or text == "":
        return default
    low = text.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def parse_duration(text: str | float | int) -> float:
    """Parse ``"250ms"``, ``"5s"``, ``"10m"``, ``"1h"``, ``"2d"`` or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    t = text.strip().lower()
    for unit, scale in DURATION_UNITS.items():
        if t.endswith(unit) and t[: -len(unit)].replace(".", "", 1).isdigit():
            return float(t[: -len(unit)]) * scale
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"not a duration: {text!r}; e.g. 500ms, 30s, 5m, 1h") from None
