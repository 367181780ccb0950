"""Send the flow's metrics to a DogStatsD agent too (``AD_DOGSTATSD=host:port``).

Every ``interval`` seconds (and when the process ends) a daemon thread reads the same
Prometheus registry the metrics server serves and sends, over UDP, each counter's
increase since the last send as a DogStatsD count and each gauge's value as a gauge;
histograms go as their ``_sum`` and ``_count`` counts. Labels become tags (so
``tenant:acme``), plus ``process:<AD_PROCESS_ID>``. UDP: a lost packet loses a sample,
never blocks the flow.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import threading
from typing import Any

from prometheus_client import REGISTRY

__all__ = ["DogStatsD", "start"]

_PACKET_BYTES = 1400  # below a typical MTU


class DogStatsD:
    """Push the registry's metrics to ``host:port``.

    Args:
        address: the agent, ``host:port``.
        registry: the Prometheus registry to read (default: the process's).
    """

    def __init__(self, address: str, registry: Any = REGISTRY) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"AD_DOGSTATSD={address!r}: give host:port, e.g. 127.0.0.1:8125")
        self._addr = (host, int(port))
        self._registry = registry
        self._sent: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._process = os.environ.get("AD_PROCESS_ID", "0")
        self._lock = threading.Lock()

    def lines(self) -> list[str]:
        """The DogStatsD lines for what changed since the last call."""
        out = []
        for fam in self._registry.collect():
            for s in fam.samples:
                if fam.type in ("counter", "histogram"):
                    if fam.type == "counter" and not s.name.endswith("_total"):
                        continue  # a counter's _created sample
                    if fam.type == "histogram" and not s.name.endswith(("_sum", "_count")):
                        continue
                    kind = "c"
                elif fam.type == "gauge":
                    kind = "g"
                else:
                    continue
                labels = tuple(sorted(s.labels.items()))
                value = float(s.value)
                if kind == "c":
                    key = (s.name, labels)
                    delta = value - self._sent.get(key, 0.0)
                    self._sent[key] = value
                    if delta <= 0:
                        continue
                    value = delta
                tags = ",".join([*(f"{k}:{v}" for k, v in labels), f"process:{self._process}"])
                out.append(f"{s.name}:{value:g}|{kind}|#{tags}")
        return out

    def flush(self) -> None:
        """Send what changed, in packets below the MTU."""
        with self._lock:
            packet: list[str] = []
            size = 0
            for line in self.lines():
                if packet and size + len(line) + 1 > _PACKET_BYTES:
                    self._send(packet)
                    packet, size = [], 0
                packet.append(line)
                size += len(line) + 1
            if packet:
                self._send(packet)

    def _send(self, lines: list[str]) -> None:
        # the agent away: metrics are best effort, the flow goes on
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(lines).encode(), self._addr)

    def run(self, interval: float, stop: threading.Event) -> None:
        """Flush every ``interval`` seconds until ``stop`` is set."""
        while not stop.wait(interval):
            self.flush()


def start(address: str, interval: float = 10.0) -> DogStatsD:
    """Start pushing to ``address`` from a daemon thread; flush once more at exit."""
    client = DogStatsD(address)
    stop = threading.Event()
    threading.Thread(target=client.run, args=(interval, stop), daemon=True).start()
    atexit.register(client.flush)
    return client
