"""The control-marker codec, shared by the control plane (writes) and the flow (reads).

A marker's value is ``b"#ADCTL"`` followed by UTF-8 JSON ``{"type": "model", "detector":
..., "version": ..., "model_ref": ...}``. It sits at an input position, so the flow
applies it at the same point on every replay.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MARKER_PREFIX", "MarkerInvalid", "decode_marker", "encode_marker", "is_marker"]

MARKER_PREFIX = b"#ADCTL"


class MarkerInvalid(ValueError):
    """A value that starts with the marker prefix but is not a valid marker."""


def is_marker(value: bytes | None) -> bool:
    """Whether ``value`` is meant as a control marker (starts with the prefix)."""
    return value is not None and value[: len(MARKER_PREFIX)] == MARKER_PREFIX


def encode_marker(detector: str, version: str, model_ref: str) -> bytes:
    """The bytes of a model-switch marker."""
    body = {"type": "model", "detector": detector, "version": version, "model_ref": model_ref}
    return MARKER_PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_marker(value: bytes | None) -> dict[str, Any] | None:
    """The marker's body if ``value`` is a control marker, else ``None``.

    A body is a JSON object with ``type`` ``"model"`` and a non-empty ``version``;
    ``detector`` and ``model_ref`` are strings when present. Raises
    :class:`MarkerInvalid` for a value with the prefix that is not such a marker (the
    flow dead-letters it as ``bad_control`` rather than reading it as data).
    """
    if not is_marker(value):
        return None
    assert value is not None  # noqa: S101 - narrowing: is_marker(None) is False
    try:
        body = json.loads(value[len(MARKER_PREFIX) :].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise MarkerInvalid(f"control marker is not JSON: {exc}") from None
    if not isinstance(body, dict) or "type" not in body:
        raise MarkerInvalid("control marker without a type")
    if body["type"] != "model":
        raise MarkerInvalid(f"unknown control marker type {str(body['type'])[:50]!r}")
    if not isinstance(body.get("version"), str) or not body["version"]:
        raise MarkerInvalid("control marker lacks 'version'")
    for k in ("detector", "model_ref"):
        if k in body and not isinstance(body[k], str):
            raise MarkerInvalid(f"control marker's {k!r} is not a string")
    return body
