"""The autoscaling policy on synthetic lag/CPU series (pure: no processes, no clock)."""

from __future__ import annotations

import pytest

from control.autoscale import AutoscalePolicy, Decision, PolicyConfig, Sample

CFG = PolicyConfig(
    min_workers=1,
    max_workers=4,
    up_threshold=0.8,
    down_threshold=0.2,
    cooldown_s=300,
    sustain_s=60,
    lag_high=10_000,
    step=1,
)


def run(
    policy: AutoscalePolicy, lags: list[float], dt: float = 15.0, cpu: list[float] | None = None
) -> list[Decision]:
    return [
        policy.observe(Sample(i * dt, lag, None if cpu is None else cpu[i]))
        for i, lag in enumerate(lags)
    ]


def changes(ds: list[Decision]) -> list[tuple[float, str, int]]:
    return [(d.t, d.action, d.target) for d in ds if d.changes]


def test_sustained_high_lag_scales_up_once_then_waits_for_cooldown() -> None:
    p = AutoscalePolicy(CFG, workers=1)
    ds = run(p, [9_000.0] * 40)  # 10 minutes at 90 % load, a sample every 15 s
    # up after 60 s above the threshold, again as soon as the 300 s cooldown has passed
    assert changes(ds) == [(60.0, "up", 2), (360.0, "up", 3)]
    assert "not sustained" in ds[5].reason and ds[5].action == "hold"
    assert "cooldown 225s left" in ds[9].reason and ds[9].action == "hold"
    assert "above 80%" in ds[4].reason and "1 -> 2" in ds[4].reason


def test_a_short_spike_does_not_scale() -> None:
    p = AutoscalePolicy(CFG, workers=2)
    lags = [3_000.0] * 4 + [9_500.0] * 3 + [3_000.0] * 10  # 45 s above, not 60
    ds = run(p, lags)
    assert changes(ds) == []
    assert all(d.action == "hold" for d in ds)
    assert "not sustained" in ds[6].reason


def test_low_load_scales_down_to_the_minimum_and_stops_there() -> None:
    cfg = PolicyConfig(**{**CFG.__dict__, "cooldown_s": 60})
    p = AutoscalePolicy(cfg, workers=3)
    ds = run(p, [100.0] * 60)
    assert [c[1:] for c in changes(ds)] == [("down", 2), ("down", 1)]
    assert "already at min workers (1)" in ds[-1].reason


def test_max_workers_is_respected() -> None:
    p = AutoscalePolicy(PolicyConfig(**{**CFG.__dict__, "cooldown_s": 0}), workers=3)
    ds = run(p, [50_000.0] * 30)
    assert [c[2] for c in changes(ds)] == [4]
    assert "already at max workers (4)" in ds[-1].reason


def test_cpu_alone_can_drive_scaling() -> None:
    p = AutoscalePolicy(CFG, workers=1)
    ds = run(p, [0.0] * 8, cpu=[0.95] * 8)
    assert changes(ds) == [(60.0, "up", 2)]
    assert "cpu 95%" in ds[4].reason


def test_oscillating_load_between_thresholds_holds() -> None:
    p = AutoscalePolicy(CFG, workers=2)
    lags = [3_000.0, 7_000.0] * 20
    assert changes(run(p, lags)) == []


def test_missing_samples_hold_and_do_not_count_towards_sustain() -> None:
    p = AutoscalePolicy(CFG, workers=1)
    d = p.observe(Sample(0.0, None, None))
    assert d.action == "hold" and "no lag or CPU" in d.reason


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError):
        AutoscalePolicy(PolicyConfig(min_workers=3, max_workers=2), 1)
    with pytest.raises(ValueError):
        AutoscalePolicy(PolicyConfig(up_threshold=0.2, down_threshold=0.5), 1)
