"""Schemathesis against the published OpenAPI of a real ``adctl serve``: generated
requests to every operation, as a tenant admin, never get a server error (5xx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from control.api.resources import tenant_store
from state import model_store
from tests.control.api_server import ApiServer, Issuer


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, str]]:
    tmp: Path = tmp_path_factory.mktemp("schema")
    registry = tmp / "tenants.yaml"
    registry.write_text(yaml.safe_dump({"tenants": {"acme": {"threshold": 0.9}, "other": {}}}))
    store = (tmp / "models").as_uri()
    model_store.put(tenant_store(store, "acme"), "mad", "v1", {"detector": "mad"})
    issuer = Issuer()
    server = ApiServer(
        tmp,
        issuer,
        "--registry",
        str(registry),
        "--model-store",
        store,
        "--allow-url",
        tmp.as_uri() + "/",
        "--alerts",
        (tmp / "alerts.jsonl").as_uri(),
        "--log-level",
        "warning",
    )
    (tmp / "alerts.jsonl").write_text('{"tenant_id": "acme", "score": 1.0}\n')
    try:
        yield server, issuer.token("fuzzer", "admin", ["acme"])
    finally:
        server.stop()


def test_no_server_errors(served: tuple[ApiServer, str]) -> None:
    server, token = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 17
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=12,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(
                base_url=server.url, headers=headers, checks=[not_a_server_error]
            )

        fuzz()
