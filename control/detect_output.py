"""Where batch detection writes alerts: Parquet, JSON lines, or any sink URL of the flow.

JSON lines hold the alert bodies exactly as the flow writes them; Parquet holds the
same fields as columns (``features`` as a JSON string). A URL (``kafka://``,
``redis://``, ``file://`` ...) goes through the flow's own sink connector, in a small
Bytewax dataflow, so the records, keys and ids are what the flow would produce.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from connectors.base import OutRecord
from control.detect import PartResult
from flows.records import split_key
from flows.settings import Settings

__all__ = ["OutputError", "alerts_of", "write_alerts"]

_FILE_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".json")


class OutputError(ValueError):
    """The output cannot be written (unknown kind, unreachable sink)."""


def alerts_of(results: Iterable[PartResult]) -> list[tuple[str, str, bytes]]:
    """Every alert of ``results`` as ``(state key, alert_id, body)`` (the key: the sensor
    id, or tenant and sensor id), by key, each key's windows in order.
    """
    alerts = [a for r in results for a in r.alerts]
    alerts.sort(key=lambda a: a[0])  # stable: windows stay in order
    return alerts


def _parquet(alerts: list[tuple[str, str, bytes]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bodies = [orjson.loads(b) for _s, _a, b in alerts]
    cols: dict[str, list[Any]] = {
        k: [b[k] for b in bodies]
        for k in (
            "alert_id",
            "sensor_id",
            "tenant_id",
            "window_start",
            "window_end",
            "score",
            "is_anomaly",
            "value",
            "detector",
            "model_version",
        )
    }
    cols["features"] = [orjson.dumps(b["features"]).decode() for b in bodies]
    schema = pa.schema(
        [
            ("alert_id", pa.string()),
            ("sensor_id", pa.string()),
            ("tenant_id", pa.string()),
            ("window_start", pa.string()),
            ("window_end", pa.string()),
            ("score", pa.float64()),
            ("is_anomaly", pa.bool_()),
            ("value", pa.float64()),
            ("detector", pa.string()),
            ("model_version", pa.string()),
            ("features", pa.string()),
        ]
    )
    pq.write_table(pa.table(cols, schema=schema), path)


def _sink(alerts: list[tuple[str, str, bytes]], url: str, settings: Settings) -> None:
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    from connectors import make_sink

    flow = Dataflow("adctl-detect-out")
    # as the flow's sink gets them: (state key, record keyed by the sensor id)
    items = [(key, OutRecord(aid, split_key(key)[1], body)) for key, aid, body in alerts]
    stream = op.input("alerts", flow, TestingSource(items, batch_size=1000))
    op.output("alerts-out", stream, make_sink(url, settings.connector_context()))
    run_main(flow)


def write_alerts(alerts: list[tuple[str, str, bytes]], out: str, settings: Settings) -> str:
    """Write ``alerts`` to ``out``; returns where, in words."""
    if "://" in out and not out.startswith("file://"):
        _sink(alerts, out, settings)
        return out
    path = Path(out[len("file://") :] if out.startswith("file://") else out)
    suffix = path.suffix.lower()
    if suffix not in _FILE_SUFFIXES:
        raise OutputError(
            f"cannot write alerts to {out!r}: use a .parquet or .jsonl file or a sink URL, "
            "e.g. --out alerts.parquet or --out kafka://127.0.0.1:9092/alerts"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if suffix == ".parquet":
        _parquet(alerts, tmp)
    else:
        tmp.write_bytes(b"".join(body + b"\n" for _s, _a, body in alerts))
    tmp.replace(path)
    return str(path)
