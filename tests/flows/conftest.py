"""Fixtures of the whole-flow tests: the crash harness's per-connector cases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.flows.crash_harness import CrashCases


@pytest.fixture(scope="session")
def crash_cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashCases]:
    """Each connector's crash input and reference output, built once per session."""
    cases = CrashCases(tmp_path_factory)
    yield cases
    cases.cleanup()
