"""``adctl scale --target k8s``: rescale the flow's StatefulSet with ``kubectl``.

The StatefulSet (``deploy/k8s/flow.yaml``) runs one Bytewax process per pod with
``podManagementPolicy: Parallel`` and ``updateStrategy: OnDelete``: every process must
agree on the process count, so a rescale patches replicas and the ``FLOW_PROCESSES`` /
``BYTEWAX_WORKERS_PER_PROCESS`` env of the ``flow`` container in one patch, then deletes
all pods at once (SIGTERM, which the entrypoint turns into a clean SIGINT). They come
back with the new parallelism and resume from the shared recovery volume.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["K8sError", "K8sTarget", "scale_patch", "scale_commands", "scale_k8s"]


class K8sError(RuntimeError):
    """kubectl is missing or a kubectl command failed."""


@dataclass(frozen=True)
class K8sTarget:
    """Which StatefulSet to scale, and how to reach the cluster."""

    statefulset: str = "ad-flow"
    namespace: str = "anomaly"
    container: str = "flow"
    selector: str = "app.kubernetes.io/name=ad-flow"
    context: str | None = None
    kubectl: str = "kubectl"


def scale_patch(target: K8sTarget, processes: int, workers: int) -> dict[str, Any]:
    """The strategic-merge patch: replicas plus the parallelism env of the flow container."""
    if processes < 1 or workers < 1:
        raise K8sError("--processes and --workers must be at least 1")
    env = [
        {"name": "FLOW_PROCESSES", "value": str(processes)},
        {"name": "BYTEWAX_WORKERS_PER_PROCESS", "value": str(workers)},
    ]
    return {
        "spec": {
            "replicas": processes,
            "template": {"spec": {"containers": [{"name": target.container, "env": env}]}},
        }
    }


def _base(target: K8sTarget) -> list[str]:
    argv = [target.kubectl]
    if target.context:
        argv += ["--context", target.context]
    return argv + ["--namespace", target.namespace]


def scale_commands(
    target: K8sTarget, processes: int, workers: int, timeout_s: int = 300
) -> list[list[str]]:
    """The kubectl commands that perform the rescale, in order."""
    patch = json.dumps(scale_patch(target, processes, workers), separators=(",", ":"))
    base = _base(target)
    return [
        base + ["patch", "statefulset", target.statefulset, "--type", "strategic", "-p", patch],
        base + ["delete", "pod", "-l", target.selector, "--wait=true", f"--timeout={timeout_s}s"],
        base
        + ["rollout", "status", f"statefulset/{target.statefulset}", f"--timeout={timeout_s}s"],
    ]


def scale_k8s(
    target: K8sTarget,
    processes: int,
    workers: int,
    *,
    dry_run: bool = False,
    timeout_s: int = 300,
    log: Callable[[str], None] = print,
    runner: Callable[[Sequence[str]], subprocess.CompletedProcess[str]] | None = None,
) -> list[list[str]]:
    """Run (or with ``dry_run`` only print) the rescale; return the commands."""
    cmds = scale_commands(target, processes, workers, timeout_s)
    if dry_run:
        for c in cmds:
            log("dry-run: " + " ".join(c))
        return cmds
    if shutil.which(target.kubectl) is None:
        raise K8sError(
            f"{target.kubectl!r} not found on PATH; install kubectl or pass --kubectl PATH"
        )
    run = runner or (
        lambda c: subprocess.run(list(c), capture_output=True, text=True, timeout=timeout_s + 30)
    )
    for c in cmds:
        log("$ " + " ".join(c))
        res = run(c)
        if res.returncode != 0:
            # rollout status may be unsupported for OnDelete StatefulSets: not fatal
            if "rollout" in c:
                log(f"warning: {res.stderr.strip()}")
                continue
            raise K8sError(f"{' '.join(c[:6])}... failed: {res.stderr.strip() or res.stdout}")
        if res.stdout.strip():
            log(res.stdout.strip())
    return cmds
