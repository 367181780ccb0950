"""Configuration: env vars, YAML file, errors that name the key and show an example."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.settings import SettingsError, load_settings


def test_defaults_run_the_demo() -> None:
    s = load_settings({})
    assert (s.source, s.sink, s.dlq) == ("demo://", "stdout://", "stderr://")
    assert s.window == "tumbling" and s.window_size == 60.0


def test_env_overrides_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "ad.yaml"
    cfg.write_text(
        "source: kafka://k:9092/in\nwindow: session\nsession_gap: 10m\n"
        "kafka:\n  security.protocol: SSL\n"
    )
    s = load_settings(
        {
            "AD_CONFIG": str(cfg),
            "AD_WINDOW": "sliding",
            "AD_WINDOW_SIZE": "2m",
            "AD_WINDOW_SLIDE": "30s",
        }
    )
    assert s.source == "kafka://k:9092/in"
    assert s.window == "sliding" and s.window_size == 120.0 and s.window_slide == 30.0
    assert s.session_gap == 600.0
    assert s.kafka == {"security.protocol": "SSL"}


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AD_SORUCE": "demo://"}, "AD_SORUCE"),
        ({"AD_SOURCE": "kafak://x/y"}, "kafka://127.0.0.1:9092/sensors"),
        ({"AD_SOURCE": "kafka://host:notaport/t"}, "source"),
        ({"AD_WINDOW_SIZE": "ten"}, "AD_WINDOW_SIZE=60s"),
        ({"AD_WINDOW": "hopping"}, "AD_WINDOW=tumbling"),
        ({"AD_THRESHOLD": "2"}, "between 0 and 1"),
        ({"AD_DETECTOR_PARAMS": "[1]"}, "JSON object"),
        (
            {"AD_WINDOW": "sliding", "AD_WINDOW_SIZE": "10s", "AD_WINDOW_SLIDE": "20s"},
            "window_slide",
        ),
        ({"AD_KEY_BY": "tenant"}, "AD_KEY_BY=auto"),
        ({"AD_DOGSTATSD": "agent"}, "AD_DOGSTATSD=127.0.0.1:8125"),
        ({"AD_CONTROL_KEY": "short"}, "at least 16"),
        ({"AD_KEY_BY": "partition", "AD_SOURCE": "redis://127.0.0.1:6379/s"}, "kafka://"),
    ],
)
def test_bad_configuration_names_the_key_and_an_example(env: dict, needle: str) -> None:
    with pytest.raises(SettingsError, match=None) as exc:
        load_settings(env)
    assert needle in str(exc.value)


def test_unknown_yaml_key_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "ad.yaml"
    cfg.write_text("windw: tumbling\n")
    with pytest.raises(SettingsError, match="windw"):
        load_settings({"AD_CONFIG": str(cfg)})


def test_readme_table_is_generated_from_the_declarations() -> None:
    from flows.settings import markdown_table
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- settings-table")
    block = readme[readme.index("\n", start) + 1 : readme.index("<!-- /settings-table -->")]
    assert block == markdown_table(), "run: python -m flows.settings --markdown"


def test_every_ad_variable_the_code_reads_is_declared() -> None:
    """No code may read an AD_* variable that no declaration knows (the loader would
    reject or ignore it): flow settings, PROCESS_KEYS, adctl's flags, the stack's."""
    import re

    from control import cli, cli_env
    from flows.settings import flow_env_names, typo_of
    from tests.conftest import ROOT

    cli.build_parser()
    known_flow = flow_env_names()
    known = known_flow | cli_env.ADCTL_ENV
    found: dict[str, str] = {}
    for pkg in ("connectors", "detectors", "state", "schemas", "flows", "control"):
        for path in (ROOT / pkg).rglob("*.py"):
            for name in re.findall(r"[\"'](AD_[A-Z][A-Z0-9_]*)[\"']", path.read_text()):
                found.setdefault(name, str(path.relative_to(ROOT)))
    undeclared = {
        n: p for n, p in found.items() if n not in known and not n.startswith("AD_STACK_")
    }
    assert not undeclared
    # and none of adctl's own names looks like a misspelt flow setting (it would stop the flow)
    assert not {n: typo_of(n) for n in cli_env.ADCTL_ENV - known_flow if typo_of(n)}


def test_other_tools_variables_do_not_stop_the_flow() -> None:
    s = load_settings(
        {
            "AD_WORKERS": "2",
            "AD_MODEL_VERSION": "v3",
            "AD_SINCE": "2026-01-01",
            "AD_XP": "numpy",
            "AD_KINESIS_ENDPOINT": "http://127.0.0.1:4567",
        }
    )
    assert s.source == "demo://"


def test_secrets_never_print() -> None:
    s = load_settings({"AD_KAFKA_SASL_PASSWORD": "hunter2", "AD_KAFKA_SASL_USERNAME": "det"})
    assert s.kafka["sasl.password"] == "hunter2"
    assert "hunter2" not in repr(s) and "det" in repr(s)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"AD_WINDOW": "hopping"}, "AD_WINDOW=tumbling"),
        ({"AD_SINK": "kafka://127.0.0.1:1/alerts?connect_timeout=1s"}, "cannot reach Kafka"),
        ({"AD_SINK": "file:///etc/hostname/alerts.jsonl"}, "is not a directory"),
        ({"AD_SOURCE": "file:///nowhere/*.jsonl"}, "no input file matches"),
    ],
)
def test_the_flow_exits_2_with_one_line_at_start_up(env: dict, needle: str) -> None:
    import subprocess

    from tests.flowrun import PY, ROOT, flow_env

    proc = subprocess.run(
        [PY, "-W", "ignore", "-m", "bytewax.run", "flows.detector"],
        cwd=ROOT,
        env=flow_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
