"""Progress of work measured in records: a tqdm bar with records/s and ETA on a
terminal, else a line per second with the same figures.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from control.progress import say

__all__ = ["RateProgress"]


class RateProgress:
    """Call with ``(done, total)`` records; ``mode`` is auto | bar | plain | none."""

    def __init__(self, mode: str, desc: str) -> None:
        self.mode = ("bar" if sys.stderr.isatty() else "plain") if mode == "auto" else mode
        self.desc = desc
        self.bar: Any = None
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` records."""
        if self.mode == "none":
            return
        if self.mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:
                self.mode = "plain"
            else:
                if self.bar is None:
                    self.bar = tqdm(
                        total=total, desc=self.desc, unit="rec", unit_scale=True, file=sys.stderr
                    )
                self.bar.update(done - self.bar.n)
                if done >= total:
                    self.bar.close()
                return
        now = time.monotonic()
        if done >= total or now - self.last >= 1.0:
            self.last = now
            rate = done / max(1e-9, now - self.t0)
            eta = (total - done) / rate if rate > 0 else float("inf")
            say(
                f"{self.desc}: {done:,}/{total:,} records ({100 * done / max(1, total):.0f}%), "
                f"{rate:,.0f} records/s, ETA {eta:.0f}s"
            )
