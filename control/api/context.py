"""Per-request access control and the server's shared state.

``caller(action)`` is the FastAPI dependency that authenticates a request (401 without
valid credentials); ``Api.guard`` then checks the tenant scope (404 outside it) and the
role (403). Both leave what happened in ``request.state.audit`` for the audit
middleware (:mod:`control.api.app`), which writes one line per mutating call or denial.
"""

from __future__ import annotations

import threading
from typing import Any

from fastapi import Depends, HTTPException, Request

from control.api.audit import AuditLog
from control.api.auth import ACTIONS, Authenticator, AuthError, Principal
from control.api.config import ApiConfig
from control.api.keys import KeyStore
from state.tenants import Registry, RegistryError, check_tenant_id, load_registry

__all__ = ["Api", "caller"]


class Api:
    """What every route needs: configuration, authenticator, audit log, keys, locks.

    Args:
        cfg: the API's configuration.
        base_env: the environment flows started through the API get, before their settings.
        flow_keys: the ``AD_*`` names a flow's settings may use.
    """

    def __init__(self, cfg: ApiConfig, base_env: dict[str, str], flow_keys: set[str]) -> None:
        self.cfg = cfg
        self.keys = KeyStore(cfg.keys_file) if cfg.keys_file else None
        self.authn = Authenticator(cfg.jwt, self.keys)
        self.audit = AuditLog(cfg.audit_log)
        self.base_env = base_env
        self.flow_keys = flow_keys
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def registry(self) -> Registry:
        """The tenant registry now (empty when none is configured or written yet)."""
        if not self.cfg.registry:
            return Registry(tenants={})
        return load_registry(self.cfg.registry, missing_ok=True)

    def tenant_exists(self, tenant: str) -> bool:
        """In the registry, or any valid id when no registry is configured."""
        if self.cfg.registry:
            return self.registry().get(tenant) is not None
        try:
            return bool(check_tenant_id(tenant))
        except RegistryError:
            return False

    def lock(self, name: str) -> threading.Lock:
        """One lock per flow: its run/stop/scale calls do not overlap."""
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def require(self, request: Request, who: Principal, action: str) -> None:
        """403 unless ``who`` has the role ``action`` needs (for lists, not one tenant)."""
        if not who.may(action):
            request.state.audit["denied"] = f"needs role {ACTIONS[action]}"
            raise HTTPException(403, f"{action} needs role {ACTIONS[action]}")

    def guard(
        self, request: Request, who: Principal, action: str, tenant: str | None, target: str
    ) -> None:
        """404 unless ``tenant`` exists (not None) and is in scope; 403 without the role."""
        note = request.state.audit
        note.update(tenant=tenant, target=target)
        if tenant is None or not who.sees(tenant):
            note["denied"] = "out of scope or missing"
            raise HTTPException(404, f"{target} not found")
        self.require(request, who, action)


def caller(action: str) -> Any:
    """Dependency: the authenticated :class:`Principal` for ``action`` (or 401)."""

    def dep(request: Request) -> Principal:
        api: Api = request.app.state.api
        request.state.audit = {"action": action, "target": request.url.path}
        try:
            # authenticated already by the audit middleware (before the body is read)
            who = getattr(request.state, "principal", None) or api.authn.authenticate(
                request.headers.get("authorization")
            )
        except AuthError as exc:
            request.state.audit["denied"] = str(exc)
            raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
        request.state.audit.update(who=who.subject, role=who.role, kind=who.kind)
        return who

    dep.__name__ = f"caller_{action.replace('.', '_')}"
    dep.action = action  # type: ignore[attr-defined]  # read by the audit middleware
    return Depends(dep)
