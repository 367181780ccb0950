"""The shared value parsers, and the callers that wrap them with their own rules."""

from __future__ import annotations

import pytest

from control.cli_env import parse_flag
from schemas.values import parse_bool, parse_duration
from state.tenants import RegistryError, _duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        (" 10M ", 600.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        ("7", 7.0),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_a_bad_duration_names_itself_with_examples() -> None:
    with pytest.raises(ValueError, match=r"not a duration: '5 parsecs'; e.g. 500ms"):
        parse_duration("5 parsecs")


def test_booleans() -> None:
    assert parse_bool("YES") is True and parse_bool("off") is False
    assert parse_bool("", True) is True and parse_bool(None) is False
    with pytest.raises(ValueError, match=r"not a boolean: 'maybe' \(use true or false\)"):
        parse_bool("maybe")
    with pytest.raises(ValueError):
        parse_bool(" true")  # URL parameters are taken as written


def test_a_flag_default_ignores_blanks_and_an_empty_variable_is_false() -> None:
    assert parse_flag(" true ") is True and parse_flag("") is False and parse_flag("  ") is False
    with pytest.raises(ValueError, match=r"^not a boolean: 'maybe'$"):
        parse_flag("maybe")


def test_a_registry_duration_is_positive_and_never_a_bool() -> None:
    assert _duration("tenants.a", "session_gap", "5m") == 300.0
    assert _duration("tenants.a", "session_gap", 2) == 2.0
    for bad in (True, None, [1], "soon", "0s", -1, "inf"):
        with pytest.raises(RegistryError):
            _duration("tenants.a", "session_gap", bad)
