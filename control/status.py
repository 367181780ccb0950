"""Scrape the flow processes' Prometheus endpoints and summarise them for ``adctl status``.

Input lag per partition is the flow's own ``ad_input_lag{partition}`` (end offset minus
the flow's position); events/s and alerts/s are rates between two scrapes.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["FlowSnapshot", "render", "scrape", "snapshot", "summarize"]


@dataclass
class FlowSnapshot:
    """Totals over all reachable endpoints at one moment."""

    t: float
    endpoints_up: list[str] = field(default_factory=list)
    endpoints_down: dict[str, str] = field(default_factory=dict)
    lag: dict[str, float] = field(default_factory=dict)
    records_in: float = 0.0
    alerts: float = 0.0
    dead_letters: dict[str, float] = field(default_factory=dict)
    model_versions: dict[str, list[str]] = field(default_factory=dict)
    last_checkpoint: float | None = None

    @property
    def total_lag(self) -> float | None:
        """Summed consumer lag over all partitions; None when none is reported."""
        return sum(self.lag.values()) if self.lag else None


def scrape(endpoint: str, timeout: float = 3.0) -> list[tuple[str, dict[str, str], float]]:
    """``(sample name, labels, value)`` from ``http://endpoint/metrics``."""
    url = endpoint if endpoint.startswith("http") else f"http://{endpoint}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - local scrape
        text = resp.read().decode("utf-8", "replace")
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.append((s.name, dict(s.labels), float(s.value)))
    return out


def snapshot(endpoints: Sequence[str], timeout: float = 3.0) -> FlowSnapshot:
    """Scrape every endpoint and add up the flow's metrics."""
    snap = FlowSnapshot(t=time.time())
    versions: dict[str, set[str]] = {}
    for ep in endpoints:
        try:
            samples = scrape(ep, timeout)
        except OSError as exc:
            snap.endpoints_down[ep] = str(getattr(exc, "reason", exc))
            continue
        snap.endpoints_up.append(ep)
        for name, labels, value in samples:
            if name == "ad_input_lag":
                part = labels.get("partition", "?")
                snap.lag[part] = snap.lag.get(part, 0.0) + value
            elif name == "ad_records_in_total":
                snap.records_in += value
            elif name == "ad_alerts_total":
                snap.alerts += value
            elif name == "ad_dead_letters_total":
                reason = labels.get("reason", "?")
                snap.dead_letters[reason] = snap.dead_letters.get(reason, 0.0) + value
            elif name == "ad_model_version_info" and value > 0:
                versions.setdefault(labels.get("detector", "?"), set()).add(
                    labels.get("version", "?")
                )
            elif name == "ad_last_checkpoint_timestamp_seconds" and value > 0:
                snap.last_checkpoint = max(snap.last_checkpoint or 0.0, value)
    snap.model_versions = {k: sorted(v) for k, v in sorted(versions.items())}
    return snap


def summarize(
    prev: FlowSnapshot | None, cur: FlowSnapshot, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A JSON-friendly status dict; rates need a previous snapshot."""
    dt = (cur.t - prev.t) if prev is not None else 0.0
    rate = lambda a, b: max(0.0, (b - a) / dt) if dt > 0 else None  # noqa: E731
    out: dict[str, Any] = {
        "time": cur.t,
        "endpoints_up": cur.endpoints_up,
        "endpoints_down": cur.endpoints_down,
        "lag": dict(sorted(cur.lag.items())),
        "total_lag": cur.total_lag,
        "events_per_s": rate(prev.records_in, cur.records_in) if prev else None,
        "alerts_per_s": rate(prev.alerts, cur.alerts) if prev else None,
        "records_in": cur.records_in,
        "alerts": cur.alerts,
        "dead_letters": dict(sorted(cur.dead_letters.items())),
        "model_versions": cur.model_versions,
        "checkpoint_age_s": (cur.t - cur.last_checkpoint) if cur.last_checkpoint else None,
    }
    out.update(extra or {})
    return out


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}"
    return f"{v}{unit}"


def render(st: dict[str, Any]) -> str:
    """Human-readable status text."""
    lines = []
    state = st.get("state")
    if state:
        lines.append(f"flow:         {state}")
    if "workers" in st:
        lines.append(f"workers:      {st['workers']} x {st.get('processes', 1)} process(es)")
    up, down = st["endpoints_up"], st["endpoints_down"]
    lines.append(
        f"metrics:      {len(up)} up, {len(down)} down"
        + "".join(f"\n  down {ep}: {why}" for ep, why in down.items())
    )
    lines.append(f"events/s:     {_fmt(st['events_per_s'])}    (total {_fmt(st['records_in'])})")
    lines.append(f"alerts/s:     {_fmt(st['alerts_per_s'])}    (total {_fmt(st['alerts'])})")
    dl = st["dead_letters"]
    lines.append(
        f"dead letters: {_fmt(sum(dl.values())) if dl else '0'}"
        + "".join(f"\n  {r}: {v:,.0f}" for r, v in dl.items())
    )
    mv = st["model_versions"]
    lines.append("models:       " + (", ".join(f"{d}={'/'.join(v)}" for d, v in mv.items()) or "-"))
    lines.append(f"checkpoint:   {_fmt(st['checkpoint_age_s'], ' s ago')}")
    lines.append(f"input lag:    {_fmt(st['total_lag'])}")
    for part, lag in st["lag"].items():
        lines.append(f"  {part:<24} {lag:>12,.0f}")
    return "\n".join(lines)
