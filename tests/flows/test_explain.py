"""Alerts say why, and the explanation does not depend on how records were batched."""

from __future__ import annotations

import json
import random

from detectors.base import REASONS
from tests.flows.test_windows import _run


def test_alert_explanations_do_not_depend_on_batching() -> None:
    rng = random.Random(5)
    records = []
    for i in range(1200):
        for s in ("a", "b"):
            v = 10 + rng.gauss(0, 1) + (30 if i in (700, 703) and s == "b" else 0)
            records.append(
                json.dumps(
                    {"sensor_id": s, "timestamp": 1_767_225_600_000 + i * 60_000, "value": v}
                ).encode()
            )
    env = {"AD_WINDOW": "tumbling", "AD_WINDOW_SIZE": "60s", "AD_DETECTOR": "ensemble"}
    one, _ = _run(records, [len(records)], env)  # every window of a sensor in one batch
    sizes, left = [], len(records)
    while left:
        sizes.append(min(left, rng.randint(1, 40)))
        left -= sizes[-1]
    many, _ = _run(records, sizes, env)
    key = lambda a: (a["sensor_id"], a["window_start"])  # noqa: E731
    assert sorted(one, key=key) == sorted(many, key=key)
    spikes = [a for a in one if a["sensor_id"] == "b" and a["value"] > 30]
    assert spikes and all(a["explain"]["reason"] in REASONS for a in one)
    assert spikes[0]["explain"]["reason"] == "spike"
    lo, hi = spikes[0]["explain"]["expected"]
    assert lo < 10 < hi < spikes[0]["value"]
