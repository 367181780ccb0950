"""A small recoverable Bytewax flow for supervisor tests (no brokers needed).

Reads ``AD_TEST_IN`` (lines ``key,value``) with Bytewax's recoverable ``FileSource``,
keeps a per-key running sum (snapshotted state), and writes ``key,value,sum`` lines to
``AD_TEST_OUT`` with the recoverable ``FileSink``. ``AD_TEST_DELAY`` seconds of sleep per
record make a run long enough to be stopped and rescaled mid-stream.
"""

from __future__ import annotations

import os
import time

import bytewax.operators as op
from bytewax.connectors.files import FileSink, FileSource
from bytewax.dataflow import Dataflow

DELAY = float(os.environ.get("AD_TEST_DELAY", "0"))


def _parse(line: str) -> tuple[str, int]:
    if DELAY:
        time.sleep(DELAY)
    key, value = line.split(",")
    return key, int(value)


def _acc(total: int | None, value: int) -> tuple[int, str]:
    total = (total or 0) + value
    return total, f"{value},{total}"


flow = Dataflow("supervisor_sample")
lines = op.input("in", flow, FileSource(os.environ["AD_TEST_IN"], batch_size=1))  # gradual
keyed = op.map("parse", lines, _parse)
sums = op.stateful_map("sum", keyed, _acc)
out = op.map("fmt", sums, lambda kv: (kv[0], f"{kv[0]},{kv[1]}"))
op.output("out", out, FileSink(os.environ["AD_TEST_OUT"]))
