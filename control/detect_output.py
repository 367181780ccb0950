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

__all__ = ["OutputError", "alerts_of", "dead_letters_of", "write_alerts", "write_dead_letters"]

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


def dead_letters_of(
    readings: Any, results: Iterable[PartResult], flow_id: str
) -> list[tuple[str, OutRecord]]:
    """The flow's dead letters of a detection, as ``(key, OutRecord)`` like the flow's
    dead-letter sink gets them: the records that failed to decode or validate
    (``readings.dead``) and the readings the flow's clock rules refused (``late``,
    ``future``; found by the tasks, which name a reading by its row), made from each
    reading's raw record; in input order.
    """
    from connectors.base import as_raw
    from flows.records import dead_letter

    out: list[tuple[int, tuple[str, OutRecord]]] = list(readings.dead)
    raws = readings.raws
    for res in results:
        for body in res.dead_letters:
            d = orjson.loads(body)
            row = int(d["offset"]) if d.get("source") == "adctl-detect" else -1
            if 0 <= row < len(raws):
                out.append((row, dead_letter(as_raw(raws[row]), d["reason"], d["error"], flow_id)))
            else:  # a reading without its raw record (Parquet): named by its row
                key = f"{d['source']}/{d['partition']}"
                out.append((max(row, 0), (key, OutRecord(d["dlq_id"], key, body))))
    out.sort(key=lambda x: x[0])  # stable
    return [item for _pos, item in out]


def write_dead_letters(items: list[tuple[str, OutRecord]], out: str, settings: Settings) -> str:
    """Write dead letters to ``out``: a JSON-lines file (one body per line, as the flow's
    file sink writes them) or any sink URL of the flow; returns where, in words.
    """
    if "://" in out and not out.startswith("file://"):
        _run_sink(items, out, settings, "dead-letters")
        return out
    path = Path(out[len("file://") :] if out.startswith("file://") else out)
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        raise OutputError(
            f"cannot write dead letters to {out!r}: use a .jsonl file or a sink URL, "
            "e.g. --dead-letters dead.jsonl or --dead-letters kafka://127.0.0.1:9092/dlq"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(b"".join(rec.value + b"\n" for _k, rec in items))
    tmp.replace(path)
    return str(path)


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
    # as the flow's sink gets them: (state key, record keyed by the sensor id)
    items = [(key, OutRecord(aid, split_key(key)[1], body)) for key, aid, body in alerts]
    _run_sink(items, url, settings, "alerts")


def _run_sink(items: list[tuple[str, OutRecord]], url: str, settings: Settings, name: str) -> None:
    """``items`` through the flow's sink connector for ``url``, in a small dataflow."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSource, run_main

    from connectors import make_sink

    flow = Dataflow(f"adctl-detect-{name}")
    stream = op.input(name, flow, TestingSource(items, batch_size=1000))
    op.output(f"{name}-out", stream, make_sink(url, settings.connector_context()))
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
