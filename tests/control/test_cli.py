"""``adctl`` as a user meets it: help everywhere, AD_* defaults, clear errors, and the
environment handed to flow processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from control import cli
from tests.conftest import CONTROL_KEY, ROOT

COMMANDS = [
    "retrain",
    "push-model",
    "models",
    "run",
    "stop",
    "scale",
    "autoscale",
    "status",
    "report",
]


def _adctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}
    base["AD_CONTROL_KEY"] = CONTROL_KEY  # shared by adctl and flows
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "control", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _subparser(parser: cli.argparse.ArgumentParser, name: str) -> cli.argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    return sub.choices[name]  # type: ignore[no-any-return]


@pytest.mark.parametrize("command", [*COMMANDS, "tenants push"])
def test_every_subcommand_has_help_naming_its_env_vars(command: str) -> None:
    parser = cli.build_parser()
    for name in command.split():
        parser = _subparser(parser, name)
    sub_parser = parser
    text = " ".join(sub_parser.format_help().split())
    assert "[env: AD_" in text
    # every option except --help/--dry-run/--json/--watch/--kill/--sensor/-e has an env var
    for action in sub_parser._actions:
        if action.option_strings and action.dest not in (
            "help",
            "dry_run",
            "json",
            "watch",
            "kill",
            "sensor",
            "env",
        ):
            assert "[env: AD_" in (action.help or ""), (command, action.dest)


def test_help_runs_as_a_program() -> None:
    res = _adctl("--help")
    assert res.returncode == 0 and all(c in res.stdout for c in COMMANDS)
    res = _adctl("scale", "--help")
    assert res.returncode == 0 and "--workers" in res.stdout


def test_env_defaults_and_flags_override_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AD_MODEL_STORE", "file:///m")
    monkeypatch.setenv("AD_DETECTOR", "ensemble")
    monkeypatch.setenv("AD_AUTOSCALE_COOLDOWN", "42")
    monkeypatch.setenv("AD_HISTORY", "a.csv;b.jsonl")
    monkeypatch.setenv("AD_PUSH", "yes")
    p = cli.build_parser()
    a = p.parse_args(["retrain"])
    assert (a.model_store, a.detector, a.source, a.push) == (
        "file:///m",
        "ensemble",
        ["a.csv", "b.jsonl"],
        True,
    )
    a = p.parse_args(
        ["retrain", "--from", "x.parquet", "--from", "y.csv", "--no-push", "--detector", "mad"]
    )
    assert (a.source, a.push, a.detector) == (["x.parquet", "y.csv"], False, "mad")
    assert p.parse_args(["autoscale"]).cooldown == 42.0


def test_bad_env_values_and_args_are_clear_errors(tmp_path: Path) -> None:
    res = _adctl("autoscale", "--iterations", "1", env={"AD_AUTOSCALE_UP": "lots"})
    assert res.returncode == 2 and "AD_AUTOSCALE_UP='lots' is invalid" in res.stderr
    res = _adctl("autoscale", "--up", "0.1", "--down", "0.5", "--iterations", "1")
    assert res.returncode == 2 and "down_threshold < up_threshold" in res.stderr
    res = _adctl("--state-dir", str(tmp_path), "scale", "--workers", "2")
    assert res.returncode == 2 and "no flow was started" in res.stderr
    res = _adctl("--state-dir", str(tmp_path), "status")
    assert res.returncode == 2 and "no metrics endpoints" in res.stderr
    res = _adctl("push-model", "--model-store", tmp_path.as_uri())
    assert res.returncode == 2 and "no versions of 'ensemble'" in res.stderr
    res = _adctl("--state-dir", str(tmp_path), "run", "--env-file", str(tmp_path / "missing.env"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = _adctl("--state-dir", str(tmp_path), "stop")
    assert res.returncode == 0 and "not running" in res.stderr


def test_flow_env_keeps_flow_settings_and_drops_adctl_ones() -> None:
    cli.build_parser()
    env = cli.flow_env(
        {
            "AD_SOURCE": "kafka://x/y",
            "AD_WORKERS": "3",
            "AD_DASK_SCHEDULER": "t",
            "AD_MODEL_STORE": "redis://r",
            "AD_CONFIG": "c.yaml",
            "PATH": "/bin",
            "AD_STATE_DIR": ".adctl",
            "AD_KAFKA_SECURITY_PROTOCOL": "SSL",
        }
    )
    assert env == {
        "AD_SOURCE": "kafka://x/y",
        "AD_MODEL_STORE": "redis://r",
        "AD_CONFIG": "c.yaml",
        "PATH": "/bin",
        "AD_KAFKA_SECURITY_PROTOCOL": "SSL",
    }
    # and the flow's own settings loader accepts what is left
    from flows.settings import load_settings

    load_settings({k: v for k, v in env.items() if k != "AD_CONFIG"})


def test_env_file_parsing(tmp_path: Path) -> None:
    from control.supervisor import SupervisorError, load_env_file

    f = tmp_path / "flow.env"
    f.write_text("# comment\nexport AD_SOURCE='kafka://h:1/t?tail=false'\n\nAD_WINDOW=none\n")
    assert load_env_file(f) == {"AD_SOURCE": "kafka://h:1/t?tail=false", "AD_WINDOW": "none"}
    f.write_text("AD_SOURCE\n")
    with pytest.raises(SupervisorError, match="expected KEY=VALUE"):
        load_env_file(f)


def test_report_plots_a_sensor_with_alerts(tmp_path: Path) -> None:
    from tests.control.helpers import START_MS, write_readings

    inp = tmp_path / "in.jsonl"
    write_readings(inp, sensors=2, per_sensor=200)
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(
        "\n".join(
            f'{{"sensor_id": "sensor-001", "window_start": {START_MS + i * 10_000}, '
            f'"window_end": {START_MS + i * 10_000 + 60_000}, "score": 0.99, '
            f'"model_version": "{v}"}}'
            for i, v in ((50, "builtin-1"), (147, "v2"))
        )
        + "\n"
    )
    out = tmp_path / "r.png"
    res = _adctl(
        "report",
        "--sensor",
        "sensor-001",
        "--input",
        str(inp),
        "--alerts",
        str(alerts),
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert '"alerts": 2' in res.stdout and '"points": 200' in res.stdout
    res = _adctl("report", "--sensor", "nope", "--input", str(inp), "--out", str(out))
    assert res.returncode == 2 and "no readings or alerts" in res.stderr


def test_run_shows_the_flows_own_error(tmp_path: Path) -> None:
    res = _adctl("--state-dir", str(tmp_path), "run", "-e", "AD_WINDOW=hopping")
    assert res.returncode == 2 and "AD_WINDOW=tumbling" in res.stderr
    res = _adctl(
        "--state-dir",
        str(tmp_path),
        "run",
        "--wait",
        "--timeout",
        "60",
        "-e",
        "AD_SOURCE=file:///nowhere/*.jsonl",
    )
    assert res.returncode == 1
    assert "exited with 2: no input file matches '/nowhere/*.jsonl'" in res.stderr


def test_run_starts_one_process_per_core_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from control import launch

    monkeypatch.delenv("AD_PROCESSES", raising=False)
    assert cli.build_parser().parse_args(["run"]).processes == launch.cores() >= 1
    assert cli.build_parser().parse_args(["run", "-p", "3"]).processes == 3
    monkeypatch.setenv("AD_PROCESSES", "auto")
    assert cli.build_parser().parse_args(["run"]).processes == launch.cores()
    res = _adctl("--state-dir", str(tmp_path), "run", "-p", "0")
    assert res.returncode == 2 and "at least 1 or auto" in res.stderr


def test_cores_follow_a_cgroup_cpu_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from control import launch

    real = launch.Path

    def fake(p: str) -> Path:
        return tmp_path / "cpu.max" if p == "/sys/fs/cgroup/cpu.max" else real(p)

    monkeypatch.setattr(launch, "Path", fake)
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda _pid: set(range(16)))
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert launch.cores() == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert launch.cores() == 16
