"""``/v1/tenants/{tenant}/models``: stored versions, retrain and push-model, in the
tenant's own area of the model store and into the tenant's own flows.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from control import ops
from control.api.auth import Principal
from control.api.context import Api, caller
from control.api.resources import FlowRef, find_flow, flow_settings, flow_source, tenant_store

router = APIRouter(prefix="/v1/tenants/{tenant}/models", tags=["models"])
MODELS_PUSH = caller("models.push")
MODELS_READ = caller("models.read")
MODELS_RETRAIN = caller("models.retrain")


class PushRequest(BaseModel):
    """Switch a flow of the tenant to a stored version (``latest``: the newest)."""

    flow: str = Field(examples=["acme-main"])
    version: str = Field("latest", examples=["v3"])


class RetrainRequest(BaseModel):
    """Train on the flow's input (its history) and store a new version."""

    flow: str = Field(examples=["acme-main"])
    since: float | None = Field(None, ge=0, description="epoch s")
    until: float | None = Field(None, ge=0, description="epoch s (exclusive)")
    params: dict[str, Any] = Field(default_factory=dict)
    version: str | None = Field(None, examples=["v4"])
    push: bool = False


def _store(request: Request, who: Principal, action: str, tenant: str) -> tuple[Api, str]:
    api: Api = request.app.state.api
    ok = api.tenant_exists(tenant)
    api.guard(request, who, action, tenant if ok else None, f"tenant {tenant}")
    if not api.cfg.model_store:
        raise HTTPException(409, "no model store is configured (adctl serve --model-store)")
    return api, tenant_store(api.cfg.model_store, tenant)


def _tenant_flow(api: Api, tenant: str, name: str) -> FlowRef:
    flow = find_flow(api.cfg, name)
    if flow is None or flow.tenant != tenant:
        raise HTTPException(404, f"flow {name} not found")
    return flow


@router.get("/{detector}", summary="stored versions of a detector (`adctl models`)")
def models_list(
    request: Request, tenant: str, detector: str, who: Principal = MODELS_READ
) -> list[dict[str, str]]:
    """Stored versions of ``detector`` in the tenant's model store (viewer)."""
    _api, store = _store(request, who, "models.read", tenant)
    return ops.list_models(store, detector)


@router.post("/{detector}/push", summary="switch a flow to a version (`adctl push-model`)")
def models_push(
    request: Request,
    tenant: str,
    detector: str,
    body: PushRequest,
    who: Principal = MODELS_PUSH,
) -> dict[str, Any]:
    """Switch one of the tenant's flows to a stored version (operator)."""
    api, store = _store(request, who, "models.push", tenant)
    source = flow_source(_tenant_flow(api, tenant, body.flow))
    announce = ops.Announce(ops.kafka_bootstrap(source), api.cfg.control_topic)
    return ops.push_model(store, detector, body.version, source, announce)


@router.post("/{detector}/retrain", summary="train and store a new version (`adctl retrain`)")
def models_retrain(
    request: Request,
    tenant: str,
    detector: str,
    body: RetrainRequest,
    who: Principal = MODELS_RETRAIN,
) -> dict[str, Any]:
    """Train on one of the tenant's flows' input and store a version (operator)."""
    from control.history_columns import default_tenant_of

    api, store = _store(request, who, "models.retrain", tenant)
    flow = _tenant_flow(api, tenant, body.flow)
    env = flow_settings(flow)
    source = flow_source(flow, env)
    return ops.retrain(
        [source],
        # models keyed as the flow keys its state: records without a tenant get the
        # flow's default tenant
        default_tenant=default_tenant_of(
            env.get("AD_DEFAULT_TENANT", ""), env.get("AD_TENANTS", "")
        )
        or None,
        store=store,
        detector=detector,
        since=body.since,
        until=body.until,
        params=body.params,
        version=body.version,
        scheduler=api.cfg.dask_scheduler,
        dask_workers=api.cfg.dask_workers,
        push_input=source if body.push else None,
        announce=ops.Announce(ops.kafka_bootstrap(source), api.cfg.control_topic),
    )
