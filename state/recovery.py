"""What Bytewax's recovery store says about this run: where it is, and whether any
execution of the flow ever started there (a fresh run, or a resume).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

__all__ = ["is_fresh_run", "process_index", "recovery_dir"]


def recovery_dir(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Path | None:
    """Bytewax's recovery directory from ``-r``/``--recovery-directory`` on the command
    line or ``BYTEWAX_RECOVERY_DIRECTORY``; ``None`` when the flow runs without one.
    """
    argv = sys.argv if argv is None else argv
    env = dict(os.environ) if env is None else env
    rec = env.get("BYTEWAX_RECOVERY_DIRECTORY") or None
    for i, arg in enumerate(argv):
        if arg in ("-r", "--recovery-directory") and i + 1 < len(argv):
            rec = argv[i + 1]
        elif arg.startswith("--recovery-directory="):
            rec = arg.split("=", 1)[1]
        elif arg.startswith("-r") and len(arg) > 2 and not arg.startswith("--"):
            rec = arg[2:]
    return Path(rec) if rec else None


def process_index(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    """This process's index in a Bytewax cluster (``-i``/``--process-id``; 0 alone)."""
    argv = sys.argv if argv is None else argv
    env = dict(os.environ) if env is None else env
    for i, arg in enumerate(argv):
        if arg in ("-i", "--process-id") and i + 1 < len(argv):
            return int(argv[i + 1])
    return int(env.get("BYTEWAX_PROCESS_ID") or env.get("AD_PROCESS_ID") or 0)


def is_fresh_run(directory: Path | None) -> bool:
    """True when no execution ever started with this recovery store (or there is none):
    nothing will be resumed, so sinks may start their output afresh.
    """
    if directory is None:
        return True
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
                if db.execute("SELECT 1 FROM exs LIMIT 1").fetchone():
                    return False
        except sqlite3.Error:
            return False  # unreadable: assume there is something to resume
    return True
