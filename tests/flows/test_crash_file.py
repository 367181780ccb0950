"""file:// source and sink: SIGKILL restarts give exactly the crash-free output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flowrun import crash_run, flow_env, init_recovery, make_readings, run_to_completion

pytestmark = pytest.mark.slow


def test_file_sink_truncates_to_its_snapshot_and_is_exact(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(v for _k, v in make_readings(per_sensor=4000)) + b"\n")

    def env(tag: str) -> dict[str, str]:
        return flow_env(
            AD_SOURCE=f"file://{src}?batch=100",
            AD_SINK=f"file://{tmp_path}/{tag}-alerts.jsonl",
            AD_DLQ=f"file://{tmp_path}/{tag}-dlq.jsonl",
            AD_EMIT="all",
            AD_DETECTOR="mad",
        )

    run_to_completion(env("ref"), init_recovery(tmp_path / "ref-rec"), log=tmp_path / "log")
    kills = crash_run(
        env("crash"),
        init_recovery(tmp_path / "crash-rec"),
        kills=4,
        log=tmp_path / "log",
        seed=3,
        min_s=1.0,
        max_s=2.0,
    )
    assert kills >= 3
    for name in ("alerts", "dlq"):
        ref = (tmp_path / f"ref-{name}.jsonl").read_bytes().splitlines()
        got = (tmp_path / f"crash-{name}.jsonl").read_bytes().splitlines()
        assert len(ref) > 100 if name == "alerts" else len(ref) > 10
        assert sorted(got) == sorted(ref) and len(set(got)) == len(got)
