"""``adctl``: retrain models on Dask, push them live, run/stop/scale the flow, status, report.

Every flag has an ``AD_*`` environment default (shown in ``--help``). Flow settings
(``AD_SOURCE``, ``AD_SINK``, ...) pass through to the flow processes; adctl's own
``AD_*`` variables are removed from the flow's environment (the flow rejects unknown
``AD_*`` names). The subcommands live in ``control.commands``; their options in
``control.cli_env``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from control import commands
from control.cli_env import CliError, flow_env, opt

__all__ = ["build_parser", "flow_env", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``adctl`` argument parser (flags default from ``AD_*`` variables)."""
    ap = argparse.ArgumentParser(prog="adctl", description=(__doc__ or "").split("\n\n")[0])
    opt(
        ap,
        "--state-dir",
        env="AD_STATE_DIR",
        default=".adctl",
        help="where pid files, logs and the recovery store live",
    )
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in commands.MODULES:
        module.register(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``adctl`` / ``python -m control``."""
    from control.engines.base import EngineError  # issue 15: batch engines
    from control.history import HistoryError
    from control.k8s import K8sError
    from control.markers import MarkerError
    from control.supervisor import SupervisorError
    from control.training import TrainingError
    from state.model_store import ModelStoreError

    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except (
        CliError,
        HistoryError,
        K8sError,
        MarkerError,
        SupervisorError,
        TrainingError,
        ModelStoreError,
        EngineError,
        ValueError,
    ) as exc:
        print(f"adctl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
