"""``adctl report``: plot one sensor's series over a time range with its alerts marked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from control.history import Fields, iter_records, load_series, parse_time

__all__ = ["AlertMark", "load_alerts", "plot_report"]

ALERT_TIME_FIELDS = ("timestamp", "window_end", "window_start", "event_time", "ts")


@dataclass(frozen=True)
class AlertMark:
    """One alert to draw: when, its window (if any), score and model version."""

    t: float
    start: float | None
    end: float | None
    score: float | None
    model_version: str | None


def load_alerts(
    sources: Sequence[str],
    sensor: str,
    key_field: str = "sensor_id",
    since: float | None = None,
    until: float | None = None,
    kafka_conf: dict[str, str] | None = None,
) -> list[AlertMark]:
    """Alerts of ``sensor`` from alert topics/files (JSON records), sorted by time."""
    out = []
    for rec in iter_records(sources, kafka_conf=kafka_conf):
        if str(rec.get(key_field)) != sensor:
            continue
        t = None
        for name in ALERT_TIME_FIELDS:
            if rec.get(name) is not None:
                try:
                    t = parse_time(rec[name])
                    break
                except ValueError:
                    continue
        if t is None or (since is not None and t < since) or (until is not None and t >= until):
            continue
        start = parse_time(rec["window_start"]) if rec.get("window_start") is not None else None
        end = parse_time(rec["window_end"]) if rec.get("window_end") is not None else None
        score = float(rec["score"]) if isinstance(rec.get("score"), (int, float)) else None
        mv = rec.get("model_version")
        out.append(AlertMark(t, start, end, score, str(mv) if mv is not None else None))
    return sorted(out, key=lambda a: a.t)


def plot_report(
    input_sources: Sequence[str],
    alert_sources: Sequence[str],
    sensor: str,
    out: str | Path,
    *,
    fields: Fields | None = None,
    since: float | None = None,
    until: float | None = None,
    kafka_conf: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Draw the plot to ``out`` (PNG/SVG/PDF by suffix); return a small summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fields = fields or Fields()
    series = load_series(
        input_sources,
        fields=fields,
        since=since,
        until=until,
        keys={sensor},
        kafka_conf=kafka_conf,
        by_tenant=False,
    ).get(sensor)
    alerts = (
        load_alerts(alert_sources, sensor, fields.key, since, until, kafka_conf)
        if alert_sources
        else []
    )
    if series is None and not alerts:
        raise ValueError(f"sensor {sensor!r} has no readings or alerts in the given range")
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=110)
    n_points = 0
    if series is not None:
        n_points = len(series.values)
        times = (np.round(series.timestamps * 1000).astype(np.int64)).astype("datetime64[ms]")
        ax.plot(times, series.values, lw=0.9, color="#1f77b4", label=f"{sensor} value")
    versions = sorted({a.model_version for a in alerts if a.model_version})
    tab10 = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]  # a ListedColormap
    colors: dict[str | None, Any] = dict(zip(versions, tab10[1:], strict=False))
    labelled: set[str | None] = set()
    for a in alerts:
        color = colors.get(a.model_version, "#d62728")
        label = f"alert (model {a.model_version})" if a.model_version else "alert"
        lbl = label if a.model_version not in labelled else None
        labelled.add(a.model_version)
        if a.start is not None and a.end is not None and a.end > a.start:
            ax.axvspan(  # matplotlib's date units take datetime64 (its stubs say float)
                np.datetime64(int(a.start * 1000), "ms"),  # type: ignore[arg-type]
                np.datetime64(int(a.end * 1000), "ms"),  # type: ignore[arg-type]
                color=color,
                alpha=0.25,
                label=lbl,
            )
        else:
            ax.axvline(
                np.datetime64(int(a.t * 1000), "ms"),  # type: ignore[arg-type]  # as above
                color=color,
                alpha=0.7,
                lw=1.2,
                label=lbl,
            )
    ax.set_title(f"sensor {sensor}: {n_points} readings, {len(alerts)} alerts")
    ax.set_xlabel("event time (UTC)")
    ax.set_ylabel("value")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return {
        "sensor": sensor,
        "points": n_points,
        "alerts": len(alerts),
        "model_versions": versions,
        "out": str(out),
    }
