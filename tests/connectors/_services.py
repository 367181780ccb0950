"""Start, stop and restart private broker processes for connector tests.

The shared stack (``make stack-up``) runs Redis, the Pub/Sub emulator and kinesalite on
fixed ports; tests that must *restart* a service start their own private instance on a
free port with this module, so they never disturb the shared one.  Every process started
here is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINESALITE = Path(
    os.environ.get(
        "AD_KINESALITE_BIN", str(ROOT / ".stack" / "node" / "node_modules" / ".bin" / "kinesalite")
    )
)
PUBSUB_EMULATOR = Path(
    os.environ.get(
        "AD_PUBSUB_EMULATOR_BIN",
        "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator",
    )
)
REDIS_SERVER = os.environ.get("AD_REDIS_SERVER_BIN", shutil.which("redis-server") or "redis-server")


def redis_port() -> int:
    return int(os.environ.get("AD_STACK_REDIS_PORT", "16379"))


def pubsub_port() -> int:
    return int(os.environ.get("AD_STACK_PUBSUB_PORT", "18085"))


def kinesis_port() -> int:
    return int(os.environ.get("AD_STACK_KINESIS_PORT", "14567"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_port(port: int, up: bool = True, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port) == up:
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} not {'up' if up else 'down'} after {timeout}s")


@dataclass
class Service:
    """One private broker process that can be stopped and started again on its port."""

    kind: str  # "redis" | "kinesis" | "pubsub"
    port: int
    data_dir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        if self.kind == "redis":
            return [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                str(self.data_dir),
            ]
        if self.kind == "kinesis":
            return [
                str(KINESALITE),
                "--port",
                str(self.port),
                "--path",
                str(self.data_dir),
                "--createStreamMs",
                "0",
                "--deleteStreamMs",
                "0",
                "--updateStreamMs",
                "0",
                "--shardLimit",
                "100",
            ]
        if self.kind == "pubsub":
            return [str(PUBSUB_EMULATOR), "--host=127.0.0.1", f"--port={self.port}"]
        raise ValueError(self.kind)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / f"{self.kind}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self._argv(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_port(self.port, up=True, timeout=90.0)

    def stop(self) -> None:
        """Kill the service abruptly (SIGKILL to its own process group) and wait."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        wait_port(self.port, up=False, timeout=30.0)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_private(kind: str, data_dir: Path) -> Service:
    svc = Service(kind, free_port(), data_dir)
    svc.start()
    return svc
