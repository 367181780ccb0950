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
        ({"AD_KEY_BY": "tenant"}, "AD_KEY_BY=partition"),
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
