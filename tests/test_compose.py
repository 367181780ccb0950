"""docker-compose.yml is valid (docker-compose config, no engine needed) and complete."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.flowrun import ROOT


def test_compose_file_validates() -> None:
    proc = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_compose_has_the_whole_stack() -> None:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    assert spec["kafka"]["image"].startswith("apache/kafka:")
    assert spec["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in (
        "redis",
        "pubsub",
        "kinesis",
        "dask-scheduler",
        "dask-worker",
        "detector",
        "prometheus",
    ):
        assert name in spec, name
    env = spec["detector"]["environment"]
    assert env["AD_SOURCE"].startswith("kafka://kafka:9092/")
    from flows.settings import load_settings

    assert env["AD_PROCESSES"] == "auto" and "AD_WORKERS" not in env  # a process per core
    entrypoint_only = {
        "AD_PROCESSES",
        "AD_CLUSTER_PORT",
        "AD_WORKERS",
        "AD_SNAPSHOT_S",
        "AD_BACKUP_S",
        "AD_RECOVERY_DIR",
        "AD_RECOVERY_PARTS",
    }  # docker/entrypoint.sh consumes and unsets them
    load_settings(
        {k: str(v) for k, v in env.items() if k.startswith("AD_") and k not in entrypoint_only}
    )
    assert (ROOT / "deploy" / "prometheus.yml").is_file()


def test_compose_starts_the_control_api(monkeypatch: pytest.MonkeyPatch) -> None:
    api = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["ad-api"]
    assert api["entrypoint"] == ["adctl"] and api["command"][0] == "serve"
    assert api["image"] == "anomaly-detector:0.1.0" and "8080:8080" in api["ports"]
    for key in [k for k in os.environ if k.startswith("AD_")]:
        monkeypatch.delenv(key)
    for key, value in api["environment"].items():
        monkeypatch.setenv(key, str(value))
    from control.cli import build_parser

    args = build_parser().parse_args(api["command"])  # every flag and AD_* value is adctl's
    assert (args.host, args.port, args.state_dir) == ("0.0.0.0", 8080, "/var/lib/adctl")
    assert args.registry == "/var/lib/adctl/tenants.yaml"
    assert args.allow_url == ["kafka://kafka:9092/"]


def test_dask_runs_the_projects_image() -> None:
    """The Dask scheduler and workers run the project's image (the detector's), so
    ``adctl detect --scheduler tcp://dask-scheduler:8786`` finds the project there."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    image = spec["detector"]["image"]
    assert spec["detector"]["build"] == "."
    for name, cmd in (("dask-scheduler", "scheduler"), ("dask-worker", "worker")):
        assert spec[name]["image"] == image and spec[name]["build"] == ".", name
        assert spec[name]["entrypoint"][:2] == ["dask", cmd], name
    assert "tcp://dask-scheduler:8786" in spec["dask-worker"]["entrypoint"]
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"]
    assert "pip install --no-cache-dir '.[all]'" in (ROOT / "Dockerfile").read_text()
    assert any("dask" in x for x in extras["all"])  # the image has Dask's workers


def test_images_are_pinned_and_a_demo_producer_feeds_the_detector() -> None:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name, svc in spec.items():
        image = svc.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest" and tag != "emulators", (name, image)
    producer = spec["demo-producer"]
    assert producer["entrypoint"][-1] == "connectors.demo_producer"
    topic = producer["command"][0].split("?")[0].rsplit("/", 1)[1]
    assert spec["detector"]["environment"]["AD_SOURCE"].endswith(f"/{topic}")
