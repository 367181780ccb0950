"""The audit log's hash chain and ``adctl audit verify``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from control.api.audit import GENESIS, AuditLog, verify
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
