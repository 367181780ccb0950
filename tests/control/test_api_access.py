"""The control API's access control, over real HTTP against a real ``adctl serve``.

The matrix: every endpoint x role (viewer, operator, admin; as a JWT and as an API key)
x own/other tenant, plus no, malformed, expired and forged credentials. Allowed calls
do the real work (flows start and stop, models are trained and pushed, the registry
file changes); other tenants' resources are 404, too-small roles 403, bad credentials
401. No token or key text ever appears in a response body, the server log, the audit
log or the metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from control.api.keys import KeyStore
from control.api.resources import tenant_store
from state import model_store
from state.tenants import load_registry
from tests.control.api_server import ApiServer, Issuer
from tests.control.helpers import write_readings

TENANTS = ("acme", "globex")
OWN, OTHER = TENANTS
ROLES = ("viewer", "operator", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}
JSON = {"Content-Type": "application/json"}
MODEL = {"detector": "mad", "version": "v1", "params": {"window": 32, "min_periods": 8}}


@dataclass
class World:
    server: ApiServer
    issuer: Issuer
    tmp: Path
    root_token: str

    def flow_env(self, tenant: str) -> dict[str, str]:
        return {
            "AD_SOURCE": (self.tmp / f"{tenant}-in.jsonl").as_uri(),
            "AD_SINK": (self.tmp / f"{tenant}-out.jsonl").as_uri(),
            "AD_DLQ": (self.tmp / f"{tenant}-dlq.jsonl").as_uri(),
            "AD_WINDOW": "none",
            "AD_DETECTOR": "mad",
            "AD_EMIT": "all",
        }

    def wait_stopped(self, flow: str) -> None:
        with self.server.client(self.root_token) as c:
            deadline = time.monotonic() + 60
            while c.get(f"/v1/flows/{flow}").json().get("state") == "running":
                assert time.monotonic() < deadline, f"flow {flow} still running"
                time.sleep(0.3)


@pytest.fixture(scope="module")
def dask_scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    )
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, dask_scheduler: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("api")
    issuer = Issuer()
    store = (tmp / "models").as_uri()
    registry = tmp / "tenants.yaml"
    registry.write_text(
        yaml.safe_dump(
            {
                "default_tenant": "shared",
                "tenants": {
                    "shared": {},
                    **{
                        t: {"alerts": f"file://{tmp}/alerts.{{tenant}}.jsonl", "threshold": 0.9}
                        for t in TENANTS
                    },
                },
            }
        )
    )
    for t in TENANTS:
        model_store.put(tenant_store(store, t), "mad", "v1", MODEL)
        write_readings(tmp / f"{t}-in.jsonl", sensors=3, per_sensor=60)
        rows = [
            {"alert_id": f"{t}-{i}", "tenant_id": t, "sensor_id": "s", "score": 0.9}
            for i in range(3)
        ]
        (tmp / f"alerts.{t}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = ApiServer(
        tmp,
        issuer,
        "--registry",
        str(registry),
        "--model-store",
        store,
        "--allow-url",
        tmp.as_uri() + "/",
        "--scheduler",
        dask_scheduler,
    )
    w = World(server, issuer, tmp, issuer.token("root", "admin", "*"))
    try:
        with server.client(w.root_token) as c:
            for t in TENANTS:  # each tenant's flow, run once so it has a spec and an input
                r = c.post(f"/v1/flows/{t}-flow/run", json={"tenant": t, "env": w.flow_env(t)})
                assert r.status_code == 200, r.text
        for t in TENANTS:
            w.wait_stopped(f"{t}-flow")
        yield w
    finally:
        server.stop()


@dataclass
class Case:
    """One endpoint: the action it needs and how to call it for a tenant."""

    action: str
    method: str
    path: str  # {t}: the tenant; {key}: a key id made by ``prepare``
    body: Callable[[World, str], Any] | None = None
    ok: int = 200
    prepare: Callable[[World, str], dict[str, str]] | None = None
    restore: Callable[[World, str], None] | None = None


def _new_key(w: World, t: str) -> dict[str, str]:
    key, _secret = KeyStore(w.server.keys_file).create("viewer", [t], "to revoke")
    return {"key": key.id}


def _restore_tenant(w: World, t: str) -> None:
    with w.server.client(w.root_token) as c:
        alerts = f"file://{w.tmp}/alerts.{{tenant}}.jsonl"
        r = c.put(f"/v1/tenants/{t}", json={"threshold": 0.9, "alerts": alerts})
        assert r.status_code == 200, r.text


CASES = [
    Case("flows.read", "GET", "/v1/flows/{t}-flow"),
    Case("flows.read", "GET", "/v1/tenants/{t}/flows"),
    Case("flows.read", "GET", "/v1/tenants/{t}/flows/{t}-flow"),
    Case(
        "flows.run",
        "POST",
        "/v1/flows/{t}-flow/run",
        lambda w, t: {"tenant": t, "env": w.flow_env(t)},
    ),
    Case(
        "flows.scale",
        "POST",
        "/v1/flows/{t}-flow/scale",
        lambda w, t: {"workers": 2, "timeout": 30},
    ),
    Case("flows.stop", "POST", "/v1/flows/{t}-flow/stop", lambda w, t: {"timeout": 30}),
    Case("models.read", "GET", "/v1/tenants/{t}/models/mad"),
    Case(
        "models.push",
        "POST",
        "/v1/tenants/{t}/models/mad/push",
        lambda w, t: {"flow": f"{t}-flow", "version": "v1"},
    ),
    Case(
        "models.retrain",
        "POST",
        "/v1/tenants/{t}/models/mad/retrain",
        lambda w, t: {"flow": f"{t}-flow"},
    ),
    Case("tenants.read", "GET", "/v1/tenants/{t}"),
    Case(
        "tenants.write",
        "PUT",
        "/v1/tenants/{t}",
        lambda w, t: {"threshold": 0.8, "alerts": f"file://{w.tmp}/alerts.{{tenant}}.jsonl"},
    ),
    Case("tenants.read", "GET", "/v1/tenants/{t}/quota"),
    Case(
        "quota.write",
        "PUT",
        "/v1/tenants/{t}/quota",
        lambda w, t: {"rate": 10, "burst": 20, "max_sensors": 5},
    ),
    Case("alerts.read", "GET", "/v1/tenants/{t}/alerts"),
    Case("keys.write", "POST", "/v1/keys", lambda w, t: {"role": "viewer", "tenants": [t]}, ok=201),
    Case("keys.write", "DELETE", "/v1/keys/{key}", prepare=_new_key),
    Case("tenants.write", "DELETE", "/v1/tenants/{t}", restore=_restore_tenant),
]
#: endpoints of no single tenant: the role decides
GLOBAL = [
    ("flows.read", "/v1/flows"),
    ("tenants.read", "/v1/tenants"),
    ("keys.read", "/v1/keys"),
    ("tenants.read", "/v1/whoami"),
]
NEEDS = {
    "flows.read": "viewer",
    "models.read": "viewer",
    "alerts.read": "viewer",
    "tenants.read": "viewer",
    "flows.run": "operator",
    "flows.stop": "operator",
    "flows.scale": "operator",
    "models.push": "operator",
    "models.retrain": "operator",
    "tenants.write": "admin",
    "quota.write": "admin",
    "keys.read": "admin",
    "keys.write": "admin",
}


def _call(c: httpx.Client, case: Case, w: World, t: str) -> httpx.Response:
    params = {"t": t, **(case.prepare(w, t) if case.prepare else {})}
    path = case.path.format(**params)
    body = case.body(w, t) if case.body else None
    return c.request(case.method, path, json=body)


def test_the_authorisation_matrix(world: World) -> None:
    w = world
    principals: list[tuple[str, str]] = []  # (label, token)
    for role in ROLES:
        principals.append((f"jwt-{role}", w.issuer.token(f"user-{role}", role, [OWN])))
        _key, secret = KeyStore(w.server.keys_file).create(role, [OWN], f"svc-{role}")
        principals.append((f"key-{role}", secret))
    bad = {
        "none": None,
        "expired": w.issuer.token("late", "admin", "*", ttl=-60),
        "forged": w.issuer.token("mallory", "admin", "*", forged=True),
        "forged-key": "adk_0123456789abcdef_" + "x" * 43,
        "garbage": "not.a.jwt",
    }
    secrets = [tok for _l, tok in principals] + [v for v in bad.values() if v]
    failures: list[str] = []
    bodies: list[str] = []

    def check(label: str, case: Case, t: str, r: httpx.Response, want: int) -> None:
        bodies.append(r.text)
        if r.status_code != want:
            where = f"{label} {case.method} {case.path} [{t}]"
            failures.append(f"{where}: {r.status_code} != {want}: {r.text[:200]}")

    for case in CASES:
        for name, tok in bad.items():
            with w.server.client(tok) as c:
                r = _call(c, case, w, OWN)
            check(f"bad-{name}", case, OWN, r, 401)
            if r.status_code == 401:
                assert r.headers.get("www-authenticate") == "Bearer"
            if case.body is not None:  # a broken body changes nothing: 401 comes first
                path = case.path.format(t=OWN, key="0" * 16)
                with w.server.client(tok) as c:
                    r = c.request(case.method, path, content=b"{not json", headers=JSON)
                check(f"bad-{name} (broken body)", case, OWN, r, 401)
    for label, tok in principals:
        role = label.split("-", 1)[1]
        with w.server.client(tok) as c:
            for case in CASES:
                r = _call(c, case, w, OTHER)
                check(label, case, OTHER, r, 404)
                allowed = RANK[role] >= RANK[NEEDS[case.action]]
                r = _call(c, case, w, OWN)
                check(label, case, OWN, r, case.ok if allowed else 403)
                if allowed and case.restore:
                    case.restore(w, OWN)
            for action, path in GLOBAL:
                r = c.get(path)
                allowed = RANK[role] >= RANK[NEEDS[action]]
                case = Case(action, "GET", path)
                check(label, case, "-", r, 200 if allowed else 403)
    for name, tok in bad.items():
        with w.server.client(tok) as c:
            for _action, path in GLOBAL:
                check(f"bad-{name}", Case("-", "GET", path), "-", c.get(path), 401)
    assert not failures, "\n".join(failures)
    w.wait_stopped(f"{OWN}-flow")

    # the other tenant's data did not change; the own tenant's did
    reg = load_registry(w.tmp / "tenants.yaml")
    other = reg.get(OTHER)
    assert other is not None and other.threshold == 0.9 and other.quota.unlimited
    versions = model_store.list_versions(tenant_store((w.tmp / "models").as_uri(), OTHER), "mad")
    assert versions == ["v1"]
    own_versions = model_store.list_versions(tenant_store((w.tmp / "models").as_uri(), OWN), "mad")
    assert len(own_versions) == 1 + 2 * 2  # retrained by operator and admin, JWT and key
    assert (w.tmp / f"{OWN}-in.jsonl").read_text().count("#ADCTL") == 4  # pushes
    assert "#ADCTL" not in (w.tmp / f"{OTHER}-in.jsonl").read_text()
    # the flows really ran: every reading of the own tenant's input has its output
    out = (w.tmp / f"{OWN}-out.jsonl").read_text().splitlines()
    assert len({json.loads(x)["alert_id"] for x in out}) == 3 * 60

    # secrets appear nowhere: response bodies, server log, audit log, metrics
    with w.server.client() as c:
        metrics = c.get("/metrics").text
    assert "ad_api_requests_total" in metrics
    texts = {
        "bodies": "\n".join(bodies),
        "server log": w.server.log.read_text(),
        "audit log": w.server.audit.read_text(),
        "metrics": metrics,
        "keys file": w.server.keys_file.read_text(),
    }
    for where, text in texts.items():
        for s in secrets:
            assert s not in text, f"a credential appears in the {where}"
            if s.startswith("adk_"):  # adk_<16 hex id>_<secret>: the secret part alone
                assert s[21:] not in text, f"a key secret appears in the {where}"


def test_denials_and_mutations_are_audited(world: World) -> None:
    w = world
    viewer = w.issuer.token("vic", "viewer", [OWN])
    before = len(w.server.audit.read_text().splitlines())
    with w.server.client(viewer) as c:
        assert c.post(f"/v1/flows/{OWN}-flow/stop", json={}).status_code == 403
        assert c.get(f"/v1/tenants/{OTHER}").status_code == 404
        assert c.get(f"/v1/tenants/{OWN}").status_code == 200  # a read: not audited
    with w.server.client() as c:
        assert c.get(f"/v1/tenants/{OWN}").status_code == 401
    admin = w.issuer.token("ada", "admin", [OWN])
    with w.server.client(admin) as c:
        assert c.put(f"/v1/tenants/{OWN}/quota", json={"rate": 5}).status_code == 200
        assert c.put(f"/v1/tenants/{OWN}/quota", json={"burst": 5}).status_code == 422
    lines = [json.loads(x) for x in w.server.audit.read_text().splitlines()[before:]]
    got = [(x["who"], x["action"], x["tenant"], x["result"], x["status"]) for x in lines]
    assert got == [
        ("vic", "flows.stop", OWN, "denied", 403),
        ("vic", "tenants.read", OTHER, "denied", 404),
        ("anonymous", "tenants.read", None, "denied", 401),
        ("ada", "quota.write", OWN, "ok", 200),
        ("ada", "quota.write", OWN, "failed", 422),
    ]
    assert all(
        x["role"]
        == ("viewer" if x["who"] == "vic" else None if x["who"] == "anonymous" else "admin")
        for x in lines
    )
    assert lines[0]["target"] == f"flow {OWN}-flow" and lines[0]["prev"] != lines[0]["hash"]


def test_lists_show_only_the_callers_tenants(world: World) -> None:
    w = world
    KeyStore(w.server.keys_file).create("viewer", [OTHER], "globex reader")
    with w.server.client(w.issuer.token("ada", "admin", [OWN])) as c:
        flows = c.get("/v1/flows").json()
        assert [f["name"] for f in flows] == [f"{OWN}-flow"]
        reg = c.get("/v1/tenants").json()
        assert [t["id"] for t in reg["tenants"]] == [OWN] and reg["default_tenant"] is None
        keys = c.get("/v1/keys").json()
        assert keys and all(k["tenants"] == [OWN] for k in keys)
        alerts = c.get(f"/v1/tenants/{OWN}/alerts", params={"limit": 2}).json()["alerts"]
        assert [a["alert_id"] for a in alerts] == [f"{OWN}-1", f"{OWN}-2"]
        # a tenant admin cannot grant more than it has, nor reach outside its tenants
        r = c.post("/v1/keys", json={"role": "viewer", "tenants": [OWN, OTHER]})
        assert r.status_code == 404
        r = c.put(f"/v1/tenants/{OTHER}", json={})
        assert r.status_code == 404
        r = c.put(f"/v1/tenants/{OWN}?make_default=true", json={})
        assert r.status_code == 403
    with w.server.client(w.issuer.token("op", "operator", [OWN])) as c:
        assert c.post("/v1/keys", json={"role": "viewer", "tenants": [OWN]}).status_code == 403
    with w.server.client(w.root_token) as c:
        names = sorted(f["name"] for f in c.get("/v1/flows").json())
        assert names == [f"{OWN}-flow", f"{OTHER}-flow"]
        # a flow's settings are limited: no arbitrary files or modules
        r = c.post(
            "/v1/flows/x/run",
            json={"tenant": OWN, "env": {"AD_SOURCE": "file:///etc/passwd"}},
        )
        assert r.status_code == 422 and "not under an allowed URL prefix" in r.json()["detail"]
        r = c.post("/v1/flows/x/run", json={"tenant": OWN, "env": {"PYTHONPATH": "/tmp"}})
        assert r.status_code == 422 and "cannot be set through the API" in r.json()["detail"]
        assert c.get("/v1/flows/x").status_code == 404  # nothing was created


def test_a_shared_flow_shows_each_tenant_only_its_own_series(world: World) -> None:
    w = world
    write_readings(w.tmp / "shared-in.jsonl", sensors=2, per_sensor=20)
    with w.server.client(w.root_token) as c:
        r = c.post("/v1/flows/shared-flow/run", json={"tenant": "*", "env": w.flow_env("shared")})
        assert r.status_code == 200, r.text
    w.wait_stopped("shared-flow")
    with w.server.client(w.issuer.token("vic", "viewer", [OWN])) as c:
        assert c.get("/v1/flows/shared-flow").status_code == 404  # the whole flow: no
        st = c.get(f"/v1/tenants/{OWN}/flows/shared-flow").json()
        assert st["shared"] is True and st["tenant"] == "*" and "pids" not in st
        assert st["lag"] == {} and st["records_in"] == 0.0  # no series labelled acme
        names = [f["name"] for f in c.get(f"/v1/tenants/{OWN}/flows").json()]
        assert names == [f"{OWN}-flow", "shared-flow"]
        assert c.get(f"/v1/tenants/{OWN}/flows/{OTHER}-flow").status_code == 404
        assert c.get(f"/v1/tenants/{OTHER}/flows/shared-flow").status_code == 404


def test_the_registry_reaches_a_shared_flow_at_a_position_of_its_input(world: World) -> None:
    """A shared flow run with ``tenants`` applies the registry as stored at its start;
    ``POST /v1/flows/{name}/registry`` (an admin of every tenant) stores the current one
    and writes a signed marker into the flow's input, which the flow applies there."""
    from schemas.markers import decode_marker
    from tests.conftest import CONTROL_KEY

    w = world
    kept = {t: (w.tmp / f"alerts.{t}.jsonl").read_bytes() for t in TENANTS}  # routed sinks
    src = w.tmp / "reg-in.jsonl"
    write_readings(src, sensors=2, per_sensor=20)
    try:
        with w.server.client(w.root_token) as c:
            body = {"tenant": "*", "env": w.flow_env("reg"), "tenants": True}
            assert c.post("/v1/flows/reg-flow/run", json=body).status_code == 200
            w.wait_stopped("reg-flow")
            r = c.post(f"/v1/flows/{OWN}-flow/run", json={**body, "tenant": OWN})
            assert r.status_code == 409 and "only a shared flow" in r.json()["detail"]
            r = c.post(f"/v1/flows/{OWN}-flow/registry")  # not a shared flow
            assert r.status_code == 409
        for token, status in (
            (w.issuer.token("a1", "admin", [OWN]), 404),  # the registry is every tenant's
            (w.issuer.token("o1", "operator", "*"), 403),
            (w.issuer.token("v1", "viewer", "*"), 403),
        ):
            with w.server.client(token) as c:
                assert c.post("/v1/flows/reg-flow/registry").status_code == status
        assert src.read_bytes().count(b"#ADCTL") == 0  # nothing was written by them
        with w.server.client(w.root_token) as c:
            r = c.post("/v1/flows/reg-flow/registry")
            assert r.status_code == 200, r.text
            pushed = r.json()
            assert pushed["digest"] == load_registry(w.tmp / "tenants.yaml").digest
            assert pushed["markers"] and set(pushed["tenants"]) >= set(TENANTS)
            marker = src.read_bytes().splitlines()[-1]
            body_ = decode_marker(marker, CONTROL_KEY.encode())
            assert body_ is not None and body_["type"] == "tenants"
            assert body_["registry_ref"] == pushed["registry_ref"]
            # the flow resumes, reads the marker and takes the registry: no dead letter
            assert c.post("/v1/flows/reg-flow/run", json=body).status_code == 200
            w.wait_stopped("reg-flow")
        dlq = w.tmp / "reg-dlq.jsonl"
        assert b"bad_control" not in (dlq.read_bytes() if dlq.exists() else b"")
    finally:
        for t, data in kept.items():
            (w.tmp / f"alerts.{t}.jsonl").write_bytes(data)
