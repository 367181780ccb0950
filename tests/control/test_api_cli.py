"""``adctl keys`` stores only hashes and prints a key once; ``adctl serve`` refuses a bad
configuration with one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

from control.api.keys import KeyStore
from tests.control.test_api_audit import _adctl


def test_keys_are_stored_as_hashes_and_printed_once(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    res = _adctl(
        "keys",
        "create",
        "--role",
        "operator",
        "--tenant",
        "acme",
        "--keys-file",
        str(keys),
        "--name",
        "ci",
    )
    assert res.returncode == 0, res.stderr
    secret = res.stdout.strip()
    assert secret.startswith("adk_") and secret not in keys.read_text()
    assert secret[21:] not in keys.read_text()  # adk_<16 hex id>_<secret>
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    store = KeyStore(keys)
    key = store.verify(secret)
    assert key is not None and (key.role, key.tenants, key.name) == ("operator", ("acme",), "ci")
    assert store.verify(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    listed = _adctl("keys", "list", "--keys-file", str(keys))
    assert json.loads(listed.stdout)["id"] == key.id and secret not in listed.stdout
    assert _adctl("keys", "revoke", key.id, "--keys-file", str(keys)).returncode == 0
    assert KeyStore(keys).verify(secret) is None
    res = _adctl("keys", "revoke", key.id, "--keys-file", str(keys))
    assert res.returncode == 2 and "no key" in res.stderr
    res = _adctl("keys", "create", "--role", "root", "--tenant", "acme", "--keys-file", str(keys))
    assert res.returncode == 2


def test_serve_refuses_bad_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "tenants.yaml"
    bad.write_text("tenants: {acme: {window: hopping}}\n")
    res = _adctl("--state-dir", str(tmp_path), "serve", "--registry", str(bad))
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "tenants.acme.window: must be one of" in res.stderr
    res = _adctl("--state-dir", str(tmp_path), "serve", "--jwks", str(tmp_path / "no.json"))
    assert res.returncode == 2 and "--jwks" in res.stderr and "no such file" in res.stderr
    short = tmp_path / "hs.key"
    short.write_text("short")
    res = _adctl("--state-dir", str(tmp_path), "serve", "--jwt-key", str(short))
    assert res.returncode == 2 and "at least 32 bytes" in res.stderr
