"""The tenant registry: who shares the platform, with which settings, routing and quotas.

A declarative YAML (or JSON) file, loaded purely and validated; every error is one line
naming the key with a valid example::

    default_tenant: shared          # tenant of records without a tenant_id
    tenants:
      acme:
        threshold: 0.9              # any field left out: the flow's own setting
        detector: mad
        detector_params: {window: 64}
        window: tumbling            # tumbling | sliding | session | none
        window_size: 60s
        window_slide: 30s
        session_gap: 5m
        alerts: kafka://127.0.0.1:9092/alerts.{tenant}
        dead_letters: kafka://127.0.0.1:9092/dead-letters.{tenant}
        quota:
          rate: 1000                # records per event-time second (token bucket)
          burst: 5000               # bucket size (default: rate)
          max_sensors: 500
      shared: {}

``Registry.digest`` is the SHA-256 of the canonical content (not of the file's bytes), so
formatting and comments do not change it; a flow can apply a new registry at an input
position and compare digests. ``update_registry`` changes a file atomically under a lock.
``store_registry`` puts a registry into the model store as an immutable, checksummed
artifact; ``load_registry`` reads it back by its ref.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from schemas.values import parse_duration

__all__ = [
    "Quota",
    "Registry",
    "RegistryError",
    "Tenant",
    "check_tenant_id",
    "load_registry",
    "parse_registry",
    "parse_tenant",
    "save_registry",
    "store_registry",
    "tenant_url",
    "update_registry",
]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
WINDOWS = ("tumbling", "sliding", "session", "none")
ARTIFACT_NAME = "ad-tenants"  # the "detector" name of registries in the model store
ARTIFACT_KIND = "tenant-registry"
_EXAMPLES = {
    "default_tenant": "default_tenant: shared",
    "tenants": "tenants: {acme: {threshold: 0.9}}",
    "threshold": "threshold: 0.9",
    "detector": "detector: mad",
    "detector_params": "detector_params: {window: 64}",
    "window": "window: tumbling",
    "window_size": "window_size: 60s",
    "window_slide": "window_slide: 30s",
    "session_gap": "session_gap: 5m",
    "alerts": "alerts: kafka://127.0.0.1:9092/alerts.{tenant}",
    "dead_letters": "dead_letters: kafka://127.0.0.1:9092/dead-letters.{tenant}",
    "quota": "quota: {rate: 1000, burst: 5000, max_sensors: 500}",
    "rate": "rate: 1000",
    "burst": "burst: 5000",
    "max_sensors": "max_sensors: 500",
}


class RegistryError(ValueError):
    """The registry is invalid or cannot be read (one line, naming the key)."""


def _err(where: str, key: str, msg: str) -> RegistryError:
    example = _EXAMPLES.get(key)
    hint = f"; e.g. {example}" if example else ""
    return RegistryError(f"tenant registry {where}: {msg}{hint}")


def check_tenant_id(value: Any) -> str:
    """``value`` if it is a valid tenant id, else :class:`RegistryError`."""
    if not isinstance(value, str) or not _ID.match(value):
        raise RegistryError(
            f"invalid tenant id {value!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (e.g. acme)"
        )
    return value


@dataclass(frozen=True)
class Quota:
    """Per-tenant limits; ``None`` means unlimited.

    ``rate`` records per event-time second refill a token bucket of ``burst`` tokens
    (``burst`` defaults to ``rate``); ``max_sensors`` bounds the distinct sensors.
    """

    rate: float | None = None
    burst: float | None = None
    max_sensors: int | None = None

    @property
    def unlimited(self) -> bool:
        """True if neither a rate nor a sensor limit is set."""
        return self.rate is None and self.max_sensors is None

    @property
    def capacity(self) -> float | None:
        """The token bucket's size: ``burst``, else ``rate`` (None: no rate limit)."""
        return self.burst if self.burst is not None else self.rate

    def to_dict(self) -> dict[str, Any]:
        """The set limits, as in the file."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Tenant:
    """One tenant's settings; ``None`` fields fall back to the flow's own settings."""

    id: str
    threshold: float | None = None
    detector: str | None = None
    detector_params: Mapping[str, Any] | None = None
    window: str | None = None
    window_size: float | None = None
    window_slide: float | None = None
    session_gap: float | None = None
    alerts: str | None = None  # URL template; {tenant} is replaced by the id
    dead_letters: str | None = None
    quota: Quota = field(default_factory=Quota)

    @property
    def alerts_url(self) -> str | None:
        """The alert sink URL with ``{tenant}`` filled in (None: the flow's sink)."""
        return tenant_url(self.alerts, self.id) if self.alerts else None

    @property
    def dead_letters_url(self) -> str | None:
        """The dead-letter sink URL with ``{tenant}`` filled in (None: the flow's)."""
        return tenant_url(self.dead_letters, self.id) if self.dead_letters else None

    def to_dict(self) -> dict[str, Any]:
        """The tenant's settings as in the file (without ``id``; unset keys omitted)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            if k in ("id", "quota") or v is None:
                continue
            out[k] = dict(v) if k == "detector_params" else v
        if not self.quota.unlimited or self.quota.burst is not None:
            out["quota"] = self.quota.to_dict()
        return out


@dataclass(frozen=True)
class Registry:
    """Every tenant by id, the default tenant, and a digest of the content."""

    tenants: Mapping[str, Tenant]
    default_tenant: str | None = None

    def get(self, tenant_id: str | None) -> Tenant | None:
        """The tenant ``tenant_id`` (``None``: the default tenant), or ``None``."""
        key = self.default_tenant if tenant_id is None else tenant_id
        return self.tenants.get(key) if key is not None else None

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self.tenants[k] for k in sorted(self.tenants))

    def __len__(self) -> int:
        return len(self.tenants)

    def to_dict(self) -> dict[str, Any]:
        """The registry as in the file (the canonical content the digest covers)."""
        out: dict[str, Any] = {}
        if self.default_tenant is not None:
            out["default_tenant"] = self.default_tenant
        out["tenants"] = {t.id: t.to_dict() for t in self}
        return out

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of the canonical content: equal content, equal digest."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def version(self) -> str:
        """A short form of :attr:`digest` for logs and status."""
        return self.digest[:12]

    def with_tenant(self, tenant: Tenant) -> Registry:
        """A copy with ``tenant`` added or replaced."""
        return replace(self, tenants={**self.tenants, tenant.id: tenant})

    def without_tenant(self, tenant_id: str) -> Registry:
        """A copy without ``tenant_id``; the default tenant cannot be removed."""
        if tenant_id == self.default_tenant:
            raise RegistryError(
                f"tenant {tenant_id!r} is the default_tenant; set another default_tenant first"
            )
        return replace(self, tenants={k: v for k, v in self.tenants.items() if k != tenant_id})


# ------------------------------------------------------------------ parsing


def tenant_url(template: str, tenant_id: str) -> str:
    """``template`` with every ``{tenant}`` replaced by ``tenant_id``."""
    return template.replace("{tenant}", tenant_id)


def _duration(where: str, key: str, value: Any) -> float:
    out: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            out = parse_duration(value)
        except ValueError:
            out = None
    if out is None:
        raise _err(where, key, f"not a duration: {value!r}")
    if not out > 0 or out == float("inf"):
        raise _err(where, key, f"must be a positive duration, got {value!r}")
    return out


def _number(where: str, key: str, value: Any, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not 0 < value < float("inf"):
        kind = "a positive integer" if integer else "a positive number"
        raise _err(where, key, f"must be {kind}, got {value!r}")
    return value


def _template(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise _err(where, key, f"must be a sink URL (template), got {value!r}")
    rest = value.replace("{tenant}", "")
    if "{" in rest or "}" in rest:
        raise _err(where, key, f"only the placeholder {{tenant}} is allowed, got {value!r}")
    return value


def _quota(where: str, value: Any) -> Quota:
    if value is None:
        return Quota()
    if not isinstance(value, Mapping):
        raise _err(where, "quota", f"must be a mapping, got {value!r}")
    unknown = sorted(set(value) - {"rate", "burst", "max_sensors"})
    if unknown:
        raise _err(f"{where}.quota", "quota", f"unknown key {unknown[0]!r}")
    rate = value.get("rate")
    burst = value.get("burst")
    sensors = value.get("max_sensors")
    q = Quota(
        rate=None if rate is None else float(_number(f"{where}.quota.rate", "rate", rate)),
        burst=None if burst is None else float(_number(f"{where}.quota.burst", "burst", burst)),
        max_sensors=None
        if sensors is None
        else int(_number(f"{where}.quota.max_sensors", "max_sensors", sensors, integer=True)),
    )
    if q.burst is not None and q.rate is None:
        raise _err(f"{where}.quota.burst", "rate", "burst needs a rate")
    return q


_FIELDS = {
    "threshold",
    "detector",
    "detector_params",
    "window",
    "window_size",
    "window_slide",
    "session_gap",
    "alerts",
    "dead_letters",
    "quota",
}


def parse_tenant(tenant_id: str, data: Mapping[str, Any] | None) -> Tenant:
    """Validate one tenant's settings (the mapping under ``tenants.<id>``)."""
    check_tenant_id(tenant_id)
    where = f"tenants.{tenant_id}"
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise _err(where, "tenants", f"must be a mapping of settings, got {data!r}")
    unknown = sorted(set(map(str, data)) - _FIELDS)
    if unknown:
        raise _err(
            f"{where}.{unknown[0]}",
            "threshold",
            f"unknown key (known: {', '.join(sorted(_FIELDS))})",
        )
    kw: dict[str, Any] = {}
    for key, value in data.items():
        at = f"{where}.{key}"
        if value is None:
            continue
        if key == "threshold":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _err(at, key, f"must be a number between 0 and 1, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise _err(at, key, f"must be between 0 and 1, got {value!r}")
            kw[key] = float(value)
        elif key == "detector":
            if not isinstance(value, str) or not _NAME.match(value):
                raise _err(at, key, f"must be a detector name, got {value!r}")
            kw[key] = value
        elif key == "detector_params":
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                raise _err(at, key, f"must be a mapping, got {value!r}")
            kw[key] = json.loads(json.dumps(dict(value), sort_keys=True))
        elif key == "window":
            if value not in WINDOWS:
                raise _err(at, key, f"must be one of {', '.join(WINDOWS)}, got {value!r}")
            kw[key] = value
        elif key in ("window_size", "window_slide", "session_gap"):
            kw[key] = _duration(at, key, value)
        elif key in ("alerts", "dead_letters"):
            kw[key] = _template(at, key, value)
        elif key == "quota":
            kw[key] = _quota(where, value)
    return Tenant(id=tenant_id, **kw)


def parse_registry(data: Any, where: str = "") -> Registry:
    """Validate a parsed registry document (a mapping) into a :class:`Registry`."""
    at = f"{where}: " if where else ""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RegistryError(f"tenant registry {at}must be a mapping; e.g. tenants: {{acme: {{}}}}")
    unknown = sorted(set(map(str, data)) - {"default_tenant", "tenants"})
    if unknown:
        raise _err(f"{at}{unknown[0]}", "tenants", "unknown key (known: default_tenant, tenants)")
    raw = data.get("tenants") or {}
    if not isinstance(raw, Mapping):
        raise _err(f"{at}tenants", "tenants", f"must be a mapping of tenant ids, got {raw!r}")
    tenants: dict[str, Tenant] = {}
    for tid, body in raw.items():
        try:
            tenants[str(tid)] = parse_tenant(str(tid), body)
        except RegistryError as exc:
            raise RegistryError(f"{at}{exc}" if at else str(exc)) from None
    default = data.get("default_tenant")
    if default is not None and (not isinstance(default, str) or default not in tenants):
        raise _err(
            f"{at}default_tenant",
            "default_tenant",
            f"{default!r} is not one of the tenants ({', '.join(sorted(tenants)) or 'none'})",
        )
    return Registry(tenants=tenants, default_tenant=default)


def _path_of(path_or_url: str | Path) -> Path:
    text = str(path_or_url)
    if "://" not in text:
        return Path(text)
    parts = urlsplit(text)
    if parts.scheme != "file":
        raise RegistryError(
            f"tenant registry {text!r}: not a file (e.g. file:///etc/ad/tenants.yaml); "
            "a registry in the model store is read by its ref (redis://, s3://)"
        )
    return Path(unquote(parts.netloc + parts.path))


def _from_artifact(ref: str, model: Any) -> Registry:
    if not isinstance(model, Mapping) or model.get("kind") != ARTIFACT_KIND:
        raise RegistryError(f"tenant registry {ref!r}: the artifact is not a tenant registry")
    reg = parse_registry(model.get("registry"), ref)
    if reg.digest != model.get("digest"):
        raise RegistryError(f"tenant registry {ref!r}: content does not match its digest")
    return reg


def load_registry(path_or_url: str | Path, missing_ok: bool = False) -> Registry:
    """Read and validate a registry: a YAML/JSON file (a path or ``file://`` URL), or an
    artifact in the model store by its ref (see :func:`store_registry`). A missing file
    is an empty registry when ``missing_ok``.
    """
    text = str(path_or_url)
    if text.startswith(("redis://", "s3://")):
        from state import model_store

        try:
            return _from_artifact(text, model_store.fetch(text))
        except model_store.ModelStoreError as exc:
            raise RegistryError(f"tenant registry {text!r}: {exc}") from None
    path = _path_of(path_or_url)
    if missing_ok and not path.exists():
        return Registry(tenants={})
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(
            f"tenant registry {str(path)!r}: cannot read it ({exc.strerror or exc})"
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise RegistryError(f"tenant registry {str(path)!r}: not valid YAML{line}") from None
    if isinstance(data, Mapping) and "format" in data and "model" in data:
        from state import model_store  # a model-store artifact file: verify it

        try:
            return _from_artifact(str(path), model_store.fetch(path.as_uri()))
        except model_store.ModelStoreError as exc:
            raise RegistryError(f"tenant registry {str(path)!r}: {exc}") from None
    return parse_registry(data, str(path))


def store_registry(store_url: str, registry: Registry) -> str:
    """Put ``registry`` into the model store as an immutable artifact
    (``ad-tenants/d<digest>``) and return its ref: what a control marker can carry so a
    flow applies it at an input position. Storing the same content again is a no-op.
    """
    from state import model_store

    body = {"kind": ARTIFACT_KIND, "digest": registry.digest, "registry": registry.to_dict()}
    try:
        return model_store.put(store_url, ARTIFACT_NAME, f"d{registry.digest[:32]}", body)
    except model_store.ModelStoreError as exc:
        raise RegistryError(f"cannot store the tenant registry in {store_url!r}: {exc}") from None


def save_registry(path_or_url: str | Path, registry: Registry) -> None:
    """Write ``registry`` atomically (write a temporary file, fsync, rename)."""
    path = _path_of(path_or_url)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# tenant registry (state/tenants.py)\n" + yaml.safe_dump(
        registry.to_dict(), sort_keys=True, default_flow_style=False
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_registry(
    path_or_url: str | Path, change: Callable[[Registry], Registry], create: bool = True
) -> Registry:
    """Apply ``change`` to the file's registry under an exclusive lock and save it.

    A missing file counts as an empty registry when ``create``.
    """
    path = _path_of(path_or_url)
    with _locked(path):
        new = change(load_registry(path, missing_ok=create))
        parse_registry(new.to_dict())  # the result must load again
        save_registry(path, new)
        return new
