"""Files and standard streams.

``file:///path/in.jsonl`` as a source reads one record per line (``?tail=true`` keeps
following the file); as a sink it writes one record per line, exactly once: the
resume state is the byte length of the file at the last snapshot, and a resumed sink
truncates to it before writing (a fresh flow starts the file empty).
``stdout://`` and ``stderr://`` are sinks that print one record per line
(at-least-once: a replay after a crash prints again).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from connectors.base import ConnectorContext, OutRecord, RawRecord, SourceURL

__all__ = ["FileSource", "FileSink", "StreamSink", "source_from_url", "sink_from_url"]


class _FileSourcePartition(StatefulSourcePartition[list[RawRecord], tuple[int, int]]):
    def __init__(
        self, path: Path, resume_state: tuple[int, int] | None, tail: bool, batch_size: int
    ) -> None:
        self._path = path
        self._pos, self._line = resume_state or (0, 0)
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._f.seek(self._pos)
        self._tail = tail
        self._batch = batch_size
        self._source = f"file:{path.name}"
        self._awake: datetime | None = None

    def next_batch(self) -> list[list[RawRecord]]:
        out: list[RawRecord] = []
        f = self._f
        for _ in range(self._batch):
            line = f.readline()
            if not line:
                break
            if not line.endswith(b"\n"):
                if self._tail:  # a partly written line: wait for the rest
                    f.seek(self._pos)
                    break
            self._pos += len(line)
            self._line += 1
            data = line.rstrip(b"\r\n")
            if data:
                out.append(RawRecord(data, self._source, "0", str(self._line)))
        if out:
            self._awake = None
            return [out]
        if not self._tail:
            raise StopIteration
        self._awake = datetime.now(UTC) + timedelta(milliseconds=50)
        return []

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        return (self._pos, self._line)

    def close(self) -> None:
        self._f.close()


class FileSource(FixedPartitionedSource[list[RawRecord], tuple[int, int]]):
    """One partition per file; one record per line.

    Resume state: ``(byte offset of the next line, number of lines read)``. A record's
    ``offset`` is its 1-based line number.
    """

    def __init__(self, paths: list[Path], *, tail: bool = False, batch_size: int = 2000) -> None:
        self._paths = {p.name: p for p in paths}
        self._tail = tail
        self._batch = batch_size

    def list_parts(self) -> list[str]:
        return sorted(self._paths)

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FileSourcePartition:
        return _FileSourcePartition(self._paths[for_part], resume_state, self._tail, self._batch)


class _FileSinkPartition(StatefulSinkPartition[OutRecord, int]):
    def __init__(self, path: Path, resume_state: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._f.truncate(resume_state or 0)
        self._f.seek(0, os.SEEK_END)

    def write_batch(self, values: list[OutRecord]) -> None:
        self._f.write(b"".join(v.value + b"\n" for v in values))

    def snapshot(self) -> int:
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        self._f.flush()
        self._f.close()


class FileSink(FixedPartitionedSink[OutRecord, int]):
    """Append records to one file, exactly once.

    Resume state: the file's byte length after the last snapshot; a resumed partition
    truncates the file to it, so records written after that snapshot are written once
    more by the replay and exist once.
    """

    def __init__(self, path: Path) -> None:
        self._path = path

    def list_parts(self) -> list[str]:
        return [self._path.name]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _FileSinkPartition:
        return _FileSinkPartition(self._path, resume_state)


class _StreamPartition(StatelessSinkPartition[Any]):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write_batch(self, items: list[Any]) -> None:
        buf = self._stream.buffer
        buf.write(b"".join(rec.value + b"\n" for _key, rec in items))
        buf.flush()


class StreamSink(DynamicSink[Any]):
    """Print ``(key, OutRecord)`` values as lines on stdout or stderr (at-least-once)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StreamPartition:
        return _StreamPartition(sys.stdout if self._name == "stdout" else sys.stderr)


def _path(url: SourceURL) -> Path:
    return Path(url.path)


def source_from_url(url: SourceURL, ctx: ConnectorContext) -> FileSource:
    paths = [Path(p) for p in url.path.split(",") if p]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"input file {str(p)!r} does not exist ({url.raw})")
    return FileSource(
        paths,
        tail=url.bool("tail", False),
        batch_size=url.int("batch", 2000, minimum=1),
    )


def sink_from_url(url: SourceURL, ctx: ConnectorContext) -> FileSink | StreamSink:
    if url.scheme in ("stdout", "stderr"):
        return StreamSink(url.scheme)
    return FileSink(_path(url))
