"""Sources and sinks by URL: one module per system, imported lazily by scheme."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from connectors.base import ConnectorContext, SourceURL, parse_url

__all__ = ["keeps_order", "make_sink", "make_source"]

_SOURCES = {
    "kafka": "connectors.kafka",
    "kinesis": "connectors.kinesis",
    "pubsub": "connectors.pubsub",
    "redis": "connectors.redis_streams",
    "file": "connectors.files",
    "demo": "connectors.demo",
}
_SINKS = {
    **{k: v for k, v in _SOURCES.items() if k != "demo"},
    "stdout": "connectors.files",
    "stderr": "connectors.files",
}


#: sources that do not deliver a partition's records in order (the flow reorders them)
UNORDERED = frozenset({"pubsub"})


def keeps_order(scheme: str) -> bool:
    """Whether a source of ``scheme`` delivers each partition's records in order."""
    return scheme not in UNORDERED


def _module(table: dict[str, str], url: SourceURL, role: str) -> Any:
    name = table.get(url.scheme)
    if name is None:
        raise ValueError(
            f"{url.scheme}:// cannot be used as a {role} ({url.raw}); "
            f"{role}s: {', '.join(s + '://' for s in table)}"
        )
    return import_module(name)


def make_source(raw: str, ctx: ConnectorContext | None = None) -> Any:
    """The Bytewax source for URL ``raw``."""
    url = parse_url(raw)
    return _module(_SOURCES, url, "source").source_from_url(url, ctx or ConnectorContext())


def make_sink(raw: str, ctx: ConnectorContext | None = None) -> Any:
    """The Bytewax sink for URL ``raw``."""
    url = parse_url(raw)
    return _module(_SINKS, url, "sink").sink_from_url(url, ctx or ConnectorContext())
