"""Model store against real backends: Redis (the stack's), files, and S3 via moto's server.

S3 runs against ``moto.server.ThreadedMotoServer`` (a local HTTP S3 implementation from
PyPI), reached over real HTTP through boto3; it is skipped if moto is not installed.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from state import model_store as ms

REDIS_PORT = int(os.environ.get("AD_STACK_REDIS_PORT", "16379"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    import moto.server as server_mod  # a dev dependency (moto[server])

    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    old = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def redis_client() -> redis.Redis:
    client = redis.Redis(port=REDIS_PORT)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not running on 127.0.0.1:{REDIS_PORT} (make stack-up)")
    return client


@pytest.fixture(params=["redis", "file", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty store URLs of one backend kind."""
    kind = request.param
    cleanup: list[Callable[[], None]] = []

    def factory() -> str:
        tag = uuid.uuid4().hex[:10]
        if kind == "redis":
            client = request.getfixturevalue("redis_client")
            prefix = f"test:models:{tag}"
            cleanup.append(lambda: [client.delete(k) for k in client.scan_iter(f"{prefix}/*")])
            return f"redis://127.0.0.1:{REDIS_PORT}/{prefix}"
        if kind == "file":
            return (tmp_path / tag / "models").as_uri()
        endpoint = request.getfixturevalue("s3_endpoint")
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=f"b-{tag}")
        return f"s3://b-{tag}/models?endpoint={endpoint}"

    yield factory
    for fn in cleanup:
        fn()


MODEL = {"detector": "mad", "version": "v1", "params": {"window": 64, "z_scale": 3.25}}


def test_put_fetch_roundtrip(make_store: Callable[[], str]) -> None:
    store = make_store()
    ref = ms.put(store, "mad", "v1", MODEL, meta={"keys": 3})
    assert ref == ms.model_ref(store, "mad", "v1")
    assert ms.fetch(ref) == MODEL
    env = ms.fetch_artifact(ref)
    assert env["detector"] == "mad" and env["version"] == "v1" and env["meta"] == {"keys": 3}
    # a returned model is a copy: mutating it does not change later fetches
    ms.fetch(ref)["params"]["window"] = 1
    assert ms.fetch(ref)["params"]["window"] == 64


def test_versions_latest_next(make_store: Callable[[], str]) -> None:
    store = make_store()
    assert ms.latest(store, "mad") is None
    assert ms.next_version(store, "mad") == "v1"
    for v in ("v2", "v10", "v1"):
        ms.put(store, "mad", v, {**MODEL, "version": v})
    ms.put(store, "other", "v99", MODEL)
    assert ms.list_versions(store, "mad") == ["v1", "v2", "v10"]
    assert ms.latest(store, "mad") == "v10"
    assert ms.next_version(store, "mad") == "v11"
    assert ms.list_versions(store, "other") == ["v99"]


def test_immutable_versions(make_store: Callable[[], str]) -> None:
    store = make_store()
    ref = ms.put(store, "mad", "v1", MODEL)
    assert ms.put(store, "mad", "v1", dict(MODEL)) == ref  # same model: idempotent
    with pytest.raises(ms.ModelExistsError, match="immutable"):
        ms.put(store, "mad", "v1", {**MODEL, "params": {"window": 8}})
    assert ms.fetch(ref) == MODEL


def test_missing_ref_is_a_clear_error(make_store: Callable[[], str]) -> None:
    store = make_store()
    with pytest.raises(ms.ModelStoreError, match="no model artifact"):
        ms.fetch(ms.model_ref(store, "mad", "v404"))


def test_redis_ref_format_matches_the_marker_design(redis_client: redis.Redis) -> None:
    ref = ms.model_ref("redis://127.0.0.1:16379", "ensemble", "v3")
    assert ref == "redis://127.0.0.1:16379/ad:models/ensemble/v3"
    assert ms.model_ref("file:///srv/models", "ensemble", "v3") == (
        "file:///srv/models/ensemble/v3.json"
    )


def test_corrupt_artifact_is_detected(tmp_path: Path) -> None:
    store = (tmp_path / "m").as_uri()
    ref = ms.put(store, "mad", "v1", MODEL)
    path = tmp_path / "m" / "mad" / "v1.json"
    env = json.loads(path.read_text())
    env["model"]["params"]["window"] = 65
    path.write_text(json.dumps(env))
    ms._fetch_text.cache_clear()
    with pytest.raises(ms.ModelStoreError, match="corrupt"):
        ms.fetch(ref)


@pytest.mark.parametrize(
    "bad",
    ["ftp://x/y", "file://", "s3:///nobucket"],
)
def test_bad_store_urls(bad: str) -> None:
    with pytest.raises(ms.ModelStoreError):
        ms.put(bad, "mad", "v1", MODEL)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "v 1"])
def test_bad_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ms.ModelStoreError, match="invalid"):
        ms.put(tmp_path.as_uri(), "mad", name, MODEL)


def test_non_json_models_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ms.ModelStoreError, match="strict JSON"):
        ms.put(tmp_path.as_uri(), "mad", "v1", {"x": float("nan")})


def test_concurrent_writers_of_one_version_agree(tmp_path: Path) -> None:
    """Racing writers: exactly one model wins, every other writer gets ModelExistsError."""
    store = (tmp_path / "race").as_uri()
    results: list[str] = []
    lock = threading.Lock()

    def writer(i: int) -> None:
        try:
            ms.put(store, "mad", "v1", {"i": i})
            out = f"ok{i}"
        except ms.ModelExistsError:
            out = "exists"
        with lock:
            results.append(out)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r.startswith("ok")]
    assert len(winners) == 1 and results.count("exists") == 7
    assert ms.fetch(ms.model_ref(store, "mad", "v1")) == {"i": int(winners[0][2:])}
