"""The FastAPI application: routes, error mapping, request metrics and the audit trail.

Errors of the control code become one-line JSON ``{"detail": ...}`` bodies: bad input
422, a conflict with the current state (flow running, no such model, ...) 409. URLs in
messages lose their credentials. Every mutating call and every denial is appended to
the audit log by :class:`AuditTrail`.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control.api.auth import ACTIONS, Principal
from control.api.config import ApiConfig
from control.api.context import Api, caller
from control.api.routes import flows, keys, models, tenants

__all__ = ["create_app"]

TENANTS_READ = caller("tenants.read")
_USERINFO = re.compile(r"(://)[^/@\s]+@")


def _clean(text: str) -> str:
    """One line, without credentials in URLs."""
    return _USERINFO.sub(r"\1***@", " ".join(str(text).split()))[:2000]


class AuditTrail:
    """ASGI middleware: audit mutating calls and denials; count requests for metrics."""

    def __init__(self, app: ASGIApp, api: Api, requests: Counter) -> None:
        self.app, self.api, self.requests = app, api, requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        seen: dict[str, int] = {}

        async def record(status: int) -> None:
            """Count the request and audit it (before the caller sees the response)."""
            seen["status"] = status
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.requests.labels(path, scope["method"], str(status)).inc()
            note = state.get("audit")
            if note is not None and (
                note.get("denied") or status in (401, 403) or ACTIONS[note["action"]] != "viewer"
            ):
                await run_in_threadpool(self._write, note, status)

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if "status" not in seen:
                await record(500)

    def _write(self, note: dict[str, Any], status: int) -> None:
        denied = note.get("denied")
        self.api.audit.append(
            who=note.get("who", "anonymous"),
            kind=note.get("kind"),
            role=note.get("role"),
            tenant=note.get("tenant"),
            action=note["action"],
            target=note.get("target"),
            result="denied" if denied else ("ok" if status < 400 else "failed"),
            reason=denied,
            status=status,
        )


def _errors(app: FastAPI) -> None:
    from control.cli_env import CliError
    from control.history import HistoryError
    from control.markers import MarkerError
    from control.supervisor import SupervisorError
    from control.training import TrainingError
    from state.model_store import ModelStoreError
    from state.tenants import RegistryError

    def handler(status: int) -> Any:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": _clean(str(exc))}, status_code=status)

        return handle

    for exc in (CliError, SupervisorError, ModelStoreError, MarkerError, HistoryError):
        app.add_exception_handler(exc, handler(409))
    for exc in (RegistryError, TrainingError, ValueError):
        app.add_exception_handler(exc, handler(422))


def create_app(cfg: ApiConfig, base_env: dict[str, str] | None = None) -> FastAPI:
    """The API for ``cfg``; flows started through it get ``base_env`` plus their settings."""
    from control.cli_env import flow_env
    from flows.settings import flow_env_names

    api = Api(cfg, flow_env() if base_env is None else base_env, set(flow_env_names()))
    app = FastAPI(
        title="anomaly-detector control API",
        version="1",
        description="What `adctl` does, over HTTP: flows, models, tenants, keys and alerts. "
        "Authenticate with `Authorization: Bearer <JWT or API key>`.",
    )
    app.state.api = api
    metrics = CollectorRegistry()
    requests = Counter(
        "ad_api_requests",
        "API requests by route template, method and status",
        ["route", "method", "status"],
        registry=metrics,
    )
    app.add_middleware(AuditTrail, api=api, requests=requests)
    _errors(app)
    for r in (flows.router, models.router, tenants.router, keys.router):
        app.include_router(r)

    @app.get("/healthz", tags=["meta"], summary="liveness (no authentication)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["meta"], summary="Prometheus metrics of the API")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics).decode())

    @app.get("/v1/whoami", tags=["meta"], summary="the authenticated caller")
    def whoami(who: Principal = TENANTS_READ) -> dict[str, Any]:
        return {"subject": who.subject, "role": who.role, "tenants": sorted(who.tenants)}

    return app
