"""Every connector under SIGKILL: the property the crash tests of all systems share.

The flow reads the connector's input and writes its alerts and dead letters back to the
same system, with a recovery store; it is killed with SIGKILL at random points and
restarted until it finishes. The committed output must equal a crash-free run's: the
same ids with the same contents, no duplicates and no loss (the Pub/Sub sink is at least
once: duplicates allowed, counted). The per-connector part (input, URLs, how to read the
output, when kills land) is an adapter in ``crash_harness.py``; each system's own
scenarios (broker restarts, poison pills, unordered subscriptions, ...) stay in
``test_crash_<system>.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.flows.crash_harness import CrashCases, check_bad_record_classes

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("name", "workers", "seed"),
    [
        pytest.param("kafka", 1, 1, id="kafka-1w"),
        pytest.param("kafka", 2, 2, id="kafka-2w"),
        pytest.param("kinesis", 1, 5, id="kinesis"),
        pytest.param("redis", 1, 11, id="redis"),
        pytest.param("pubsub", 1, 3, id="pubsub"),
        pytest.param("file", 1, 3, id="file"),
    ],
)
def test_sigkill_restarts_give_the_reference_output(
    crash_cases: CrashCases,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    name: str,
    workers: int,
    seed: int,
) -> None:
    crash_cases.get(name, request).crash_and_compare(tmp_path, workers=workers, seed=seed)


@pytest.mark.parametrize("name", ["kinesis", "redis", "pubsub"])
def test_every_bad_record_class_reaches_the_dead_letters(
    crash_cases: CrashCases, request: pytest.FixtureRequest, tmp_path: Path, name: str
) -> None:
    """Kafka's version (with oversize, late and future records) is in test_crash_kafka."""
    check_bad_record_classes(crash_cases.adapter(name, request), tmp_path)
