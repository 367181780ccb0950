"""The local process supervisor with a small recoverable Bytewax flow (files in and out):
clean stop, SIGKILL, and rescaling to 2 workers and to 2 processes mid-stream all end with
exactly the output of an uninterrupted run."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from control.supervisor import FlowSpec, Supervisor

N = 600


def _expected() -> Counter[str]:
    totals: dict[str, int] = {}
    out = []
    for i in range(N):
        k = f"k{i % 5}"
        totals[k] = totals.get(k, 0) + i
        out.append(f"{k},{i},{totals[k]}")
    return Counter(out)


@pytest.fixture
def flow(tmp_path: Path) -> tuple[Supervisor, FlowSpec, Path]:
    inp, out = tmp_path / "in.txt", tmp_path / "out.txt"
    inp.write_text("".join(f"k{i % 5},{i}\n" for i in range(N)))
    spec = FlowSpec(
        module="tests.control.sample_flow",
        workers=1,
        snapshot_interval=1,
        recovery_parts=3,
        env={"AD_TEST_IN": str(inp), "AD_TEST_OUT": str(out), "AD_TEST_DELAY": "0.01"},
    )
    sv = Supervisor(tmp_path / "state")
    yield sv, spec, out
    if sv.running():
        sv.kill()


def _lines(out: Path) -> Counter[str]:
    return Counter(out.read_text().splitlines()) if out.exists() else Counter()


def _wait_output(out: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(_lines(out).values()) < n:
        assert time.monotonic() < deadline, f"no output after {timeout}s"
        time.sleep(0.1)


def test_stop_rescale_and_kill_mid_stream_keep_output_exact(
    flow: tuple[Supervisor, FlowSpec, Path],
) -> None:
    sv, spec, out = flow
    sv.start(spec)
    _wait_output(out, 40)
    assert sv.running()
    new = sv.scale(workers=2)  # clean stop (SIGINT), restart from the recovery store
    assert new.workers == 2 and new.processes == 1 and sv.running()
    _wait_output(out, 120)
    new = sv.scale(workers=1, processes=2)  # two processes (-i/-a), one worker each
    assert [p.alive for p in sv.processes()] == [True, True]
    _wait_output(out, 200)
    sv.kill()  # a crash: SIGKILL of every process group
    assert not sv.running() and all(p.exit_code is None for p in sv.processes())
    sv.start(sv.load_spec() or spec)
    procs = sv.wait(120)
    assert all(p.exit_code == 0 for p in procs), procs
    assert _lines(out) == _expected()
    log = (sv.log_dir / "flow-0.log").read_text()
    assert log.count("=== adctl start") == 4 and "-a 127.0.0.1:" in log


def test_a_clean_stop_is_reported_and_a_second_start_is_refused(
    flow: tuple[Supervisor, FlowSpec, Path],
) -> None:
    sv, spec, _out = flow
    sv.start(spec)
    from control.supervisor import SupervisorError

    with pytest.raises(SupervisorError, match="already running"):
        sv.start(spec)
    time.sleep(1.0)
    clean, procs = sv.stop(timeout=30)
    assert clean and procs[0].interrupted and not procs[0].alive
