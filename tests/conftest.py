"""Shared fixtures: service endpoints of the local stack and factories for topics.

The services are started by ``make test`` (stack/stack.sh); a test that needs one and
finds it down fails with a message saying so — it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAFKA_PORT = int(os.environ.get("AD_STACK_KAFKA_PORT", "19092"))
REDIS_PORT = int(os.environ.get("AD_STACK_REDIS_PORT", "16379"))
PUBSUB_PORT = int(os.environ.get("AD_STACK_PUBSUB_PORT", "18085"))
KINESIS_PORT = int(os.environ.get("AD_STACK_KINESIS_PORT", "14567"))


def _require(port: int, name: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.fail(
            f"{name} is not running on 127.0.0.1:{port}; start the stack with "
            f"`make stack-up` (make test does this)",
            pytrace=False,
        )


#: the key that signs control markers in the tests (adctl and the flows share it)
CONTROL_KEY = "tests-control-key-0123456789abcdef"
os.environ.setdefault("AD_CONTROL_KEY", CONTROL_KEY)


@pytest.fixture(scope="session")
def kafka_brokers() -> str:
    _require(KAFKA_PORT, "Kafka")
    return f"127.0.0.1:{KAFKA_PORT}"


@pytest.fixture(scope="session")
def redis_url() -> str:
    _require(REDIS_PORT, "Redis")
    return f"redis://127.0.0.1:{REDIS_PORT}"


@pytest.fixture(scope="session")
def pubsub_host() -> str:
    _require(PUBSUB_PORT, "the Pub/Sub emulator")
    return f"127.0.0.1:{PUBSUB_PORT}"


@pytest.fixture(scope="session")
def kinesis_endpoint() -> str:
    _require(KINESIS_PORT, "kinesalite")
    return f"http://127.0.0.1:{KINESIS_PORT}"


@pytest.fixture()
def kafka_topic(kafka_brokers: str) -> Iterator[Callable[..., str]]:
    """Factory: ``kafka_topic(partitions=4)`` creates a uniquely named topic."""
    from confluent_kafka.admin import AdminClient

    from connectors.kafka import ensure_topic

    made: list[str] = []

    def make(partitions: int = 4, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        ensure_topic(kafka_brokers, name, partitions)
        made.append(name)
        return name

    yield make
    if made:
        admin = AdminClient({"bootstrap.servers": kafka_brokers})
        for fut in admin.delete_topics(made, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                fut.result()
