"""The audit log: append-only JSON lines, hash-chained so that editing, inserting or
deleting a line is detected by :func:`verify`.

Each line is a JSON object with the event fields plus ``prev`` (the ``hash`` of the line
before it; 64 zeros for the first) and ``hash`` (SHA-256 of the line's canonical JSON
without ``hash``). Appends hold an exclusive ``flock``, so several processes may share a
file. Cutting lines off the end leaves a valid shorter chain: keep the head hash that
``adctl audit verify`` prints somewhere else to detect that too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "AuditLog", "Verdict", "verify"]

GENESIS = "0" * 64


def _digest(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _last_line(fh: Any) -> bytes:
    """The last non-empty line of an open binary file (read backwards in blocks)."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    buf = b""
    pos = end
    while pos > 0:
        step = min(65536, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        lines = buf.rstrip(b"\n").split(b"\n")
        if len(lines) > 1 or pos == 0:
            return lines[-1]
    return b""


class AuditLog:
    """Append events to a hash-chained JSON-lines file.

    Args:
        path: the JSON-lines file (created on the first event).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, **event: Any) -> dict[str, Any]:
        """Append one event (``time`` is added); return the written record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                last = _last_line(fh)
                prev = json.loads(last)["hash"] if last else GENESIS
                record = {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    **event,
                    "prev": prev,
                }
                record["hash"] = _digest(record)
                line = json.dumps(record, sort_keys=True, separators=(",", ":"))
                fh.seek(0, os.SEEK_END)
                fh.write(line.encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return record


@dataclass(frozen=True)
class Verdict:
    """The result of :func:`verify`: lines checked, first bad line (1-based), head hash."""

    lines: int
    bad_line: int | None
    reason: str
    head: str

    @property
    def ok(self) -> bool:
        """True if the whole chain verified."""
        return self.bad_line is None


def verify(path: str | Path) -> Verdict:
    """Check every line's hash and its link to the line before it."""
    prev = GENESIS
    n = 0
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):  # noqa: B007 - n is the count afterwards
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError:
                return Verdict(n, n, "not a JSON object", prev)
            if record.get("prev") != prev:
                return Verdict(n, n, "does not link to the line before it", prev)
            if record.get("hash") != _digest(record):
                return Verdict(n, n, "its content does not match its hash", prev)
            prev = record["hash"]
    return Verdict(n, None, "", prev)
