"""``/v1/tenants``: the tenant registry (settings, routing, quotas) and recent alerts."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from control import ops
from control.api.auth import Principal
from control.api.context import Api, caller
from state.tenants import Quota, Registry, Tenant, parse_tenant, update_registry

router = APIRouter(prefix="/v1/tenants", tags=["tenants"])
ALERTS_READ = caller("alerts.read")
QUOTA_WRITE = caller("quota.write")
TENANTS_READ = caller("tenants.read")
TENANTS_WRITE = caller("tenants.write")


class QuotaBody(BaseModel):
    """Limits; leave a field out for no limit."""

    rate: float | None = Field(None, gt=0, description="records per event-time second")
    burst: float | None = Field(None, gt=0, description="token bucket size (default: rate)")
    max_sensors: int | None = Field(None, gt=0)


class TenantBody(BaseModel):
    """A tenant's settings; a field left out falls back to the flow's own setting."""

    threshold: float | None = Field(None, ge=0, le=1)
    detector: str | None = Field(None, examples=["mad"])
    detector_params: dict[str, Any] | None = None
    window: Literal["tumbling", "sliding", "session", "none"] | None = None
    window_size: float | str | None = Field(None, examples=["60s"])
    window_slide: float | str | None = None
    session_gap: float | str | None = None
    alerts: str | None = Field(None, examples=["kafka://127.0.0.1:9092/alerts.{tenant}"])
    dead_letters: str | None = None
    quota: QuotaBody | None = None


def _api(request: Request) -> Api:
    api: Api = request.app.state.api
    if not api.cfg.registry:
        raise HTTPException(409, "no tenant registry is configured (adctl serve --registry)")
    return api


def _view(t: Tenant, reg: Registry) -> dict[str, Any]:
    return {"id": t.id, "default": t.id == reg.default_tenant, **t.to_dict()}


def _known(api: Api, request: Request, who: Principal, action: str, tenant: str) -> Tenant:
    t = api.registry().get(tenant)
    api.guard(request, who, action, t.id if t else None, f"tenant {tenant}")
    if t is None:  # the guard has raised already; this tells the type checker
        raise HTTPException(404, f"tenant {tenant} not found")
    return t


@router.get("", summary="the registry: tenants visible to the caller and its digest")
def tenants_list(request: Request, who: Principal = TENANTS_READ) -> dict[str, Any]:
    """The registry's digest and the tenants in the caller's scope (viewer)."""
    api = _api(request)
    api.require(request, who, "tenants.read")
    reg = api.registry()
    return {
        "digest": reg.digest,
        "default_tenant": reg.default_tenant if who.sees(reg.default_tenant) else None,
        "tenants": [_view(t, reg) for t in reg if who.sees(t.id)],
    }


@router.get("/{tenant}", summary="one tenant's settings")
def tenant_get(request: Request, tenant: str, who: Principal = TENANTS_READ) -> dict[str, Any]:
    """One tenant's settings (viewer)."""
    api = _api(request)
    return _view(_known(api, request, who, "tenants.read", tenant), api.registry())


@router.put("/{tenant}", summary="create or replace a tenant")
def tenant_put(
    request: Request,
    tenant: str,
    body: TenantBody,
    make_default: bool = Query(False, description="also make it the default tenant"),
    who: Principal = TENANTS_WRITE,
) -> dict[str, Any]:
    """Create or replace a tenant (admin; the default tenant needs ``*``)."""
    api = _api(request)
    api.guard(request, who, "tenants.write", tenant, f"tenant {tenant}")
    if make_default and not who.sees("*"):
        request.state.audit["denied"] = "default tenant needs all tenants in scope"
        raise HTTPException(403, "setting the default tenant needs a token for all tenants ('*')")
    new = parse_tenant(tenant, body.model_dump(exclude_none=True))
    for url in (new.alerts_url, new.dead_letters_url):
        if url and not any(url.startswith(p) for p in api.cfg.allow_urls):
            raise HTTPException(422, f"sink {url!r} is not under an allowed URL prefix")

    def change(reg: Registry) -> Registry:
        out = reg.with_tenant(new)
        return Registry(out.tenants, tenant if make_default else out.default_tenant)

    reg = update_registry(api.cfg.registry or "", change)
    return _view(new, reg)


@router.delete("/{tenant}", summary="remove a tenant")
def tenant_delete(request: Request, tenant: str, who: Principal = TENANTS_WRITE) -> dict[str, Any]:
    """Remove a tenant; the default tenant cannot be removed (admin)."""
    api = _api(request)
    _known(api, request, who, "tenants.write", tenant)
    reg = update_registry(api.cfg.registry or "", lambda r: r.without_tenant(tenant))
    return {"deleted": tenant, "digest": reg.digest}


@router.get("/{tenant}/quota", summary="a tenant's quota")
def quota_get(request: Request, tenant: str, who: Principal = TENANTS_READ) -> dict[str, Any]:
    """A tenant's quota (viewer)."""
    api = _api(request)
    return _known(api, request, who, "tenants.read", tenant).quota.to_dict()


@router.put("/{tenant}/quota", summary="set a tenant's quota")
def quota_put(
    request: Request, tenant: str, body: QuotaBody, who: Principal = QUOTA_WRITE
) -> dict[str, Any]:
    """Replace a tenant's quota (admin)."""
    api = _api(request)
    current = _known(api, request, who, "quota.write", tenant)
    data = {**current.to_dict(), "quota": body.model_dump(exclude_none=True)}
    new = parse_tenant(tenant, data)
    update_registry(api.cfg.registry or "", lambda r: r.with_tenant(new))
    return new.quota.to_dict() if new.quota != Quota() else {}


@router.get("/{tenant}/alerts", summary="a tenant's most recent alerts, from its alert sink")
def alerts_recent(
    request: Request,
    tenant: str,
    limit: int = Query(100, ge=1, le=10000),
    since: float | None = Query(None, ge=0, description="epoch s (Kafka: by record time)"),
    who: Principal = ALERTS_READ,
) -> dict[str, Any]:
    """The tenant's latest alerts from its alert sink (viewer)."""
    api = _api(request)
    t = _known(api, request, who, "alerts.read", tenant)
    sink = t.alerts_url or api.cfg.alerts
    if not sink:
        raise HTTPException(409, f"tenant {tenant} has no alert sink (registry alerts or --alerts)")
    if since is None:
        since = time.time() - 86400.0
    rows = ops.recent_alerts([sink], tenant=tenant, limit=limit, since=since)
    return {"tenant": tenant, "alerts": rows}
