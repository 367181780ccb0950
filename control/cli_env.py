"""adctl's options: flags whose defaults come from ``AD_*`` variables, shared option
groups and argument converters, and the environment handed to flow processes.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from flows.settings import declared_default, flow_env_names
from schemas.values import parse_bool

__all__ = ["ADCTL_ENV", "CliError", "add_field_options", "flow_env", "opt"]

#: adctl's own AD_* variables (filled in as the parser is built).
ADCTL_ENV: set[str] = set()
DEFAULT_STORE = "redis://127.0.0.1:16379/ad:models"


class CliError(Exception):
    """A user-facing error: printed as ``adctl: error: ...`` with exit code 2."""


def parse_flag(text: str) -> bool:
    """A flag's ``AD_*`` default: ``parse_bool`` with surrounding blanks ignored and a
    set-but-empty variable false.
    """
    try:
        return parse_bool(text.strip(), False)
    except ValueError:
        raise ValueError(f"not a boolean: {text!r}") from None


def _env_default(env: str, default: Any, conv: Callable[[str], Any] | None) -> Any:
    raw = os.environ.get(env)
    if raw is None:
        return default
    try:
        return conv(raw) if conv else raw
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise CliError(f"environment variable {env}={raw!r} is invalid: {exc}") from None


class _AppendReplace(argparse.Action):
    """Like ``append``, but the first use on the command line replaces the env default."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        ns: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        marker = f"_{self.dest}_given"
        cur = getattr(ns, self.dest) if getattr(ns, marker, False) else []
        setattr(ns, marker, True)
        setattr(ns, self.dest, [*cur, values])


def opt(
    p: argparse.ArgumentParser,
    *flags: str,
    env: str,
    default: Any = None,
    type: Callable[[str], Any] | None = None,
    help: str = "",
    flag: bool = False,
    **kw: Any,
) -> None:
    """Add a flag whose default comes from environment variable ``env``; for a flow
    setting (``AD_DETECTOR``, …) without an explicit ``default``, the flow's declared one.
    """
    ADCTL_ENV.add(env)
    if default is None:
        default = declared_default(env)
    shown = f" (default: {default})" if default not in (None, "", False) else ""
    text = f"{help}{shown} [env: {env}]"
    if kw.get("action") == "append":
        kw["action"] = _AppendReplace
        raw = os.environ.get(env)
        p.add_argument(*flags, default=split_list(raw) if raw else [], help=text, **kw)
        return
    if flag:
        p.add_argument(
            *flags,
            action=argparse.BooleanOptionalAction,
            default=_env_default(env, default, parse_flag),
            help=text,
            **kw,
        )
    else:
        p.add_argument(
            *flags,
            default=_env_default(env, default, type),
            type=type,  # type: ignore[arg-type]  # None is argparse's default (str)
            help=text,
            **kw,
        )


def _flow_keys() -> set[str]:
    """AD_* names the flow itself reads (they pass through even if adctl has a flag)."""
    return set(flow_env_names())


def flow_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for flow processes: ``base`` minus adctl-only ``AD_*`` names."""
    env = dict(os.environ if base is None else base)
    drop = ADCTL_ENV - _flow_keys()
    return {k: v for k, v in env.items() if k not in drop}


def parse_time_arg(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    from control.history import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise CliError(
            f"not a time: {text!r}; use RFC 3339 (2024-05-01T00:00:00Z) or epoch seconds"
        ) from None


def json_obj(text: str) -> dict[str, Any]:
    out = json.loads(text) if text else {}
    if not isinstance(out, dict):
        raise ValueError("must be a JSON object")
    return out


def split_list(values: Sequence[str] | str | None) -> list[str]:
    """Sources given as a list and/or separated by ';' or whitespace in one string."""
    if not values:
        return []
    if isinstance(values, str):
        values = [values]
    return [x for v in values for x in v.replace(";", " ").split()]


def strip_query(url: str) -> str:
    return url.split("?", 1)[0] if url.startswith("kafka://") else url


def bootstrap_of(args: argparse.Namespace) -> str | None:
    if getattr(args, "bootstrap", None):
        return str(args.bootstrap)
    src = getattr(args, "input", None) or os.environ.get("AD_SOURCE", "")
    if src.startswith("kafka://"):
        parts = urlsplit(src)
        return f"{parts.hostname}:{parts.port or 9092}"
    return None


def add_field_options(p: argparse.ArgumentParser) -> None:
    """Add the record field and event-time range options to ``p``."""
    opt(p, "--key-field", env="AD_KEY_FIELD", default="sensor_id", help="record key field")
    opt(p, "--time-field", env="AD_TIME_FIELD", default="timestamp", help="event-time field")
    opt(p, "--value-field", env="AD_VALUE_FIELD", default="value", help="value field")
    opt(p, "--since", env="AD_SINCE", help="start of the event-time range (RFC 3339 or epoch s)")
    opt(p, "--until", env="AD_UNTIL", help="end of the event-time range (exclusive)")
