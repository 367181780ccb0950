"""The closing summary of a bounded run (files, ``tail=false``, the demo), on stderr.

Counts come from the process's metrics (every worker of the process); a run of several
processes prints one summary per process. For the demo it also says which alerts are
the injected anomalies, so a newcomer can tell a true alert from noise.
"""

from __future__ import annotations

import atexit
import sys
import time
from typing import Any

from connectors import demo
from connectors.base import SourceURL
from flows import metrics
from flows.records import iso

__all__ = ["install", "note_alert", "render"]

#: alerts noted for the summary: (sensor, window start ms, window end ms, score)
_alerts: list[tuple[str, int, int, float]] | None = None
_MAX_NOTED = 100_000
#: share of records dead-lettered above which the summary warns
WARN_SHARE = 0.05


def note_alert(sensor: str, start: int, end: int, score: float) -> None:
    """Remember an alert for the summary (only while one is installed)."""
    if _alerts is not None and len(_alerts) < _MAX_NOTED:
        _alerts.append((sensor, start, end, score))


def bounded(url: SourceURL) -> bool:
    """Whether a source ends by itself."""
    if url.scheme in ("demo",):
        return True
    if url.scheme == "file":
        return not url.bool("tail", False)
    if url.scheme == "pubsub":
        return url.param("idle_exit") is not None
    return not url.bool("tail", True)


def install(source: SourceURL) -> None:
    """Print the summary when this process ends, if ``source`` is bounded."""
    global _alerts
    if not bounded(source) or _alerts is not None:
        return
    _alerts = []
    started = time.monotonic()
    atexit.register(lambda: print(render(source, time.monotonic() - started), file=sys.stderr))


def _samples(counter: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in counter.collect():
        for s in fam.samples:
            if s.name.endswith("_total"):
                key = next(iter(s.labels.values()), "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def render(source: SourceURL, elapsed: float) -> str:
    """The summary text."""
    records = int(sum(_samples(metrics.RECORDS_IN).values()))
    dead = {k: int(v) for k, v in _samples(metrics.DEAD_LETTERS).items() if v}
    alerts = int(sum(_samples(metrics.ALERTS_OUT).values()))
    lines = [
        f"summary: {records:,} records read, {alerts:,} alerts, "
        f"{sum(dead.values()):,} dead letters in {elapsed:.1f} s"
        + (f" ({', '.join(f'{k} {v:,}' for k, v in sorted(dead.items()))})" if dead else ""),
    ]
    share = sum(dead.values()) / records if records else 0.0
    if share > WARN_SHARE:
        lines.append(f"warning: {share:.0%} of the records are dead letters; {_cause(dead)}")
    if source.scheme == "demo":
        lines += _demo_lines(source, alerts)
    return "\n".join(lines)


def _cause(dead: dict[str, int]) -> str:
    top = max(dead, key=lambda k: dead[k])
    return {
        "late": "most are late: is the input sorted by time per sensor? (else raise "
        "AD_ALLOWED_LATENESS)",
        "bad_timestamp": "most have bad timestamps: is AD_TIMESTAMP_UNIT right for the "
        "input (seconds vs milliseconds), or are they older than AD_EARLIEST_TIME?",
        "future": "most are far in the future of their sensor: check the input's clocks",
    }.get(top, f"most are {top!r}: see the dead-letter sink for each record's error")


def _demo_lines(source: SourceURL, alerts: int) -> list[str]:
    noted = _alerts or []
    lines = ["demo: the injected anomalies and the alerts on them:"]
    matched: set[int] = set()
    for sensor, kind, start, end in demo.injected(source):
        hits = [
            i
            for i, (s, a, b, _score) in enumerate(noted)
            if s == sensor and b > start and a < end + 3_600_000
        ]
        matched.update(hits)
        if hits:
            first = noted[hits[0]]
            lines.append(
                f"  {sensor} {kind} from {iso(start)}: alerted at {iso(first[1])} "
                f"(score {first[3]:.2f}; {len(hits)} alert(s))"
            )
        else:
            lines.append(f"  {sensor} {kind} from {iso(start)}: NOT alerted")
    noise = len(noted) - len(matched)
    sensors = source.int("sensors", 8, minimum=1)
    days = source.float("hours", 168.0) / 24
    lines.append(
        f"  other alerts (noise): {noise} ({noise / max(1e-9, sensors * days):.2f} per sensor-day)"
    )
    return lines
