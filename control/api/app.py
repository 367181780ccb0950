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
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control.api.auth import ACTIONS, AuthError
from control.api.config import ApiConfig
from control.api.context import Api
from control.api.routes import flows, keys, meta, models, tenants

__all__ = ["create_app"]

_USERINFO = re.compile(r"(://)[^/@\s]+@")


def _clean(text: str) -> str:
    """One line, without credentials in URLs."""
    return _USERINFO.sub(r"\1***@", " ".join(str(text).split()))[:2000]


class AuditTrail:
    """ASGI middleware: authenticate ``/v1`` requests before anything else looks at them
    (no valid token: 401, whatever the body), audit mutating calls and denials, and count
    requests for the metrics.

    Args:
        app: the wrapped ASGI application.
        api: the API's shared context (authenticator, audit log).
        requests: the request counter of the metrics.
        routes: the application's routes (to name the route of a request).
    """

    def __init__(self, app: ASGIApp, api: Api, requests: Counter, routes: list[BaseRoute]) -> None:
        self.app, self.api, self.requests, self.routes = app, api, requests, routes

    def _route(self, scope: Scope) -> tuple[str, str]:
        """``(route path, action)`` of the route that will serve ``scope``."""
        for route in self.routes:
            match, _child = route.matches(scope)
            if match == Match.FULL:
                deps = getattr(getattr(route, "dependant", None), "dependencies", [])
                actions = [getattr(d.call, "action", None) for d in deps]
                return getattr(route, "path", "unmatched"), next(filter(None, actions), "-")
        return "unmatched", "-"

    async def _authenticate(self, scope: Scope, state: dict[str, Any]) -> str | None:
        """Put the caller in ``state``; return why not (the 401 message) if it fails."""
        raw = dict(scope["headers"]).get(b"authorization")
        header = raw.decode("latin-1") if raw is not None else None
        try:
            state["principal"] = await run_in_threadpool(self.api.authn.authenticate, header)
        except AuthError as exc:
            path, action = self._route(scope)
            state["audit"] = {"action": action, "target": scope["path"], "denied": str(exc)}
            state["route"] = path
            return str(exc)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        seen: dict[str, int] = {}

        async def record(status: int) -> None:
            """Count the request and audit it (before the caller sees the response)."""
            seen["status"] = status
            path = getattr(scope.get("route"), "path", state.get("route", "unmatched"))
            self.requests.labels(path, scope["method"], str(status)).inc()
            note = state.get("audit")
            if note is not None and (
                note.get("denied")
                or status in (401, 403)
                or ACTIONS.get(note["action"], "viewer") != "viewer"
            ):
                await run_in_threadpool(self._write, note, status)

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(int(message["status"]))
            await send(message)

        if scope["path"].startswith("/v1/"):
            why = await self._authenticate(scope, state)
            if why is not None:
                reply = JSONResponse({"detail": why}, 401, headers={"WWW-Authenticate": "Bearer"})
                await reply(scope, receive, send_status)
                return
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

    conflicts: tuple[type[Exception], ...] = (
        CliError,
        SupervisorError,
        ModelStoreError,
        MarkerError,
        HistoryError,
    )
    invalid: tuple[type[Exception], ...] = (RegistryError, TrainingError, ValueError)
    for exc in conflicts:
        app.add_exception_handler(exc, handler(409))
    for exc in invalid:
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
    routers = (
        flows.router,
        flows.tenant_router,
        models.router,
        tenants.router,
        keys.router,
        meta.router,
    )
    routes = [route for r in routers for route in r.routes]
    app.add_middleware(AuditTrail, api=api, requests=requests, routes=routes)
    _errors(app)
    for r in routers:
        app.include_router(r)

    @app.get("/healthz", tags=["meta"], summary="liveness (no authentication)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", tags=["meta"], summary="Prometheus metrics of the API")
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics).decode())

    return app
