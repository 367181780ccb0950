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
    """A tqdm bar on a terminal, plain lines otherwise (or nothing)."""

    def __init__(self, mode: str, desc: str) -> None:
        self.mode = mode
        if mode == "auto":
            self.mode = "bar" if sys.stderr.isatty() else "plain"
        self.desc = desc
        self.bar: Any = None
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
                    self.bar = tqdm(total=total, desc=self.desc, unit="key", file=sys.stderr)
                self.bar.update(done - self.bar.n)
                if done >= total:
                    self.bar.close()
                return
        now = time.monotonic()
        if done >= total or now - self.last >= 1.0:
            self.last = now
            say(f"{self.desc}: {done}/{total} keys ({100 * done / max(1, total):.0f}%)")
