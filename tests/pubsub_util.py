"""Pub/Sub helpers for tests: read a subscription until it goes quiet."""

from __future__ import annotations

import time
from typing import Any

from google.api_core import exceptions as gexc


def pull_all(
    subscriber: Any, path: str, quiet: float = 2.0, batch: int = 500, timeout: float = 1.0
) -> list[Any]:
    """Pull and ack the messages of subscription ``path`` until ``quiet`` seconds pass
    without one (each pull: at most ``batch`` messages, waiting ``timeout`` seconds)."""
    out: list[Any] = []
    last = time.monotonic()
    while time.monotonic() - last < quiet:
        try:
            resp = subscriber.pull(subscription=path, max_messages=batch, timeout=timeout)
        except gexc.DeadlineExceeded:
            continue
        if resp.received_messages:
            out += [m.message for m in resp.received_messages]
            subscriber.acknowledge(
                subscription=path, ack_ids=[m.ack_id for m in resp.received_messages]
            )
            last = time.monotonic()
    return out
