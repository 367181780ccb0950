"""The tenant registry: loading, validation errors, digest, URL templates, atomic updates."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from state.tenants import (
    Quota,
    Registry,
    RegistryError,
    Tenant,
    load_registry,
    parse_registry,
    parse_tenant,
    save_registry,
    store_registry,
    update_registry,
)

SAMPLE = """\
default_tenant: shared
tenants:
  acme:
    threshold: 0.9
    detector: mad
    detector_params: {window: 64, z_scale: 3.0}
    window: sliding
    window_size: 2m
    window_slide: 30s
    alerts: kafka://127.0.0.1:9092/alerts.{tenant}
    dead_letters: kafka://127.0.0.1:9092/dead-letters.{tenant}
    quota: {rate: 100, burst: 500, max_sensors: 20}
  shared: {}
"""


def test_load_a_full_registry(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(SAMPLE)
    reg = load_registry(path)
    assert reg.default_tenant == "shared" and len(reg) == 2
    acme = reg.get("acme")
    assert acme is not None
    assert (acme.threshold, acme.detector, acme.window) == (0.9, "mad", "sliding")
    assert acme.detector_params == {"window": 64, "z_scale": 3.0}
    assert (acme.window_size, acme.window_slide, acme.session_gap) == (120.0, 30.0, None)
    assert acme.quota == Quota(rate=100.0, burst=500.0, max_sensors=20)
    assert acme.quota.capacity == 500.0 and Quota(rate=7.0).capacity == 7.0
    assert Quota(max_sensors=3).capacity is None
    assert acme.alerts_url == "kafka://127.0.0.1:9092/alerts.acme"
    assert acme.dead_letters_url == "kafka://127.0.0.1:9092/dead-letters.acme"
    shared = reg.get(None)  # a record without a tenant belongs to the default tenant
    assert shared is not None and shared.id == "shared"
    assert shared.quota.unlimited and shared.alerts_url is None and shared.threshold is None
    assert reg.get("nobody") is None
    assert load_registry(path.as_uri()) == reg  # file:// URLs too
    assert [t.id for t in reg] == ["acme", "shared"]


def test_the_digest_follows_content_not_formatting(tmp_path: Path) -> None:
    a = parse_registry({"default_tenant": "x", "tenants": {"x": {"window_size": "60s"}, "y": None}})
    b = parse_registry({"tenants": {"y": {}, "x": {"window_size": 60}}, "default_tenant": "x"})
    assert a.digest == b.digest and len(a.digest) == 64 and a.version == a.digest[:12]
    c = a.with_tenant(parse_tenant("y", {"threshold": 0.5}))
    assert c.digest != a.digest
    # a saved and reloaded registry is the same registry
    save_registry(tmp_path / "r.yaml", c)
    assert load_registry(tmp_path / "r.yaml") == c
    assert load_registry(tmp_path / "r.yaml").digest == c.digest


def test_no_registry_content_means_no_tenants(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    reg = load_registry(tmp_path / "empty.yaml")
    assert len(reg) == 0 and reg.default_tenant is None and reg.get(None) is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"tenant": {}}, "tenant registry tenant: unknown key"),
        ({"tenants": ["acme"]}, "tenants: must be a mapping of tenant ids"),
        ({"tenants": {"bad id!": {}}}, "invalid tenant id 'bad id!'"),
        ({"tenants": {"a": {"threshold": 2}}}, "tenants.a.threshold: must be between 0 and 1"),
        ({"tenants": {"a": {"threshold": "hi"}}}, "e.g. threshold: 0.9"),
        ({"tenants": {"a": {"window": "hopping"}}}, "tenants.a.window: must be one of tumbling"),
        ({"tenants": {"a": {"window_size": "soon"}}}, "e.g. window_size: 60s"),
        ({"tenants": {"a": {"window_size": 0}}}, "must be a positive duration"),
        ({"tenants": {"a": {"alerts": "alerts.{tenant}"}}}, "e.g. alerts: kafka://"),
        ({"tenants": {"a": {"alerts": "kafka://h/{team}"}}}, "only the placeholder {tenant}"),
        ({"tenants": {"a": {"quota": {"rate": -1}}}}, "tenants.a.quota.rate: must be a positive"),
        ({"tenants": {"a": {"quota": {"burst": 5}}}}, "burst needs a rate"),
        ({"tenants": {"a": {"quota": {"max_sensors": 2.5}}}}, "e.g. max_sensors: 500"),
        ({"tenants": {"a": {"quota": {"limit": 1}}}}, "unknown key 'limit'"),
        ({"tenants": {"a": {"colour": "red"}}}, "tenants.a.colour: unknown key"),
        ({"tenants": {"a": {"detector": "no such"}}}, "e.g. detector: mad"),
        ({"default_tenant": "b", "tenants": {"a": {}}}, "default_tenant: 'b' is not one of"),
    ],
)
def test_errors_are_one_line_naming_the_key_with_an_example(doc: object, message: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_registry(doc)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_unreadable_and_invalid_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read it"):
        load_registry(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("tenants: [\n")
    with pytest.raises(RegistryError, match=r"bad.yaml.*not valid YAML at line"):
        load_registry(tmp_path / "bad.yaml")
    with pytest.raises(RegistryError, match="not a file"):
        load_registry("kafka://127.0.0.1:9092/tenants")


def test_the_default_tenant_cannot_be_removed() -> None:
    reg = parse_registry({"default_tenant": "a", "tenants": {"a": {}, "b": {}}})
    assert [t.id for t in reg.without_tenant("b")] == ["a"]
    with pytest.raises(RegistryError, match="is the default_tenant"):
        reg.without_tenant("a")


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "reg" / "tenants.yaml"

    def add(i: int) -> None:
        update_registry(path, lambda r: r.with_tenant(Tenant(id=f"t{i}", threshold=0.5)))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reg = load_registry(path)
    assert sorted(t.id for t in reg) == sorted(f"t{i}" for i in range(12))
    assert isinstance(reg, Registry)
    # an update whose result would not load again changes nothing
    before = path.read_text()
    with pytest.raises(RegistryError):
        update_registry(path, lambda r: Registry(r.tenants, default_tenant="ghost"))
    assert path.read_text() == before


def test_a_registry_in_the_model_store_is_immutable_and_verified(tmp_path: Path) -> None:
    reg = parse_registry(yaml.safe_load(SAMPLE))
    store = (tmp_path / "models").as_uri()
    ref = store_registry(store, reg)
    assert ref == store_registry(store, reg)  # the same content: the same artifact
    assert ref.endswith(f"/ad-tenants/d{reg.digest[:32]}.json")
    assert load_registry(ref) == reg and load_registry(ref).digest == reg.digest
    other = store_registry(store, reg.without_tenant("acme"))
    assert other != ref and len(load_registry(other)) == 1
    # a changed artifact is refused (checksum), so is an artifact that is not a registry
    fresh = store_registry(store, reg.with_tenant(Tenant(id="new", threshold=0.25)))
    path = Path(fresh.removeprefix("file://"))  # changed before anything read it
    path.write_text(path.read_text().replace("0.25", "0.75"))
    with pytest.raises(RegistryError, match="corrupt"):
        load_registry(path)
    from state import model_store

    model = model_store.put(store, "mad", "v1", {"detector": "mad"})
    with pytest.raises(RegistryError, match="not a tenant registry"):
        load_registry(model)


def test_a_registry_in_redis(redis_url: str) -> None:
    import uuid

    import redis

    prefix = f"test:tenants:{uuid.uuid4().hex[:8]}"
    reg = parse_registry({"tenants": {"a": {"quota": {"rate": 5}}}})
    try:
        ref = store_registry(f"{redis_url}/{prefix}", reg)
        assert ref.startswith("redis://") and load_registry(ref) == reg
    finally:
        client = redis.Redis.from_url(redis_url)
        for k in client.scan_iter(f"{prefix}/*"):
            client.delete(k)
