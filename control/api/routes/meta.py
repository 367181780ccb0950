"""``/v1/whoami``: the authenticated caller."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from control.api.auth import Principal
from control.api.context import caller

router = APIRouter(prefix="/v1", tags=["meta"])

TENANTS_READ = caller("tenants.read")


@router.get("/whoami", summary="the authenticated caller")
def whoami(who: Principal = TENANTS_READ) -> dict[str, Any]:
    """The caller's subject, role and tenants."""
    return {"subject": who.subject, "role": who.role, "tenants": sorted(who.tenants)}
