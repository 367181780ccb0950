"""What adctl shows while it works: one-line messages and progress (a bar or lines)."""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["Progress", "say"]


def say(msg: str) -> None:
    """Print an ``adctl:`` message on stderr."""
    print(f"adctl: {msg}", file=sys.stderr, flush=True)


class Progress:
    """Call with ``(done, total)``: a tqdm bar on a terminal, else a line a second with
    the rate and the time left (or nothing, ``mode`` none); ``unit`` names what is
    counted (``key``, ``record``).

    Args:
        mode: ``auto`` (a bar on a terminal, else lines), ``bar``, ``plain`` or ``none``.
        desc: what is being done, shown before the counts.
        unit: what is counted.
    """

    def __init__(self, mode: str, desc: str, unit: str = "key") -> None:
        self.mode = ("bar" if sys.stderr.isatty() else "plain") if mode == "auto" else mode
        self.desc = desc
        self.unit = unit
        self.bar: Any = None
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total``."""
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
                        total=total,
                        desc=self.desc,
                        unit=self.unit[:3],
                        unit_scale=self.unit != "key",
                        file=sys.stderr,
                    )
                self.bar.update(done - self.bar.n)
                if done >= total:
                    self.bar.close()
                return
        now = time.monotonic()
        if done >= total or now - self.last >= 1.0:
            self.last = now
            rate = done / max(1e-9, now - self.t0)
            eta = f"{(total - done) / rate:.0f}s" if rate > 0 else "?"
            say(
                f"{self.desc}: {done:,}/{total:,} {self.unit}s "
                f"({100 * done / max(1, total):.0f}%), {rate:,.0f} {self.unit}s/s, ETA {eta}"
            )
