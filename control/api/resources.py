"""The API's resources on disk: named flows with an owning tenant, per-tenant model
stores, and the flow settings a caller may set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from control.api.config import ApiConfig

__all__ = ["FlowRef", "allowed_env", "find_flow", "list_flows", "new_flow", "tenant_store"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
OWNER_FILE = "tenant"
#: flow settings a caller may set (URLs only under the configured prefixes)
SAFE_SETTINGS = frozenset(
    {
        "AD_FORMAT",
        "AD_WINDOW",
        "AD_WINDOW_SIZE",
        "AD_WINDOW_SLIDE",
        "AD_SESSION_GAP",
        "AD_ALLOWED_LATENESS",
        "AD_MAX_FUTURE",
        "AD_DETECTOR",
        "AD_DETECTOR_PARAMS",
        "AD_THRESHOLD",
        "AD_EMIT",
        "AD_KEY_GROUPS",
        "AD_KEY_BY",
        "AD_MAX_RECORD_BYTES",
        "AD_METRICS_PORT",
        "AD_FLOW_ID",
    }
)
URL_SETTINGS = frozenset({"AD_SOURCE", "AD_SINK", "AD_DLQ"})


@dataclass(frozen=True)
class FlowRef:
    """A flow the API manages: its name, adctl state directory and owning tenant."""

    name: str
    dir: Path
    tenant: str


def _valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def find_flow(cfg: ApiConfig, name: str) -> FlowRef | None:
    """The flow ``name`` if it exists."""
    if not _valid_name(name):
        return None
    d = cfg.flows_dir / name
    owner = d / OWNER_FILE
    if not owner.is_file():
        return None
    return FlowRef(name, d, owner.read_text().strip())


def flow_settings(flow: FlowRef) -> dict[str, str]:
    """The settings (``AD_*`` environment) of ``flow``'s last run; empty if never run."""
    from control.supervisor import Supervisor

    spec = Supervisor(flow.dir).load_spec()
    return dict(spec.env) if spec else {}


def flow_source(flow: FlowRef, settings: dict[str, str] | None = None) -> str:
    """The input URL of ``flow`` (its last run's ``AD_SOURCE``), where markers go;
    ``settings``: :func:`flow_settings`, when the caller has them already.
    """
    from fastapi import HTTPException

    env = flow_settings(flow) if settings is None else settings
    source = env.get("AD_SOURCE")
    if not source:
        raise HTTPException(409, f"flow {flow.name} has no AD_SOURCE to write markers into")
    return source


def new_flow(cfg: ApiConfig, name: str, tenant: str) -> FlowRef:
    """Create the flow ``name`` owned by ``tenant`` (``"*"``: shared by all tenants)."""
    if not _valid_name(name):
        raise ValueError(
            f"invalid flow name {name!r}: letters, digits, '.', '_', '-' (e.g. plant-7)"
        )
    d = cfg.flows_dir / name
    d.mkdir(parents=True, exist_ok=True)
    (d / OWNER_FILE).write_text(tenant + "\n")
    return FlowRef(name, d, tenant)


def list_flows(cfg: ApiConfig) -> list[FlowRef]:
    """Every flow under ``cfg.flows_dir``, by name."""
    if not cfg.flows_dir.is_dir():
        return []
    out = [find_flow(cfg, d.name) for d in sorted(cfg.flows_dir.iterdir()) if d.is_dir()]
    return [f for f in out if f is not None]


def allowed_env(env: dict[str, str], allow_urls: tuple[str, ...], known: set[str]) -> None:
    """Raise ``ValueError`` unless every setting in ``env`` may be set by a caller."""
    for key, value in env.items():
        if key in URL_SETTINGS:
            if not any(value.startswith(p) for p in allow_urls):
                raise ValueError(
                    f"{key}={value!r} is not under an allowed URL prefix "
                    f"({', '.join(allow_urls) or 'none configured: see --allow-url'})"
                )
        elif key not in SAFE_SETTINGS or key not in known:
            raise ValueError(
                f"setting {key!r} cannot be set through the API "
                f"(allowed: {', '.join(sorted(SAFE_SETTINGS | URL_SETTINGS))})"
            )


def tenant_store(base: str, tenant: str) -> str:
    """The tenant's own area of the model store ``base`` (a path segment under it)."""
    parts = urlsplit(base)
    path = parts.path.rstrip("/") + "/" + tenant
    if parts.scheme == "redis" and parts.path in ("", "/"):
        path = "/ad:models/" + tenant
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))
