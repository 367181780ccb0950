"""The audit log's hash chain and ``adctl audit verify``; ``adctl keys`` stores only
hashes and prints a key once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from control.api.audit import GENESIS, AuditLog, verify
from control.api.keys import KeyStore
from tests.conftest import ROOT


def _adctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


def _log(path: Path, n: int) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.append(
            who=f"u{i}",
            role="admin",
            tenant="acme",
            action="quota.write",
            target=f"tenant acme #{i}",
            result="ok",
            status=200,
        )
    return log


def test_an_intact_chain_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 5)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(lines, lines[1:], strict=False))
    v = verify(path)
    assert v.ok and v.lines == 5 and v.head == lines[-1]["hash"]
    res = _adctl("audit", "verify", "--audit-log", str(path))
    assert res.returncode == 0 and "5 line(s), chain intact" in res.stdout, res.stderr


def test_an_edited_line_is_found_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _log(path, 6)
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"result":"ok"', '"result":"denied"')
    path.write_text("\n".join(lines) + "\n")
    v = verify(path)
    assert (v.ok, v.bad_line) == (False, 4) and "does not match its hash" in v.reason
    res = _adctl("audit", "verify", "--audit-log", str(path))
    assert res.returncode == 1 and f"{path}:4: tampered" in res.stdout


def test_a_recomputed_hash_deleted_or_inserted_line_breaks_the_link(tmp_path: Path) -> None:
    from control.api.audit import _digest

    path = tmp_path / "audit.jsonl"
    _log(path, 5)
    lines = path.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["who"] = "someone-else"
    forged["hash"] = _digest(forged)  # a careful forger recomputes this line's hash
    tampered = [lines[0], json.dumps(forged), *lines[2:]]
    path.write_text("\n".join(tampered) + "\n")
    assert verify(path).bad_line == 3  # the next line no longer links to it
    path.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # a line removed
    assert verify(path).bad_line == 2
    path.write_text("\n".join([*lines[:2], "{}", *lines[2:]]) + "\n")  # a line inserted
    assert verify(path).bad_line == 3


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    logs = [AuditLog(path) for _ in range(3)]  # separate writers, one file (flock)
    threads = [threading.Thread(target=_append_many, args=(log, 20)) for log in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    v = verify(path)
    assert v.ok and v.lines == 60


def _append_many(log: AuditLog, n: int) -> None:
    for i in range(n):
        log.append(who="w", action="flows.run", result="ok", status=200, n=i)


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
    assert secret.split("_")[-1] not in keys.read_text()
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
