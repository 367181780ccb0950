"""``/v1/keys``: API keys of service accounts (admin only; within the caller's scope)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from control.api.auth import Principal
from control.api.context import Api, caller
from control.api.keys import ApiKey, KeyStore

router = APIRouter(prefix="/v1/keys", tags=["keys"])
KEYS_READ = caller("keys.read")
KEYS_WRITE = caller("keys.write")


class KeyRequest(BaseModel):
    """A key with ``role`` for ``tenants``; at most the caller's role and tenants."""

    role: Literal["viewer", "operator", "admin"]
    tenants: list[str] = Field(min_length=1, max_length=100, examples=[["acme"]])
    name: str = Field("", max_length=200)


def _keys(request: Request) -> tuple[Api, KeyStore]:
    api: Api = request.app.state.api
    if api.keys is None:
        raise HTTPException(409, "no keys file is configured (adctl serve --keys-file)")
    return api, api.keys


def _visible(who: Principal, key: ApiKey) -> bool:
    return all(who.sees(t) for t in key.tenants)


@router.get("", summary="keys whose tenants are all in the caller's scope")
def keys_list(request: Request, who: Principal = KEYS_READ) -> list[dict[str, Any]]:
    """Keys whose tenants are all in the caller's scope (admin)."""
    api, keys = _keys(request)
    api.require(request, who, "keys.read")
    return [k.public() for k in keys.list() if _visible(who, k)]


@router.post("", status_code=201, summary="create a key; its secret is shown only here")
def keys_create(request: Request, body: KeyRequest, who: Principal = KEYS_WRITE) -> dict[str, Any]:
    """Create a key; its secret is in this response only (admin)."""
    api, keys = _keys(request)
    for t in sorted(set(body.tenants)):
        api.guard(request, who, "keys.write", t, f"tenant {t}")
    if not who.outranks(body.role):
        request.state.audit["denied"] = f"cannot grant role {body.role}"
        raise HTTPException(403, f"a {who.role} cannot create {body.role} keys")
    key, secret = keys.create(body.role, body.tenants, body.name)
    request.state.audit["target"] = f"key {key.id}"
    return {**key.public(), "key": secret}


@router.delete("/{key_id}", summary="revoke a key")
def keys_revoke(request: Request, key_id: str, who: Principal = KEYS_WRITE) -> dict[str, Any]:
    """Revoke a key whose tenants are in the caller's scope (admin)."""
    api, keys = _keys(request)
    key = keys.get(key_id)
    scope_ok = key is not None and _visible(who, key)
    api.guard(
        request, who, "keys.write", key.tenants[0] if scope_ok and key else None, f"key {key_id}"
    )
    keys.revoke(key_id)
    return {"revoked": key_id}
