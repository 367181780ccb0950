"""The control-marker codec, shared by the control plane (writes) and the flow (reads).

A marker's value is ``b"#ADCTL"`` followed by UTF-8 JSON ``{"type": "model", "detector":
..., "version": ..., "model_ref": ..., "sig": ...}`` (a model switch) or ``{"type":
"tenants", "version": <registry digest>, "registry_ref": ..., "sig": ...}`` (a tenant
registry switch). It sits at an input position, so the flow applies it at the same point
on every replay.

Markers are signed: ``sig`` is the hex HMAC-SHA256, under a key only the control plane
and the flows hold (``AD_CONTROL_KEY``), of the canonical JSON of the other fields. A
flow takes no marker without a valid signature (and none at all without a key), so a
producer of sensor data cannot switch models.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

__all__ = [
    "MARKER_PREFIX",
    "MIN_KEY_BYTES",
    "MarkerInvalid",
    "decode_marker",
    "encode_marker",
    "encode_registry_marker",
    "is_marker",
]

MARKER_PREFIX = b"#ADCTL"
#: the shortest control key accepted (bytes of its UTF-8 text)
MIN_KEY_BYTES = 16


class MarkerInvalid(ValueError):
    """A value that starts with the marker prefix but is not a valid, signed marker."""


def is_marker(value: bytes | None) -> bool:
    """Whether ``value`` is meant as a control marker (starts with the prefix)."""
    return value is not None and value[: len(MARKER_PREFIX)] == MARKER_PREFIX


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _sign(body: dict[str, Any], key: bytes) -> str:
    return hmac.new(key, _canonical(body), hashlib.sha256).hexdigest()


def encode_marker(detector: str, version: str, model_ref: str, key: bytes) -> bytes:
    """The bytes of a model-switch marker, signed with ``key``."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the control key must have at least {MIN_KEY_BYTES} bytes")
    body: dict[str, Any] = {
        "type": "model",
        "detector": detector,
        "version": version,
        "model_ref": model_ref,
    }
    body["sig"] = _sign(body, key)
    return MARKER_PREFIX + _canonical(body)


def encode_registry_marker(digest: str, registry_ref: str, key: bytes) -> bytes:
    """The bytes of a tenant-registry switch marker (``registry_ref``: a registry stored
    with ``state.tenants.store_registry``; ``digest``: its content digest), signed with
    ``key``.
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the control key must have at least {MIN_KEY_BYTES} bytes")
    body: dict[str, Any] = {"type": "tenants", "version": digest, "registry_ref": registry_ref}
    body["sig"] = _sign(body, key)
    return MARKER_PREFIX + _canonical(body)


def decode_marker(value: bytes | None, key: bytes | None) -> dict[str, Any] | None:
    """The marker's body (without ``sig``) if ``value`` is a control marker, else ``None``.

    A body is a JSON object with ``type`` ``"model"`` (string ``detector``/``model_ref``
    when present) or ``"tenants"`` (a non-empty ``registry_ref``), a non-empty
    ``version``, and a ``sig`` that matches under ``key``.
    Raises :class:`MarkerInvalid` for a value with the prefix that is not such a marker
    (the flow dead-letters it as ``bad_control`` rather than reading it as data).
    """
    if not is_marker(value):
        return None
    assert value is not None  # noqa: S101 - narrowing: is_marker checked it
    try:
        body = json.loads(value[len(MARKER_PREFIX) :].decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise MarkerInvalid(f"control marker is not JSON: {exc}") from None
    if not isinstance(body, dict) or "type" not in body:
        raise MarkerInvalid("control marker without a type")
    if body["type"] not in ("model", "tenants"):
        raise MarkerInvalid(f"unknown control marker type {str(body['type'])[:50]!r}")
    if not isinstance(body.get("version"), str) or not body["version"]:
        raise MarkerInvalid("control marker lacks 'version'")
    if body["type"] == "tenants" and not (
        isinstance(body.get("registry_ref"), str) and body["registry_ref"]
    ):
        raise MarkerInvalid("tenant registry marker lacks 'registry_ref'")
    for k in ("detector", "model_ref", "registry_ref"):
        if k in body and not isinstance(body[k], str):
            raise MarkerInvalid(f"control marker's {k!r} is not a string")
    sig = body.pop("sig", None)
    if not key:
        raise MarkerInvalid("control markers are refused: the flow has no AD_CONTROL_KEY")
    if not isinstance(sig, str):
        raise MarkerInvalid("unsigned control marker (adctl signs them with AD_CONTROL_KEY)")
    if not hmac.compare_digest(sig, _sign(body, key)):
        raise MarkerInvalid("control marker's signature does not match AD_CONTROL_KEY")
    return body
