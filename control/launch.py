"""The one way this project starts ``python -m bytewax.run``: adctl's supervisor, the
tests and the benchmarks all build their processes' command lines and environments here.

A flow execution is ``processes`` OS processes of ``workers`` worker threads each; with
more than one process every process gets ``-i <index> -a <addresses>`` (Bytewax's cluster
mode) and ``AD_PROCESS_ID`` (the flow offsets its metrics port by it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

__all__ = ["FlowLaunch", "clean_env", "cores", "free_ports", "parse_processes"]


def cores() -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup (v2) CPU quota,
    so a container limited to 2 CPUs on a 16-core host says 2.
    """
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = n or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return n


def parse_processes(text: str) -> int:
    """A process count: a positive integer, or ``auto`` for one per core (:func:`cores`)."""
    if text.strip().lower() == "auto":
        return cores()
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"a process count must be at least 1 or auto (e.g. 2), got {text!r}")
    return n


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (for ``-a`` addresses)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def clean_env(root: Path, drop: tuple[str, ...] = ("AD_",), **overrides: str) -> dict[str, str]:
    """An environment for a flow subprocess: this one without variables starting with
    ``drop`` (stray ``AD_*`` settings of the caller), importing from ``root``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(root)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@dataclass(frozen=True)
class FlowLaunch:
    """How to run a flow with ``python -m bytewax.run``.

    Args:
        target: the flow (``module`` or ``module:factory()``).
        workers: worker threads per process (``-w``).
        processes: OS processes (``-i``/``-a`` when more than one).
        recovery_dir: Bytewax recovery store (``-r``); ``None`` runs without recovery.
        snapshot_s: seconds between snapshots (``-s``).
        backup_s: seconds Bytewax keeps old snapshots (``-b``).
        addresses: ``host:port`` of every process (default: free local ports, see
            :meth:`with_addresses`).
        python: the interpreter.
    """

    target: str = "flows.detector"
    workers: int = 1
    processes: int = 1
    recovery_dir: str | None = None
    snapshot_s: int = 5
    backup_s: int = 0
    addresses: tuple[str, ...] = field(default=())
    python: str = sys.executable

    def with_addresses(self) -> FlowLaunch:
        """This launch with cluster addresses on free local ports (if it needs any)."""
        if self.processes <= 1 or self.addresses:
            return self
        return replace(self, addresses=tuple(f"127.0.0.1:{p}" for p in free_ports(self.processes)))

    def argv(self, index: int) -> list[str]:
        """The command line of process ``index``."""
        cmd = [self.python, "-m", "bytewax.run", self.target, "-w", str(self.workers)]
        if self.recovery_dir is not None:
            cmd += ["-r", str(self.recovery_dir), "-s", str(int(self.snapshot_s))]
            cmd += ["-b", str(int(self.backup_s))]
        if self.processes > 1:
            if len(self.addresses) != self.processes:
                raise ValueError("a launch of several processes needs with_addresses() first")
            cmd += ["-i", str(index), "-a", ";".join(self.addresses)]
        return cmd

    def env(self, base: dict[str, str], index: int) -> dict[str, str]:
        """The environment of process ``index``: ``base`` plus ``AD_PROCESS_ID``."""
        return {**base, "AD_PROCESS_ID": str(index)}

    def spawn(
        self,
        base_env: dict[str, str],
        *,
        cwd: str | Path,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        wrap: Sequence[str] | Any = (),
    ) -> list[subprocess.Popen[bytes]]:
        """Start every process in a session of its own (so its group can be signalled).

        ``wrap`` is a command put before each process's command line (e.g. a profiler),
        or a callable ``index -> list[str]``.
        """
        launch = self.with_addresses()
        procs = []
        for i in range(launch.processes):
            prefix = list(wrap(i) if callable(wrap) else wrap)
            procs.append(
                subprocess.Popen(
                    [*prefix, *launch.argv(i)],
                    cwd=cwd,
                    env=launch.env(base_env, i),
                    stdout=stdout,
                    stderr=subprocess.STDOUT if stdout is not subprocess.DEVNULL else stdout,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        return procs
