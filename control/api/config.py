"""The API server's configuration (filled from ``adctl serve``'s flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from control.api.auth import JwtConfig

__all__ = ["ApiConfig"]


@dataclass(frozen=True)
class ApiConfig:
    """Where the API finds flows, tenants, models, keys and its audit log.

    ``flows_dir/<name>/`` is one flow's adctl state directory (``adctl --state-dir``);
    ``allow_urls`` are the URL prefixes a caller may give as a flow's ``AD_SOURCE``,
    ``AD_SINK`` or ``AD_DLQ`` (none by default: only the server's own environment).
    """

    flows_dir: Path
    audit_log: Path
    registry: str | None = None
    model_store: str | None = None
    keys_file: Path | None = None
    jwt: JwtConfig = field(default_factory=JwtConfig)
    module: str = "flows.detector"
    allow_urls: tuple[str, ...] = ()
    alerts: str | None = None
    control_topic: str = "ad-control"
    dask_scheduler: str | None = None
    dask_workers: int = 1
