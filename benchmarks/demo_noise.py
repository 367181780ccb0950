"""Alerts on the built-in demo stream at a threshold: noise per sensor-day, anomalies found.

``python -m benchmarks.demo_noise [--threshold T] [--detector NAME] [--params JSON]``

Scores every demo sensor directly (the demo's default one-minute tumbling windows hold
one reading each, so a window's mean is the reading). An alert is *noise* when it falls
outside every injected anomaly (from its start to its end plus ``GRACE_S``); an injected
anomaly is *found* when an alert falls within ``GRACE_S`` after its start (what
``tests/flows/test_demo.py`` asks of the real flow).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from connectors.demo import ANOMALIES, START_MS, _series

GRACE_S = 3 * 3600.0


def demo_alerts(
    threshold: float,
    detector: str = "ensemble",
    params: dict[str, Any] | None = None,
    sensors: int = 8,
    hours: float = 168.0,
    step_s: int = 60,
    seed: int = 7,
) -> dict[str, Any]:
    """Noise alerts per sensor-day and the injected anomalies without an alert."""
    from detectors import get_detector

    det = get_detector(detector, params)
    n = int(hours * 3600 // step_s)
    t0 = START_MS / 1000.0
    ts = t0 + np.arange(n, dtype=np.float64) * step_s + step_s  # window ends
    noise, missed = 0, []
    for s in range(sensors):
        name = f"sensor-{s:02d}"
        x = np.round(_series(s, n, step_s, seed), 4)
        _, sc = det.score(det.init_state(), x, ts)
        hit = ts[sc >= threshold] - step_s  # window starts
        if name in ANOMALIES:
            _kind, a, b = ANOMALIES[name]
            start, end = t0 + a * hours * 3600, t0 + b * hours * 3600
            if not np.any((hit >= start) & (hit - start <= GRACE_S)):
                missed.append(name)
            hit = hit[(hit < start) | (hit > end + GRACE_S)]
        noise += int(hit.size)
    days = sensors * hours / 24.0
    return {"noise_alerts": noise, "per_sensor_day": noise / days, "missed": missed}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.demo_noise", description=__doc__)
    ap.add_argument("--threshold", type=float, help="default: the flow's configured threshold")
    ap.add_argument("--detector", default="ensemble")
    ap.add_argument("--params", default="{}", help="detector params (JSON)")
    args = ap.parse_args(argv)
    if args.threshold is None:
        from flows.settings import Settings

        args.threshold = Settings().threshold
    r = demo_alerts(args.threshold, args.detector, json.loads(args.params))
    print(
        f"threshold {args.threshold}: {r['noise_alerts']} noise alerts "
        f"({r['per_sensor_day']:.3f} per sensor-day); missed: {r['missed'] or 'none'}"
    )
    return r


if __name__ == "__main__":
    main()
