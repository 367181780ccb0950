"""Read history (sensor readings or alerts) from Kafka topic ranges or files.

Sources (several may be given):

* ``kafka://host:port/topic[,topic2]`` — every partition from its start (or the first
  offset at ``--since``) up to its end offset *at the time of reading* (a fixed range,
  so reading terminates). Control markers (``#ADCTL...``) are skipped.
* Files: ``*.parquet``, ``*.csv``, ``*.jsonl``/``*.ndjson``/``*.json`` (JSON lines), plain
  paths, globs or ``file://`` URLs.

Records are JSON objects (or table rows) with a key field (default ``sensor_id``), an
event-time field (default ``timestamp``: RFC 3339 text, or epoch seconds/milliseconds)
and a value field (default ``value``).
"""

from __future__ import annotations

import csv
import glob
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from schemas.markers import MARKER_PREFIX
from schemas.timestamps import to_millis

__all__ = ["Fields", "HistoryError", "Series", "iter_records", "load_series", "parse_time"]


class HistoryError(ValueError):
    """History could not be read (bad source, unreadable file, missing fields)."""


@dataclass(frozen=True)
class Fields:
    """Names of the key, event-time and value fields in the records."""

    key: str = "sensor_id"
    time: str = "timestamp"
    value: str = "value"


@dataclass
class Series:
    """One key's history in event-time order (ties keep input order)."""

    timestamps: np.ndarray  # float64 epoch seconds
    values: np.ndarray  # float64


@dataclass
class ReadStats:
    """Counters of what a read saw (for progress lines and the artifact's metadata)."""

    records: int = 0
    skipped_markers: int = 0
    bad_records: int = 0
    out_of_range: int = 0
    sources: list[str] = field(default_factory=list)


def parse_time(value: Any, unit: str = "auto") -> float:
    """Epoch seconds of a history record's time, read as the flow reads it
    (``schemas.timestamps``: RFC 3339, or a number whose ``unit`` is given or, with
    ``auto``, follows from its magnitude); text without an offset and datetimes without
    a zone are UTC. Raises ``ValueError``.
    """
    if hasattr(value, "timestamp") and not isinstance(value, (int, float, str)):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)  # datetime / pandas
        return float(dt.timestamp())
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
            value = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()
    return to_millis(value, unit, earliest=0) / 1000.0


# ------------------------------------------------------------------ raw record readers


def _kafka_records(
    url: str, since: float | None, stats: ReadStats, kafka_conf: dict[str, str] | None
) -> Iterator[dict[str, Any]]:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    parts = urlsplit(url)
    topics = [t for t in parts.path.strip("/").split(",") if t]
    if not parts.hostname or not topics:
        raise HistoryError(
            f"Kafka source {url!r} needs host:port and a topic, "
            "e.g. kafka://127.0.0.1:19092/sensors"
        )
    conf = {
        "bootstrap.servers": f"{parts.hostname}:{parts.port or 9092}",
        "group.id": "adctl-history",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "isolation.level": "read_committed",
        "log_level": 0,
        **(kafka_conf or {}),
    }
    consumer = Consumer(conf)
    try:
        md = consumer.list_topics(timeout=10)
        ranges: list[tuple[TopicPartition, int]] = []
        for topic in topics:
            tmd = md.topics.get(topic)
            if tmd is None or tmd.error is not None or not tmd.partitions:
                raise HistoryError(
                    f"Kafka topic {topic!r} does not exist at {conf['bootstrap.servers']}"
                )
            for p in sorted(tmd.partitions):
                lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                start = lo
                if since is not None:
                    found = consumer.offsets_for_times(
                        [TopicPartition(topic, p, int(since * 1000))], timeout=10
                    )[0].offset
                    start = hi if found < 0 else max(lo, found)
                if hi > start:
                    ranges.append((TopicPartition(topic, p, start), hi))
        if not ranges:
            return
        consumer.assign([tp for tp, _ in ranges])
        ends = {(tp.topic, tp.partition): hi for tp, hi in ranges}
        done: set[tuple[str, int]] = set()
        idle = 0
        while len(done) < len(ends):
            msgs = consumer.consume(num_messages=1000, timeout=0.5)
            for m in msgs:
                if m.error():
                    raise HistoryError(f"Kafka read error: {m.error()}")
                # topic, partition and offset are set on every record (not on errors)
                tp: tuple[str, int] = (m.topic(), m.partition())  # type: ignore[assignment]
                off: int = m.offset()  # type: ignore[assignment]
                if tp in done or off >= ends[tp]:
                    done.add(tp)
                    continue
                if off >= ends[tp] - 1:
                    done.add(tp)
                yield from _decode_value(m.value(), stats)
            if msgs:
                idle = 0
                continue
            pending = [TopicPartition(t, p) for (t, p) in ends if (t, p) not in done]
            for pos in consumer.position(pending):
                if pos.offset >= ends[(pos.topic, pos.partition)]:
                    done.add((pos.topic, pos.partition))
            idle += 1
            # read_committed may end below the high watermark (transaction markers,
            # aborted or open transactions): after 5 s without records, the range is read.
            if idle >= 10:
                break
    except KafkaException as exc:
        raise HistoryError(f"Kafka error reading {url}: {exc}") from None
    finally:
        consumer.close()


def _decode_value(value: bytes | None, stats: ReadStats) -> Iterator[dict[str, Any]]:
    if value is None:
        stats.bad_records += 1
        return
    if value.startswith(MARKER_PREFIX):
        stats.skipped_markers += 1
        return
    try:
        rec = json.loads(value)
    except ValueError:
        stats.bad_records += 1
        return
    if isinstance(rec, dict):
        yield rec
    else:
        stats.bad_records += 1


def _file_records(path: Path, stats: ReadStats) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise HistoryError("reading Parquet needs pyarrow (pip install pyarrow)") from None
        table = pq.read_table(path)
        for batch in table.to_batches():
            yield from batch.to_pylist()
    elif suffix == ".csv":
        with path.open(newline="") as fh:
            yield from csv.DictReader(fh)
    elif suffix in (".jsonl", ".ndjson", ".json", ".log"):
        with path.open("rb") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    yield from _decode_value(line, stats)
    else:
        raise HistoryError(
            f"unknown history file type {path.name!r}; "
            "use .parquet, .csv, .jsonl/.ndjson/.json or a kafka:// URL"
        )


def _expand(source: str) -> list[Path]:
    if source.startswith("file://"):
        parts = urlsplit(source)
        source = unquote(parts.netloc + parts.path)
    matches = sorted(glob.glob(source)) if any(c in source for c in "*?[") else [source]
    paths = [Path(m) for m in matches]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise HistoryError(f"history file not found: {', '.join(missing) or source}")
    return paths


def iter_records(
    sources: Iterable[str],
    *,
    since: float | None = None,
    stats: ReadStats | None = None,
    kafka_conf: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every record (a dict) from ``sources`` in source order."""
    stats = stats if stats is not None else ReadStats()
    for src in sources:
        stats.sources.append(src)
        if src.startswith("kafka://"):
            yield from _kafka_records(src, since, stats, kafka_conf)
        else:
            for path in _expand(src):
                yield from _file_records(path, stats)


def load_series(
    sources: Iterable[str],
    *,
    fields: Fields = Fields(),
    since: float | None = None,
    until: float | None = None,
    keys: set[str] | None = None,
    stats: ReadStats | None = None,
    kafka_conf: dict[str, str] | None = None,
    on_progress: Callable[[int], None] | None = None,
    default_tenant: str | None = None,
    by_tenant: bool = True,
) -> dict[str, Series]:
    """Group records into per-key series within ``[since, until)`` (event time).

    A key is the flow's state key (``flows.records.sensor_key``): the sensor id, or the
    tenant and the sensor id when the record has a ``tenant_id`` (or ``default_tenant``
    applies), so two tenants' sensors of the same id train separate models, under the
    keys the flow looks their per-key models up by (``by_tenant=False``: by the sensor
    id alone, as ``adctl report`` plots a sensor). Records lacking a field or with a
    non-numeric value count as bad and are skipped; non-finite values are kept
    (detectors treat them as missing).
    """
    from flows.records import sensor_key

    stats = stats if stats is not None else ReadStats()
    ts_by: dict[str, list[float]] = {}
    vs_by: dict[str, list[float]] = {}
    for rec in iter_records(sources, since=since, stats=stats, kafka_conf=kafka_conf):
        stats.records += 1
        if on_progress is not None and stats.records % 10000 == 0:
            on_progress(stats.records)
        try:
            key = str(rec[fields.key])
            if by_tenant:
                key = sensor_key(key, rec.get("tenant_id") or default_tenant)
            t = parse_time(rec[fields.time])
            raw = rec[fields.value]
            v = float("nan") if raw is None or raw == "" else float(raw)
        except (KeyError, TypeError, ValueError):
            stats.bad_records += 1
            continue
        if (since is not None and t < since) or (until is not None and t >= until):
            stats.out_of_range += 1
            continue
        if keys is not None and key not in keys:
            continue
        if not math.isfinite(t):
            stats.bad_records += 1
            continue
        ts_by.setdefault(key, []).append(t)
        vs_by.setdefault(key, []).append(v)
    out: dict[str, Series] = {}
    for key in sorted(ts_by):
        ts = np.asarray(ts_by[key], dtype=np.float64)
        vs = np.asarray(vs_by[key], dtype=np.float64)
        order = np.argsort(ts, kind="stable")
        out[key] = Series(ts[order], vs[order])
    return out
