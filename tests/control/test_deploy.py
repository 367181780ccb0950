"""Deployment artifacts: k8s manifests against the Kubernetes OpenAPI schemas (offline,
from the kubernetes-validate package), the scale patch applied by ``kubectl --local``,
the Prometheus config and the Grafana dashboard against the metrics the flow exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors import kafka as kafka_connector
from control.k8s import K8sTarget, scale_commands, scale_k8s, scale_patch
from flows import metrics
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    import kubernetes_validate as kv  # a dev dependency

    docs = _docs()
    assert {d["kind"] for d in docs} >= {
        "StatefulSet",
        "Service",
        "Deployment",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Namespace",
    }
    for d in docs:
        kv.validate(d, "1.32", strict=True)  # raises ValidationError on any problem


def test_the_validator_rejects_a_broken_manifest() -> None:
    import kubernetes_validate as kv  # a dev dependency

    sts = next(d for d in _docs() if d["kind"] == "StatefulSet")
    sts["spec"]["replicas"] = "two"
    with pytest.raises(kv.ValidationError):
        kv.validate(sts, "1.32", strict=True)


def test_statefulset_wiring() -> None:
    docs = _docs()
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "OnDelete"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == spec["serviceName"]
    )
    assert svc["spec"]["clusterIP"] == "None"
    pod = spec["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == "recovery")["persistentVolumeClaim"]
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["claimName"] == pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    container = next(c for c in pod["containers"] if c["name"] == K8sTarget().container)
    env = {e["name"] for e in container["env"]}
    # every env var the scale patch sets exists in the manifest
    patched = scale_patch(K8sTarget(), 3, 2)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {e["name"] for e in patched} <= env
    # the entrypoint uses the variables the manifest provides
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "entrypoint.sh" in d["data"])
    script = cm["data"]["entrypoint.sh"]
    used = set(re.findall(r"\$\{?([A-Z_]+)", script)) - {"HOSTNAME", "ADDRS", "ORDINAL"}
    assert used <= env, used - env
    # the flow rejects unknown AD_* settings: the ConfigMap only sets known ones
    from dataclasses import fields

    from flows.settings import Settings

    known = {f"AD_{f.name.upper()}" for f in fields(Settings)} | {"AD_METRICS_ADDR"}
    cfg = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ad-flow-config"
    )
    assert set(cfg["data"]) <= known
    assert {e for e in env if e.startswith("AD_")} <= known
    # the default: one single-worker process per core, two cores
    values = {e["name"]: e.get("value") for e in container["env"]}
    assert spec["replicas"] == int(values["FLOW_PROCESSES"]) == 2
    assert values["BYTEWAX_WORKERS_PER_PROCESS"] == "1"
    assert container["resources"]["requests"]["cpu"] == "1"


def test_kubectl_applies_the_scale_patch_offline(tmp_path: Path) -> None:
    target = K8sTarget()
    patch_cmd = scale_commands(target, processes=3, workers=2)[0]
    patch = patch_cmd[patch_cmd.index("-p") + 1]
    sts_file = tmp_path / "sts.yaml"
    sts_file.write_text(yaml.safe_dump(next(d for d in _docs() if d["kind"] == "StatefulSet")))
    res = subprocess.run(
        [
            "kubectl",
            "patch",
            "--local",
            "-f",
            str(sts_file),
            "--type",
            "strategic",
            "-p",
            patch,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    sts = json.loads(res.stdout)
    assert sts["spec"]["replicas"] == 3
    env = {
        e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["FLOW_PROCESSES"] == "3" and env["BYTEWAX_WORKERS_PER_PROCESS"] == "2"
    assert env["RECOVERY_DIR"] == "/var/lib/ad-flow/recovery"  # other env kept (merged by name)
    res = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and "kind: StatefulSet" in res.stdout, res.stderr


def test_scale_k8s_dry_run_prints_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    cmds = scale_k8s(K8sTarget(namespace="prod", context="c1"), 2, 4, dry_run=True)
    assert [c[5] for c in cmds] == ["patch", "delete", "rollout"]
    assert all(c[:5] == ["kubectl", "--context", "c1", "--namespace", "prod"] for c in cmds)
    assert capsys.readouterr().out.count("dry-run: kubectl") == 3


def test_prometheus_config_scrapes_the_flow_ports() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = [t for sc in jobs["ad-flow"]["static_configs"] for t in sc["targets"]]
    assert [int(t.rsplit(":", 1)[1]) for t in targets] == [9464, 9465, 9466, 9467]
    assert jobs["ad-flow"]["metrics_path"] == "/metrics"
    promtool = shutil.which("promtool")
    if promtool:
        res = subprocess.run(
            [promtool, "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr


def _metric_names() -> set[str]:
    names = set()
    for obj in [*vars(metrics).values(), *vars(kafka_connector).values()]:
        describe = getattr(obj, "describe", None)
        if callable(describe) and hasattr(obj, "_name"):
            for fam in describe():
                names.add(fam.name)
                names.update(s.name for s in fam.samples)
                if fam.type == "counter":
                    names.add(fam.name + "_total")
                if fam.type == "histogram":
                    names.update(fam.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def test_dashboard_queries_only_use_exported_metrics() -> None:
    dash = json.loads((ROOT / "dashboards" / "grafana.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\b(ad_[a-z_]+)", e)}
    known = _metric_names()
    assert used and used <= known, used - known
    # every flow metric is on the dashboard
    bases = {m.removesuffix("_bucket") for m in used}
    assert {
        "ad_records_in_total",
        "ad_alerts_total",
        "ad_input_lag",
        "ad_dead_letters_total",
        "ad_model_version_info",
        "ad_last_checkpoint_timestamp_seconds",
    } <= bases
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24


def test_dask_manifests_point_workers_at_the_scheduler_service() -> None:
    docs = _docs()
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "dask-scheduler"
    )
    worker = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "dask-worker"
    )
    cmd = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "scheduler")
    assert f"tcp://dask-scheduler.anomaly.svc:{port}" in cmd
