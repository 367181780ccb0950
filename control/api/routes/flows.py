"""``/v1/flows``: status and lag, run, stop and scale of named flows."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from control import ops
from control.api.auth import Principal
from control.api.context import Api, caller
from control.api.resources import (
    FlowRef,
    allowed_env,
    find_flow,
    flow_settings,
    flow_source,
    list_flows,
    new_flow,
)
from control.api.resources import tenant_store as store_of
from control.launch import cores

router = APIRouter(prefix="/v1/flows", tags=["flows"])

OWNER = r"^(\*|[A-Za-z0-9][A-Za-z0-9._-]{0,63})$"
FLOWS_READ = caller("flows.read")
FLOWS_RUN = caller("flows.run")
FLOWS_SCALE = caller("flows.scale")
FLOWS_STOP = caller("flows.stop")
TENANTS_WRITE = caller("tenants.write")


class RunRequest(BaseModel):
    """Start a flow (created on first run, owned by ``tenant``; ``*``: all tenants)."""

    tenant: str = Field(pattern=OWNER, examples=["acme"])
    workers: int = Field(1, ge=1, le=64)
    processes: int | None = Field(
        None, ge=1, le=16, description="Bytewax processes; left out: one per core"
    )
    snapshot_interval: int = Field(5, ge=1, le=3600)
    env: dict[str, str] = Field(default_factory=dict, examples=[{"AD_WINDOW": "none"}])
    tenants: bool = Field(
        False,
        description="a shared flow only: apply the tenant registry, as stored (an "
        "immutable version) at this start; later versions reach it with "
        "POST /v1/flows/{name}/registry",
    )


class StopRequest(BaseModel):
    """Stop cleanly within ``timeout`` seconds (then SIGKILL), or kill at once."""

    timeout: float = Field(60.0, gt=0, le=600)
    kill: bool = False


class ScaleRequest(BaseModel):
    """New parallelism; ``processes`` left out keeps the current number."""

    workers: int = Field(ge=1, le=64)
    processes: int | None = Field(None, ge=1, le=16)
    timeout: float = Field(60.0, gt=0, le=600)


def _api(request: Request) -> Api:
    return request.app.state.api


def _flow(request: Request, who: Principal, action: str, name: str) -> FlowRef:
    flow = find_flow(_api(request).cfg, name)
    _api(request).guard(request, who, action, flow.tenant if flow else None, f"flow {name}")
    if flow is None:  # the guard has raised already; this tells the type checker
        raise HTTPException(404, f"flow {name} not found")
    return flow


@router.get("", summary="flows visible to the caller")
def flows_list(request: Request, who: Principal = FLOWS_READ) -> list[dict[str, Any]]:
    """Flows whose tenant is in the caller's scope (viewer)."""
    api = _api(request)
    api.require(request, who, "flows.read")
    return [
        {"name": f.name, "tenant": f.tenant, **ops.flow_info(f.dir)}
        for f in list_flows(api.cfg)
        if who.sees(f.tenant)
    ]


@router.get("/{name}", summary="status and lag of a flow (as `adctl status --json`)")
def flow_status(
    request: Request,
    name: str,
    interval: float = Query(0.0, ge=0, le=10, description="seconds between scrapes (rates)"),
    who: Principal = FLOWS_READ,
) -> dict[str, Any]:
    """Status and lag of a flow in scope (viewer)."""
    flow = _flow(request, who, "flows.read", name)
    return {"name": flow.name, "tenant": flow.tenant, **ops.flow_status(flow.dir, None, interval)}


@router.post("/{name}/run", summary="start a flow (`adctl run`)")
def flow_run(
    request: Request, name: str, body: RunRequest, who: Principal = FLOWS_RUN
) -> dict[str, Any]:
    """Start a flow; the first run creates it for ``tenant`` (operator)."""
    from control.launch import free_ports
    from control.supervisor import FlowSpec

    api = _api(request)
    flow = find_flow(api.cfg, name)
    owner = flow.tenant if flow else body.tenant
    known = owner == "*" or api.tenant_exists(owner)
    api.guard(request, who, "flows.run", owner if known else None, f"flow {name}")
    if flow is not None and flow.tenant != body.tenant:
        raise HTTPException(409, f"flow {name} belongs to tenant {flow.tenant!r}")
    allowed_env(body.env, api.cfg.allow_urls, api.flow_keys)
    env = dict(body.env)
    env.setdefault("AD_METRICS_PORT", str(free_ports(1)[0]))
    if api.cfg.model_store:
        store = api.cfg.model_store
        env["AD_MODEL_STORE"] = store if owner == "*" else store_of(store, owner)
    if body.tenants:  # the registry as stored now: an immutable version
        from state.tenants import load_registry, store_registry

        store, path = _registry_of(api, owner)
        env["AD_TENANTS"] = store_registry(store, load_registry(path))
    spec = FlowSpec(
        module=api.cfg.module,
        workers=body.workers,
        processes=body.processes or cores(),
        snapshot_interval=body.snapshot_interval,
        env=env,
    )
    with api.lock(name):
        flow = flow or new_flow(api.cfg, name, owner)
        pids = ops.run_flow(flow.dir, spec, api.base_env)
    return {"name": name, "tenant": owner, "pids": pids, **ops.flow_info(flow.dir)}


@router.post("/{name}/stop", summary="stop a flow cleanly, or kill it (`adctl stop`)")
def flow_stop(
    request: Request, name: str, body: StopRequest, who: Principal = FLOWS_STOP
) -> dict[str, Any]:
    """Stop a flow in scope (operator)."""
    flow = _flow(request, who, "flows.stop", name)
    with _api(request).lock(name):
        res = ops.stop_flow(flow.dir, timeout=body.timeout, kill=body.kill)
    return {"name": name, **asdict(res)}


@router.post("/{name}/scale", summary="restart from the recovery store (`adctl scale`)")
def flow_scale(
    request: Request, name: str, body: ScaleRequest, who: Principal = FLOWS_SCALE
) -> dict[str, Any]:
    """Restart a flow in scope from its recovery store with new parallelism (operator)."""
    flow = _flow(request, who, "flows.scale", name)
    api = _api(request)
    with api.lock(name):
        spec = ops.scale_flow(flow.dir, body.workers, body.processes, body.timeout, api.base_env)
    return {"name": name, "workers": spec.workers, "processes": spec.processes}


def _registry_of(api: Api, owner: str) -> tuple[str, str]:
    """(model store, registry path) for a shared flow's tenant registry, or 409."""
    if owner != "*":
        raise HTTPException(409, "only a shared flow (tenant '*') applies the tenant registry")
    if not api.cfg.registry or not api.cfg.model_store:
        raise HTTPException(
            409, "the tenant registry needs adctl serve --registry and --model-store"
        )
    return api.cfg.model_store, api.cfg.registry


@router.post(
    "/{name}/registry",
    summary="apply the tenant registry to a shared flow (`adctl tenants push`)",
)
def flow_registry_push(
    request: Request, name: str, who: Principal = TENANTS_WRITE
) -> dict[str, Any]:
    """Store the registry (``adctl serve --registry``) in the model store and write a
    signed registry marker into every partition of a shared flow's input: the flow
    applies it at that position, so a replay applies it at the same record (admin of
    every tenant: the registry is every tenant's).
    """
    flow = _flow(request, who, "tenants.write", name)
    api = _api(request)
    store, path = _registry_of(api, flow.tenant)
    settings = flow_settings(flow)
    if "AD_TENANTS" not in settings:
        raise HTTPException(
            409, f"flow {name} runs without the tenant registry (run it with tenants)"
        )
    source = flow_source(flow, settings)
    return {"name": name, **ops.push_registry(store, path, source)}


tenant_router = APIRouter(prefix="/v1/tenants/{tenant}/flows", tags=["flows"])


def _tenant_flow(request: Request, who: Principal, tenant: str, name: str) -> FlowRef:
    """A flow the tenant owns or shares ("*"); 404 for any other."""
    api = _api(request)
    flow = find_flow(api.cfg, name)
    known = tenant if api.tenant_exists(tenant) else None
    if flow is None or flow.tenant not in (tenant, "*"):
        known = None
    api.guard(request, who, "flows.read", known, f"flow {name} of tenant {tenant}")
    if flow is None:  # the guard has raised already; this tells the type checker
        raise HTTPException(404, f"flow {name} not found")
    return flow


@tenant_router.get("", summary="the tenant's flows and the shared ones")
def tenant_flows(
    request: Request, tenant: str, who: Principal = FLOWS_READ
) -> list[dict[str, Any]]:
    """The tenant's own and the shared flows (viewer)."""
    api = _api(request)
    api.guard(request, who, "flows.read", tenant if api.tenant_exists(tenant) else None, tenant)
    return [
        {"name": f.name, "tenant": f.tenant, **ops.flow_info(f.dir)}
        for f in list_flows(api.cfg)
        if f.tenant in (tenant, "*")
    ]


@tenant_router.get("/{name}", summary="a flow's status as the tenant sees it")
def tenant_flow_status(
    request: Request,
    tenant: str,
    name: str,
    interval: float = Query(0.0, ge=0, le=10, description="seconds between scrapes (rates)"),
    who: Principal = FLOWS_READ,
) -> dict[str, Any]:
    """A shared flow shows only the series labelled with the tenant (no input lag, no
    pids); a flow of the tenant's own shows everything.
    """
    flow = _tenant_flow(request, who, tenant, name)
    shared = flow.tenant == "*"
    st = ops.flow_status(flow.dir, None, interval, tenant=tenant if shared else None)
    if shared:
        st.pop("pids", None)
    return {"name": flow.name, "tenant": flow.tenant, "shared": shared, **st}
