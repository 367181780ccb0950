"""Who is calling, and what they may do.

Authentication: ``Authorization: Bearer <token>`` where the token is an API key
(``adk_...``, see :mod:`control.api.keys`) or a JWT verified against a JWKS (a local
file or an OIDC provider's URL) or a local key (a PEM public key, or a shared secret
file for HS256). A JWT must carry ``exp``, ``sub``, ``role`` (viewer, operator or admin)
and ``tenants`` (a list of tenant ids, or ``"*"`` for all); ``iss``/``aud`` are checked
when configured.

Authorisation: roles are ordered viewer < operator < admin; every action needs a role
and a tenant in the caller's scope. A resource of a tenant outside the scope is
reported as not found (404), never as forbidden, so its existence does not leak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from control.api.keys import PREFIX, ROLES, KeyStore

__all__ = [
    "ACTIONS",
    "AuthError",
    "Authenticator",
    "JwtConfig",
    "Principal",
]

#: the role each action needs
ACTIONS: dict[str, str] = {
    "flows.read": "viewer",
    "models.read": "viewer",
    "alerts.read": "viewer",
    "tenants.read": "viewer",
    "flows.run": "operator",
    "flows.stop": "operator",
    "flows.scale": "operator",
    "models.push": "operator",
    "models.retrain": "operator",
    "tenants.write": "admin",
    "quota.write": "admin",
    "keys.read": "admin",
    "keys.write": "admin",
}


class AuthError(Exception):
    """No usable credentials (401); the message never contains the token."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str  # JWT ``sub`` or ``key:<id>``
    role: str
    tenants: frozenset[str]
    kind: str  # "jwt" or "key"

    def sees(self, tenant: str | None) -> bool:
        """True if ``tenant`` is in scope; ``"*"`` (shared resources) needs ``"*"``."""
        return "*" in self.tenants or (tenant is not None and tenant in self.tenants)

    def may(self, action: str) -> bool:
        """True if the role suffices for ``action`` (a key of :data:`ACTIONS`)."""
        return ROLES.index(self.role) >= ROLES.index(ACTIONS[action])

    def outranks(self, role: str) -> bool:
        """True if the caller's role is ``role`` or above (it may grant ``role``)."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class JwtConfig:
    """How JWTs are verified: a JWKS (path or URL) or a key file, and optional claims."""

    jwks: str | None = None
    key_file: str | None = None
    issuer: str | None = None
    audience: str | None = None
    leeway: float = 0.0


_ASYM = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]


class Authenticator:
    """Turns a bearer token into a :class:`Principal`, or raises :class:`AuthError`.

    Args:
        jwt_config: how JWTs are verified (``None``: the defaults).
        keys: the API keys store (``None``: no API keys).
    """

    def __init__(self, jwt_config: JwtConfig | None, keys: KeyStore | None) -> None:
        self.cfg = jwt_config or JwtConfig()
        self.keys = keys
        self._jwks_client: jwt.PyJWKClient | None = None
        self._jwks: jwt.PyJWKSet | None = None
        self._key: Any = None
        self._algs: list[str] = []
        if self.cfg.jwks and self.cfg.key_file:
            raise ValueError("give a JWKS or a JWT key file, not both")
        if self.cfg.jwks:
            if self.cfg.jwks.startswith(("http://", "https://")):
                self._jwks_client = jwt.PyJWKClient(self.cfg.jwks, cache_keys=True)
            else:
                self._jwks = jwt.PyJWKSet.from_json(Path(self.cfg.jwks).read_text())
            self._algs = _ASYM
        elif self.cfg.key_file:
            raw = Path(self.cfg.key_file).read_bytes()
            if b"-----BEGIN" in raw:
                self._key, self._algs = raw, _ASYM
            else:
                self._key, self._algs = raw.strip(), ["HS256", "HS384", "HS512"]
                if len(self._key) < 32:
                    raise ValueError("the JWT secret file must hold at least 32 bytes")

    @property
    def jwt_enabled(self) -> bool:
        """True if JWTs are accepted (a JWKS or a key file is configured)."""
        return bool(self._algs)

    def authenticate(self, header: str | None) -> Principal:
        """The caller of an ``Authorization`` header value; :class:`AuthError` if none."""
        if not header:
            raise AuthError("missing bearer token")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("expected 'Authorization: Bearer <token>'")
        if token.startswith(PREFIX):
            return self._api_key(token)
        return self._jwt(token)

    def _api_key(self, token: str) -> Principal:
        key = self.keys.verify(token) if self.keys is not None else None
        if key is None:
            raise AuthError("invalid API key")
        return Principal(f"key:{key.id}", key.role, frozenset(key.tenants), "key")

    def _signing_key(self, token: str) -> Any:
        if self._jwks_client is not None:
            return self._jwks_client.get_signing_key_from_jwt(token).key
        if self._jwks is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            for k in self._jwks.keys:
                if kid is None or k.key_id == kid:
                    return k.key
            raise AuthError("invalid token: unknown signing key")
        return self._key

    def _jwt(self, token: str) -> Principal:
        if not self.jwt_enabled:
            raise AuthError("invalid token: JWTs are not accepted here")
        try:
            claims = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=self._algs,
                issuer=self.cfg.issuer,
                audience=self.cfg.audience,
                leeway=self.cfg.leeway,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self.cfg.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("invalid token: expired") from None
        except (jwt.PyJWTError, ValueError, json.JSONDecodeError):
            raise AuthError("invalid token") from None
        role, tenants = claims.get("role"), claims.get("tenants")
        if tenants == "*":
            tenants = ["*"]
        if (
            role not in ROLES
            or not isinstance(tenants, list)
            or not all(isinstance(t, str) for t in tenants)
            or not isinstance(claims.get("sub"), str)
        ):
            raise AuthError("invalid token: needs the claims sub, role and tenants")
        return Principal(claims["sub"], role, frozenset(tenants), "jwt")
