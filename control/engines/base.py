"""The small interface every batch engine implements (Dask, Ray, Spark).

A job is a list of independent task items run through one picklable function
``fn(item) -> result``; the engine runs them on its workers, retries a failed task
(``retries`` times) and may make a job wait for another job's tasks (``after``).
Everything about scheduling — placement, retries, ordering by dependency and
priority — is the engine's own; this interface only names it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["Engine", "EngineError", "Tasks", "barrier", "call_task"]


class EngineError(RuntimeError):
    """The engine could not start, or a task failed after its retries."""


class Tasks:
    """One submitted job: the engine's handles of its tasks, in item order.

    Args:
        handles: the engine's handles of the tasks, in item order.
        n: how many tasks.
        priority: the job's priority, as the engine reads it.
    """

    def __init__(self, handles: Any, n: int, priority: int = 0) -> None:
        self.handles = handles
        self.n = n
        self.priority = priority
        self.results: dict[int, Any] | None = None  # filled by engines that run lazily


def call_task(fn: Callable[[Any], Any], item: Any, *_after: Any) -> Any:
    """Run one task; ``_after`` are the results of tasks it waited for (unused)."""
    return fn(item)


def barrier(*_results: Any) -> None:
    """A task that ends once all its arguments (other tasks' results) exist: a later
    job's tasks wait for this one task, so the earlier results move once, not to each.
    """


class Engine(ABC):
    """A batch engine: ``with make_engine(...) as eng: eng.submit(...)``.

    Args:
        workers: worker slots of an embedded cluster.
        address: a running cluster's address (``None``: start an embedded one).
        retries: how often a failed task is retried.
    """

    name = "engine"

    def __init__(self, workers: int = 2, address: str | None = None, retries: int = 2) -> None:
        self.n_workers = workers
        self.address = address
        self.retries = retries

    @abstractmethod
    def start(self) -> None:
        """Connect to the cluster or start the embedded one."""

    @abstractmethod
    def workers(self) -> int:
        """Worker slots (processes or cores) the engine runs tasks on."""

    @abstractmethod
    def submit(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        priority: int = 0,
        after: Sequence[Tasks] = (),
    ) -> Tasks:
        """Submit one task per item; they start once every task of ``after`` is done."""

    @abstractmethod
    def as_completed(self, tasks: Tasks) -> Iterator[tuple[int, Any]]:
        """``(item index, result)`` as tasks finish; raises :class:`EngineError` on failure."""

    @abstractmethod
    def close(self) -> None:
        """Disconnect; stop the embedded cluster if this engine started it."""

    def where(self) -> str:
        """Where the tasks run, in words."""
        return f"{self.name} {self.address or f'local ({self.n_workers} workers)'}"

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
