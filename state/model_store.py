"""Versioned, immutable model artifacts in Redis, on a filesystem or in S3.

A *store URL* names where artifacts live; a *model ref* names one artifact and is what
control markers carry, so the flow can ``fetch`` it deterministically:

=====================================  ==================================================
store URL                              model ref for detector ``mad``, version ``v3``
=====================================  ==================================================
``redis://127.0.0.1:16379``            ``redis://127.0.0.1:16379/ad:models/mad/v3``
``redis://127.0.0.1:16379/ad:models``  (same; the path is the key prefix, ``?db=N``)
``file:///srv/models``                 ``file:///srv/models/mad/v3.json``
``s3://bucket/models``                 ``s3://bucket/models/mad/v3.json``
=====================================  ==================================================

S3 uses boto3's usual credentials; the endpoint comes from ``?endpoint=http://...`` on
the URL or from ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` (boto3 reads those).

Every artifact is stored as an *envelope* ``{"format", "detector", "version", "created",
"sha256", "model"}``; ``fetch`` verifies the checksum and returns ``model``. A version,
once written, never changes: writing it again with the same model is a no-op, with a
different model it raises :class:`ModelExistsError`. Versions sort naturally (``v2`` <
``v10``); ``latest`` is the greatest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = [
    "FORMAT",
    "ModelExistsError",
    "ModelStoreError",
    "canonical_json",
    "fetch",
    "fetch_artifact",
    "latest",
    "list_versions",
    "model_ref",
    "next_version",
    "put",
    "version_key",
]

FORMAT = "ad-model/1"
DEFAULT_REDIS_PREFIX = "ad:models"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SCHEMES = ("redis", "file", "s3")


class ModelStoreError(RuntimeError):
    """A model store could not be used (bad URL, missing artifact, corrupt data)."""


class ModelExistsError(ModelStoreError):
    """A version already exists with a different model (artifacts are immutable)."""


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, no NaN/Infinity."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ModelStoreError(f"model is not strict JSON (NaN or Infinity?): {exc}") from None
    except TypeError as exc:
        raise ModelStoreError(f"model is not JSON-serialisable: {exc}") from None


def version_key(version: str) -> tuple[Any, ...]:
    """Natural sort key: ``v2`` < ``v10``; digit runs compare as numbers."""
    return tuple(
        (0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", version) if p
    )


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ModelStoreError(
            f"invalid {kind} {value!r}: use letters, digits, '.', '_' or '-' (e.g. mad, v3)"
        )
    return value


# ------------------------------------------------------------------ URL parsing


@dataclass(frozen=True)
class _Store:
    """A parsed store location (scheme, where, and how to reach it)."""

    scheme: str
    host: str
    port: int | None
    location: str  # redis: key prefix; file: absolute dir; s3: "bucket/prefix"
    query: dict[str, str]
    userinfo: str = ""

    def base(self) -> tuple[str, str]:
        """(URL without query, '?query' or '')."""
        q = "&".join(f"{k}={quote(v, safe=':/')}" for k, v in sorted(self.query.items()))
        suffix = f"?{q}" if q else ""
        if self.scheme == "redis":
            auth = f"{self.userinfo}@" if self.userinfo else ""
            return f"redis://{auth}{self.host}:{self.port or 6379}/{self.location}", suffix
        if self.scheme == "file":
            return f"file://{self.location}", suffix
        return f"s3://{self.location}", suffix

    def ref(self, detector: str, version: str) -> str:
        base, suffix = self.base()
        tail = f"{detector}/{version}" if self.scheme == "redis" else f"{detector}/{version}.json"
        return f"{base.rstrip('/')}/{tail}{suffix}"


def _split(url: str) -> tuple[Any, dict[str, str]]:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ModelStoreError(
            f"unsupported model store URL {url!r}; use redis://host:port[/prefix], "
            "file:///dir or s3://bucket/prefix"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    return parts, query


def _parse_store(url: str) -> _Store:
    parts, query = _split(url)
    if parts.scheme == "redis":
        prefix = unquote(parts.path.strip("/")) or DEFAULT_REDIS_PREFIX
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        return _Store("redis", parts.hostname or "127.0.0.1", parts.port, prefix, query, userinfo)
    if parts.scheme == "file":
        raw = unquote(parts.netloc + parts.path)
        if not raw:
            raise ModelStoreError(f"file store URL {url!r} has no path; e.g. file:///srv/models")
        return _Store("file", "", None, str(Path(raw).resolve()), query)
    bucket = parts.netloc
    if not bucket:
        raise ModelStoreError(f"s3 store URL {url!r} has no bucket; e.g. s3://my-bucket/models")
    prefix = parts.path.strip("/")
    return _Store("s3", "", None, f"{bucket}/{prefix}" if prefix else bucket, query)


def _parse_ref(ref: str) -> tuple[_Store, str, str]:
    """Split a model ref into (store, detector, version)."""
    parts, query = _split(ref)
    path = unquote(parts.netloc + parts.path) if parts.scheme != "redis" else unquote(parts.path)
    segs = [s for s in path.split("/") if s]
    if parts.scheme != "redis":
        if not segs or not segs[-1].endswith(".json"):
            raise ModelStoreError(f"model ref {ref!r} must end in <detector>/<version>.json")
        segs[-1] = segs[-1][: -len(".json")]
    min_segs = 3 if parts.scheme == "redis" else 2  # prefix (redis) / bucket (s3)
    if len(segs) < min_segs:
        raise ModelStoreError(f"model ref {ref!r} is not <store>/<detector>/<version>")
    detector, version = _check_name("detector", segs[-2]), _check_name("version", segs[-1])
    if parts.scheme == "redis":
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        store = _Store(
            "redis", parts.hostname or "127.0.0.1", parts.port, "/".join(segs[:-2]), query, userinfo
        )
    elif parts.scheme == "file":
        store = _Store("file", "", None, "/" + "/".join(segs[:-2]), query)
    else:
        store = _Store("s3", "", None, "/".join(segs[:-2]), query)
    return store, detector, version


# ------------------------------------------------------------------ backends


class _Backend:
    """Raw byte storage for one store: create-once writes, reads, listing."""

    def create(self, detector: str, version: str, data: bytes) -> bool:
        """Write if absent; return False (and write nothing) if it already exists."""
        raise NotImplementedError

    def read(self, detector: str, version: str) -> bytes | None:
        raise NotImplementedError

    def versions(self, detector: str) -> list[str]:
        raise NotImplementedError


class _RedisBackend(_Backend):
    def __init__(self, store: _Store) -> None:
        import redis

        self.prefix = store.location
        password = unquote(store.userinfo.partition(":")[2]) if store.userinfo else None
        username = unquote(store.userinfo.partition(":")[0]) if store.userinfo else None
        self.client = redis.Redis(
            host=store.host,
            port=store.port or 6379,
            db=int(store.query.get("db", "0")),
            username=username or None,
            password=password or None,
            socket_timeout=10,
            socket_connect_timeout=5,
        )

    def _key(self, detector: str, version: str) -> str:
        return f"{self.prefix}/{detector}/{version}"

    def _index(self, detector: str) -> str:
        return f"{self.prefix}/{detector}/_versions"

    def create(self, detector: str, version: str, data: bytes) -> bool:
        created = bool(self.client.set(self._key(detector, version), data, nx=True))
        # The index is a set, so adding again after a crash between the two is harmless.
        self.client.sadd(self._index(detector), version)
        return created

    def read(self, detector: str, version: str) -> bytes | None:
        return self.client.get(self._key(detector, version))  # type: ignore[return-value]

    def versions(self, detector: str) -> list[str]:
        members = self.client.smembers(self._index(detector))
        return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


class _FileBackend(_Backend):
    def __init__(self, store: _Store) -> None:
        self.root = Path(store.location)

    def _path(self, detector: str, version: str) -> Path:
        return self.root / detector / f"{version}.json"

    def create(self, detector: str, version: str, data: bytes) -> bool:
        path = self._path(detector, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{version}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic and never overwrites an existing version
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def read(self, detector: str, version: str) -> bytes | None:
        try:
            return self._path(detector, version).read_bytes()
        except FileNotFoundError:
            return None

    def versions(self, detector: str) -> list[str]:
        d = self.root / detector
        if not d.is_dir():
            return []
        return [p.name[: -len(".json")] for p in d.glob("*.json") if not p.name.startswith(".")]


class _S3Backend(_Backend):
    def __init__(self, store: _Store) -> None:
        import boto3

        bucket, _, prefix = store.location.partition("/")
        self.bucket, self.prefix = bucket, prefix
        endpoint = store.query.get("endpoint") or None
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=store.query.get("region") or None
        )

    def _key(self, detector: str, version: str) -> str:
        key = f"{detector}/{version}.json"
        return f"{self.prefix}/{key}" if self.prefix else key

    def create(self, detector: str, version: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(detector, version),
                Body=data,
                ContentType="application/json",
                IfNoneMatch="*",
            )
            return True
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise

    def read(self, detector: str, version: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(detector, version))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return obj["Body"].read()

    def versions(self, detector: str) -> list[str]:
        prefix = self._key(detector, "x")[: -len("x.json")]
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                if "/" not in name and name.endswith(".json"):
                    out.append(name[: -len(".json")])
        return out


def _backend(store: _Store) -> _Backend:
    if store.scheme == "redis":
        return _RedisBackend(store)
    if store.scheme == "file":
        return _FileBackend(store)
    return _S3Backend(store)


def _retry(fn: Callable[[], Any], what: str, attempts: int = 3) -> Any:
    """Retry transient connection failures with a short backoff, then raise clearly."""
    last: Exception | None = None
    for i in range(attempts):
        try:
            return fn()
        except (ModelStoreError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - backend client errors vary by store
            last = exc
            time.sleep(0.2 * (2**i))
    raise ModelStoreError(f"{what} failed after {attempts} attempts: {last}") from last


# ------------------------------------------------------------------ public API


def model_ref(store_url: str, detector: str, version: str) -> str:
    """The ref of ``detector``/``version`` in ``store_url`` (no I/O)."""
    return _parse_store(store_url).ref(
        _check_name("detector", detector), _check_name("version", version)
    )


def put(
    store_url: str,
    detector: str,
    version: str,
    model: dict[str, Any],
    *,
    meta: dict[str, Any] | None = None,
) -> str:
    """Store ``model`` as ``detector``/``version`` and return its model ref.

    Idempotent for the same model; raises :class:`ModelExistsError` for a different one.
    ``meta`` (training info) is kept in the envelope but not returned by ``fetch``.
    """
    store = _parse_store(store_url)
    _check_name("detector", detector)
    _check_name("version", version)
    if not isinstance(model, dict):
        raise ModelStoreError(f"a model must be a dict, not {type(model).__name__}")
    body = canonical_json(model)
    digest = hashlib.sha256(body.encode()).hexdigest()
    envelope = {
        "format": FORMAT,
        "detector": detector,
        "version": version,
        "created": time.time(),
        "sha256": digest,
        "meta": meta or {},
        "model": model,
    }
    data = canonical_json(envelope).encode()
    backend = _backend(store)
    ref = store.ref(detector, version)
    created = _retry(lambda: backend.create(detector, version, data), f"writing {ref}")
    if not created:
        existing = _decode(ref, _retry(lambda: backend.read(detector, version), f"reading {ref}"))
        if existing["sha256"] != digest:
            raise ModelExistsError(
                f"{ref} already exists with a different model; versions are immutable, "
                "choose a new version (or omit it to get the next one)"
            )
    return ref


def _decode(ref: str, data: bytes | None) -> dict[str, Any]:
    if data is None:
        raise ModelStoreError(f"no model artifact at {ref}")
    try:
        env = json.loads(data)
    except ValueError as exc:
        raise ModelStoreError(f"model artifact {ref} is not JSON: {exc}") from None
    if not isinstance(env, dict) or env.get("format") != FORMAT or "model" not in env:
        raise ModelStoreError(f"model artifact {ref} is not an {FORMAT} envelope")
    digest = hashlib.sha256(canonical_json(env["model"]).encode()).hexdigest()
    if digest != env.get("sha256"):
        raise ModelStoreError(f"model artifact {ref} is corrupt (sha256 mismatch)")
    return env


@lru_cache(maxsize=64)
def _fetch_text(ref: str) -> str:
    store, detector, version = _parse_ref(ref)
    backend = _backend(store)
    data = _retry(lambda: backend.read(detector, version), f"reading {ref}")
    env = _decode(ref, data)
    if env.get("detector") != detector or env.get("version") != version:
        raise ModelStoreError(
            f"model artifact {ref} names {env.get('detector')}/"
            f"{env.get('version')}, not {detector}/{version}"
        )
    return canonical_json(env)


def fetch_artifact(ref: str) -> dict[str, Any]:
    """The whole verified envelope of ``ref`` (a fresh copy each call)."""
    return json.loads(_fetch_text(ref))


def fetch(ref: str) -> dict[str, Any]:
    """The model dict stored at ``ref`` (verified; cached, since artifacts are immutable)."""
    return fetch_artifact(ref)["model"]


def list_versions(store_url: str, detector: str) -> list[str]:
    """All versions of ``detector`` in ``store_url``, oldest (naturally smallest) first."""
    store = _parse_store(store_url)
    backend = _backend(store)
    names = _retry(
        lambda: backend.versions(_check_name("detector", detector)), f"listing {store_url}"
    )
    return sorted((n for n in names if _NAME.match(n)), key=version_key)


def latest(store_url: str, detector: str) -> str | None:
    """The greatest version of ``detector``, or ``None`` if there is none."""
    versions = list_versions(store_url, detector)
    return versions[-1] if versions else None


def next_version(store_url: str, detector: str) -> str:
    """``v<N+1>`` where N is the largest number among existing ``v<N>`` versions."""
    nums = [int(v[1:]) for v in list_versions(store_url, detector) if re.fullmatch(r"v\d+", v)]
    return f"v{max(nums, default=0) + 1}"
