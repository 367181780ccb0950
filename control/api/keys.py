"""API keys for service accounts, stored only as salted scrypt hashes.

A key reads ``adk_<id>_<secret>``; the keys file (JSON, written atomically, mode 0600)
holds per id the role, the tenants, a name, the creation time and
``scrypt$<n>$<r>$<p>$<salt>$<hash>``. The secret itself is shown once, by
``adctl keys create`` or ``POST /v1/keys``, and never stored.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["ROLES", "ApiKey", "ApiKeyError", "KeyStore", "check_role", "check_tenants"]

ROLES = ("viewer", "operator", "admin")
PREFIX = "adk_"
_KEY = re.compile(r"^adk_([0-9a-f]{16})_([A-Za-z0-9_-]{32,128})$")
_TENANT = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
_N, _R, _P = 2**14, 8, 1


class ApiKeyError(ValueError):
    """A key could not be created, found or parsed."""


def check_role(role: str) -> str:
    """``role`` if it is one of :data:`ROLES`, else :class:`ApiKeyError`."""
    if role not in ROLES:
        raise ApiKeyError(f"unknown role {role!r}; use one of {', '.join(ROLES)} (e.g. viewer)")
    return role


def check_tenants(tenants: Sequence[str]) -> tuple[str, ...]:
    """The sorted distinct tenant ids (or ``*``), else :class:`ApiKeyError`."""
    out = tuple(sorted(set(tenants)))
    if not out or not all(isinstance(t, str) and _TENANT.match(t) for t in out):
        raise ApiKeyError(f"tenants must be tenant ids or '*' (e.g. acme), got {list(tenants)!r}")
    return out


def _hash(secret: str, salt: bytes, n: int = _N, r: int = _R, p: int = _P) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class ApiKey:
    """A stored key (no secret): who it is for and what it may do."""

    id: str
    role: str
    tenants: tuple[str, ...]
    name: str
    created: float
    hash: str

    def public(self) -> dict[str, Any]:
        """The key's description without its hash."""
        return {
            "id": self.id,
            "role": self.role,
            "tenants": list(self.tenants),
            "name": self.name,
            "created": self.created,
        }


class KeyStore:
    """The keys file: create, list, revoke and verify keys.

    Args:
        path: the keys file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ok: dict[str, str] = {}  # sha256(key) -> id, for keys verified before

    def _read(self) -> dict[str, ApiKey]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {
                k: ApiKey(**{**v, "id": k, "tenants": tuple(v["tenants"])})
                for k, v in data.get("keys", {}).items()
            }
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ApiKeyError(f"keys file {str(self.path)!r} is unreadable: {exc}") from None

    def _write(self, keys: dict[str, ApiKey]) -> None:
        body = {
            "keys": {k: {f: v for f, v in asdict(x).items() if f != "id"} for k, x in keys.items()}
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(body, fh, indent=2, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @contextmanager
    def _locked(self) -> Iterator[dict[str, ApiKey]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path.with_name(f".{self.path.name}.lock"), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                yield self._read()
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def list(self) -> list[ApiKey]:
        """Every stored key, oldest first."""
        return sorted(self._read().values(), key=lambda k: k.created)

    def get(self, key_id: str) -> ApiKey | None:
        """The key ``key_id``, or None."""
        return self._read().get(key_id)

    def create(self, role: str, tenants: Sequence[str], name: str = "") -> tuple[ApiKey, str]:
        """Store a new key; return it and the secret key text (shown once)."""
        check_role(role)
        tenants = check_tenants(tenants)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        stored = f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(_hash(secret, salt))}"
        key = ApiKey(key_id, role, tenants, name[:200], time.time(), stored)
        with self._locked() as keys:
            keys[key_id] = key
            self._write(keys)
        return key, f"{PREFIX}{key_id}_{secret}"

    def revoke(self, key_id: str) -> bool:
        """Remove the key ``key_id``; False if there was none."""
        with self._locked() as keys:
            if keys.pop(key_id, None) is None:
                return False
            self._write(keys)
        self._ok = {h: k for h, k in self._ok.items() if k != key_id}
        return True

    def verify(self, text: str) -> ApiKey | None:
        """The stored key that ``text`` is, or None (unknown, revoked or wrong secret)."""
        m = _KEY.match(text)
        if not m:
            return None
        key_id, secret = m.groups()
        key = self._read().get(key_id)
        if key is None:
            return None
        digest = hashlib.sha256(text.encode()).hexdigest()
        if self._ok.get(digest) == key_id:
            return key
        try:
            _scheme, n, r, p, salt, want = key.hash.split("$")
            got = _hash(secret, _unb64(salt), int(n), int(r), int(p))
        except ValueError:
            return None
        if not hmac.compare_digest(got, _unb64(want)):
            return None
        self._ok[digest] = key_id
        return key
