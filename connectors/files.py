"""Files and standard streams.

Source ``file:///path`` reads one record per line. The path may list several inputs
separated by commas, each a file, a glob (``/data/2026-*.jsonl``) or a directory (every
regular file in it); ``.gz`` files are read decompressed. Inputs are resolved when the
flow starts, sorted by full path.

Order: by default every input is read by **one** partition, one file after another in
path order, so a sensor whose readings are split over files named in time order
(``day-01.jsonl``, ``day-02.jsonl``) keeps its order. ``?parallel=true`` gives each file
a partition of its own: faster, but only correct when each sensor's readings are in one
file (files are then read concurrently). ``?tail=true`` keeps following the last file.
Resume state per partition: ``(file index, byte offset in that file, lines read there)``
(offsets of ``.gz`` files count decompressed bytes). A record's ``offset`` is its
1-based line number, prefixed by its file name when the partition reads several files.
With ``AD_FORMAT=csv`` the first line of each file is its header, passed along with
each record of the file.

Sink ``file:///path/out.jsonl?mode=truncate|append`` writes one record per line, exactly
once: the resume state is the byte length of the file at the last snapshot, and a
resumed sink truncates to it before writing. ``mode=truncate`` (default) starts a fresh
run with an empty file, even when the run writes nothing; ``mode=append`` keeps what an
earlier run wrote and adds after it.

``stdout://`` and ``stderr://`` are sinks that print one record per line
(at-least-once: a replay after a crash prints again).
"""

from __future__ import annotations

import glob
import gzip
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from connectors.base import ConnectorContext, OutRecord, RawRecord, SourceURL

__all__ = [
    "FileSink",
    "FileSource",
    "StreamSink",
    "expand_inputs",
    "sink_from_url",
    "source_from_url",
]

#: resume state of a file source partition: (file index, byte offset, lines read)
FilePos = tuple[int, int, int]


def _open(path: Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115 - the partition closes it


class _FileSourcePartition(StatefulSourcePartition[list[RawRecord], FilePos]):
    def __init__(
        self,
        name: str,
        paths: list[Path],
        resume_state: FilePos | tuple[int, int] | None,
        tail: bool,
        batch_size: int,
        csv: bool,
    ) -> None:
        if resume_state is not None and len(resume_state) == 2:  # one-file state of 0.1
            resume_state = (0, *resume_state)
        self._idx, self._pos, self._line = resume_state or (0, 0, 0)
        self._paths = paths
        self._tail = tail
        self._batch = batch_size
        self._csv = csv
        self._source = f"file:{name}"
        self._prefix = len(paths) > 1
        self._awake: datetime | None = None
        self._f: IO[bytes] | None = None
        self._header: bytes | None = None
        self._open_current()

    def _open_current(self) -> None:
        if self._idx >= len(self._paths):
            return
        path = self._paths[self._idx]
        self._f = _open(path)
        self._header = None
        if self._csv:
            self._header = self._f.readline().rstrip(b"\r\n") or None
            if self._pos == 0:
                self._pos = self._f.tell()
        self._f.seek(self._pos)

    def _next_file(self) -> bool:
        """Move on to the next input file; False when this was the last."""
        if self._idx + 1 >= len(self._paths):
            return False
        assert self._f is not None  # noqa: S101 - narrowing: a file is open until close()
        self._f.close()
        self._idx, self._pos, self._line = self._idx + 1, 0, 0
        self._open_current()
        return True

    def next_batch(self) -> list[list[RawRecord]]:
        """Up to ``batch`` lines; never waits (an empty batch sets ``next_awake``)."""
        out: list[RawRecord] = []
        f = self._f
        while f is not None and len(out) < self._batch:
            line = f.readline()
            if not line:
                if self._next_file():
                    f = self._f
                    continue
                break
            if not line.endswith(b"\n") and self._tail:  # a partly written line
                f.seek(self._pos)
                break
            self._pos += len(line)
            self._line += 1
            data = line.rstrip(b"\r\n")
            if data:
                offset = (
                    f"{self._paths[self._idx].name}:{self._line}"
                    if self._prefix
                    else str(self._line)
                )
                out.append(RawRecord(data, self._source, "0", offset, self._header))
        if out:
            self._awake = None
            return [out]
        if not self._tail:
            raise StopIteration
        self._awake = datetime.now(UTC) + timedelta(milliseconds=50)
        return []

    def next_awake(self) -> datetime | None:
        """When to poll again after an empty read (tail mode)."""
        return self._awake

    def snapshot(self) -> FilePos:
        """Where the next line starts."""
        return (self._idx, self._pos, self._line)

    def close(self) -> None:
        """Close the open file."""
        if self._f is not None:
            self._f.close()


class FileSource(FixedPartitionedSource[list[RawRecord], FilePos]):
    """Lines of files as records (see the module docstring for order and resume state).

    Args:
        paths: the input files, in reading order.
        tail: keep following the last file.
        batch_size: lines per batch.
        parallel: one partition per file instead of one for all.
        csv: the first line of each file is a CSV header, passed as each record's key.
    """

    def __init__(
        self,
        paths: list[Path],
        *,
        tail: bool = False,
        batch_size: int = 2000,
        parallel: bool = False,
        csv: bool = False,
    ) -> None:
        self._parts = _partition_names(paths, parallel)
        self._tail = tail
        self._batch = batch_size
        self._csv = csv

    def list_parts(self) -> list[str]:
        """One partition for all files, or one per file (``parallel``)."""
        return sorted(self._parts)

    def build_part(
        self, step_id: str, for_part: str, resume_state: FilePos | None
    ) -> _FileSourcePartition:
        """Read partition ``for_part`` from ``resume_state``."""
        return _FileSourcePartition(
            for_part, self._parts[for_part], resume_state, self._tail, self._batch, self._csv
        )


def _partition_names(paths: list[Path], parallel: bool) -> dict[str, list[Path]]:
    """Partition name -> its files. Names are unique even for equal file names in
    different folders (the shortest distinguishing path suffix).
    """
    if not parallel:
        return {paths[0].name if len(paths) == 1 else "files": paths}
    depth = 1
    while True:
        names = {"/".join(p.parts[-depth:]): p for p in paths}
        if len(names) == len(paths) or depth > 64:
            return {n: [p] for n, p in names.items()}
        depth += 1


def expand_inputs(spec: str) -> list[Path]:
    """The files a file URL's path names: comma-separated files, globs and directories,
    each sorted, duplicates dropped. Raises ``ValueError`` naming what matched nothing.
    """
    out: list[Path] = []
    for item in (s for s in spec.split(",") if s):
        if any(c in item for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).iterdir() if p.is_file())
        elif Path(item).is_file():
            found = [Path(item)]
        else:
            found = []
        if not found:
            raise ValueError(
                f"no input file matches {item!r}; give files, globs or directories, e.g. "
                "file:///data/readings.jsonl, file:///data/2026-*.jsonl.gz or file:///data/"
            )
        out.extend(p for p in found if p not in out)
    return out


class _FileSinkPartition(StatefulSinkPartition[OutRecord, int]):
    def __init__(self, path: Path, resume_state: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "ab")  # noqa: SIM115 - closed in close()
        if resume_state is not None:
            self._f.truncate(resume_state)
        self._f.seek(0, os.SEEK_END)

    def write_batch(self, values: list[OutRecord]) -> None:
        """Append records as lines."""
        self._f.write(b"".join(v.value + b"\n" for v in values))

    def snapshot(self) -> int:
        """The file's length, made durable: what a resume truncates to."""
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        """Flush and close the file."""
        self._f.flush()
        self._f.close()


class FileSink(FixedPartitionedSink[OutRecord, int]):
    """Records as lines of one file, exactly once.

    Resume state: the file's byte length after the last snapshot; a resumed partition
    truncates the file to it, so records written after that snapshot are written once
    more by the replay and exist once.

    Args:
        path: the output file.
        mode: ``truncate`` (a fresh run starts with an empty file) or ``append``.
        clear_now: empty the file now (a fresh run in ``truncate`` mode, done by one
            process before the flow starts).
    """

    def __init__(self, path: Path, mode: str = "truncate", clear_now: bool = False) -> None:
        self._path = path
        self._mode = mode
        if clear_now:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb"):
                pass

    def list_parts(self) -> list[str]:
        """The one partition: the file."""
        return [self._path.name]

    def part_fn(self, item_key: str) -> int:
        """Every record goes to the one partition."""
        return 0

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _FileSinkPartition:
        """Open the file; a resume truncates it to ``resume_state``."""
        if resume_state is None and self._mode == "truncate":
            resume_state = 0
        return _FileSinkPartition(self._path, resume_state)


class _StreamPartition(StatelessSinkPartition[Any]):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write_batch(self, items: list[Any]) -> None:
        """Print records as lines."""
        buf = self._stream.buffer
        buf.write(b"".join(rec.value + b"\n" for _key, rec in items))
        buf.flush()


class StreamSink(DynamicSink[Any]):
    """Print ``(key, OutRecord)`` values as lines on stdout or stderr (at-least-once).

    Args:
        name: ``stdout`` or ``stderr``.
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StreamPartition:
        """A printer on this worker."""
        return _StreamPartition(sys.stdout if self._name == "stdout" else sys.stderr)


def source_from_url(url: SourceURL, ctx: ConnectorContext) -> FileSource:
    """``file:///path[,path…]?tail=&batch=&parallel=`` (paths: files, globs, dirs)."""
    return FileSource(
        expand_inputs(url.path),
        tail=url.bool("tail", False),
        batch_size=url.int("batch", 2000, minimum=1),
        parallel=url.bool("parallel", False),
        csv=ctx.format == "csv",
    )


def sink_from_url(url: SourceURL, ctx: ConnectorContext) -> FileSink | StreamSink:
    """``file:///path?mode=truncate|append``, ``stdout://``, ``stderr://``."""
    if url.scheme in ("stdout", "stderr"):
        return StreamSink(url.scheme)
    mode = url.text("mode", "truncate")
    if mode not in ("truncate", "append"):
        raise ValueError(
            f"URL parameter mode={mode!r} of {url.redacted} must be truncate or append; "
            "e.g. file:///out/alerts.jsonl?mode=append"
        )
    path = Path(url.path)
    if path.is_dir():
        raise ValueError(f"{url.redacted} is a directory; e.g. file:///out/alerts.jsonl")
    _check_writable(path, url)
    clear = mode == "truncate" and ctx.fresh and ctx.process_id == 0
    return FileSink(path, mode, clear_now=clear)


def _check_writable(path: Path, url: SourceURL) -> None:
    """Fail at start-up, not at the first alert, when the file cannot be written."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    target = path if path.exists() else parent
    if target is parent and not parent.is_dir():
        raise ValueError(f"cannot write {url.redacted}: {parent} is not a directory")
    if not os.access(target, os.W_OK):
        raise ValueError(f"cannot write {url.redacted}: {target} is not writable")
