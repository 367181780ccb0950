"""Autoscaling policy: a pure state machine fed with (time, lag, cpu) samples.

Load is ``max(lag / lag_high, cpu)``: 1.0 means "as much lag as ``lag_high`` records" or
"every worker's CPU busy". The policy scales **up** when load stays at or above
``up_threshold`` for ``sustain_s`` seconds, **down** when it stays at or below
``down_threshold`` as long, within ``[min_workers, max_workers]``, and never sooner than
``cooldown_s`` after its previous change. Every decision carries its reason.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["Decision", "PolicyConfig", "AutoscalePolicy", "Sample"]


@dataclass(frozen=True)
class PolicyConfig:
    """Thresholds and bounds (defaults: up at 80 %, down at 20 %, cooldown 5 minutes)."""

    min_workers: int = 1
    max_workers: int = 8
    up_threshold: float = 0.8
    down_threshold: float = 0.2
    cooldown_s: float = 300.0
    sustain_s: float = 60.0
    lag_high: float = 10_000.0
    step: int = 1

    def validate(self) -> None:
        """Raise ``ValueError`` when the bounds or thresholds are inconsistent."""
        if not 1 <= self.min_workers <= self.max_workers:
            raise ValueError("need 1 <= min_workers <= max_workers")
        if not 0 <= self.down_threshold < self.up_threshold:
            raise ValueError("need 0 <= down_threshold < up_threshold")
        if self.cooldown_s < 0 or self.sustain_s < 0 or self.lag_high <= 0 or self.step < 1:
            raise ValueError("cooldown/sustain must be >= 0, lag_high > 0, step >= 1")


@dataclass(frozen=True)
class Sample:
    """One observation: time (s), total input lag (records), CPU busy fraction (0..1)."""

    t: float
    lag: float | None
    cpu: float | None = None


@dataclass(frozen=True)
class Decision:
    """What to do now: ``action`` is ``up``, ``down`` or ``hold``."""

    t: float
    action: str
    workers: int
    target: int
    load: float | None
    reason: str

    @property
    def changes(self) -> bool:
        """Whether the decision changes the worker count."""
        return self.target != self.workers


class AutoscalePolicy:
    """Feed samples in time order with :meth:`observe`; apply changed decisions.

    Args:
        config: the policy (validated here).
        workers: the current worker count (clamped to the policy's bounds).
        last_change: when the worker count last changed (sample time), if known.
    """

    def __init__(self, config: PolicyConfig, workers: int, last_change: float | None = None):
        config.validate()
        self.cfg = config
        self.workers = max(config.min_workers, min(config.max_workers, workers))
        self.last_change = last_change
        self.window: deque[tuple[float, float]] = deque()

    def load(self, s: Sample) -> float | None:
        """The sample's load: the larger of lag / ``lag_high`` and CPU; None without either."""
        parts = []
        if s.lag is not None:
            parts.append(max(0.0, s.lag) / self.cfg.lag_high)
        if s.cpu is not None:
            parts.append(max(0.0, s.cpu))
        return max(parts) if parts else None

    def _describe(self, s: Sample, load: float) -> str:
        bits = []
        if s.lag is not None:
            bits.append(f"lag {s.lag:.0f}/{self.cfg.lag_high:.0f}")
        if s.cpu is not None:
            bits.append(f"cpu {s.cpu:.0%}")
        return f"load {load:.0%} ({', '.join(bits)})"

    def _hold(self, s: Sample, load: float | None, why: str) -> Decision:
        return Decision(s.t, "hold", self.workers, self.workers, load, why)

    def observe(self, s: Sample) -> Decision:
        """Record ``s`` and decide; a changing decision resets the window and cooldown."""
        cfg = self.cfg
        load = self.load(s)
        if load is None:
            return self._hold(s, None, "no lag or CPU reading this time; holding")
        self.window.append((s.t, load))
        while self.window and self.window[0][0] < s.t - cfg.sustain_s:
            self.window.popleft()
        span = s.t - self.window[0][0]
        desc = self._describe(s, load)
        # a window that does not yet cover sustain_s cannot say "stays above"
        covered = span >= cfg.sustain_s or cfg.sustain_s == 0
        high = covered and all(v >= cfg.up_threshold for _, v in self.window)
        low = covered and all(v <= cfg.down_threshold for _, v in self.window)
        if not (high or low):
            why = (
                "within thresholds"
                if cfg.down_threshold < load < cfg.up_threshold
                else f"not sustained for {cfg.sustain_s:g}s yet"
            )
            return self._hold(s, load, f"{desc}: {why}")
        action = "up" if high else "down"
        target = (
            min(cfg.max_workers, self.workers + cfg.step)
            if high
            else max(cfg.min_workers, self.workers - cfg.step)
        )
        threshold = cfg.up_threshold if high else cfg.down_threshold
        side = "above" if high else "below"
        if target == self.workers:
            bound = "max" if high else "min"
            return self._hold(
                s,
                load,
                f"{desc} {side} {threshold:.0%} for {span:.0f}s but already at "
                f"{bound} workers ({self.workers})",
            )
        if self.last_change is not None and s.t - self.last_change < cfg.cooldown_s:
            left = cfg.cooldown_s - (s.t - self.last_change)
            return self._hold(
                s, load, f"{desc} {side} {threshold:.0%} for {span:.0f}s; cooldown {left:.0f}s left"
            )
        decision = Decision(
            s.t,
            action,
            self.workers,
            target,
            load,
            f"{desc} {side} {threshold:.0%} for {span:.0f}s: "
            f"scale {action} {self.workers} -> {target} workers",
        )
        self.workers = target
        self.last_change = s.t
        self.window.clear()
        return decision
