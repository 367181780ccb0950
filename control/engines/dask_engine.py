"""Dask: an embedded ``LocalCluster`` of single-threaded worker processes, or a
running scheduler (``tcp://host:8786``). Tasks are futures with ``priority=`` and
``retries=``; a job waits for another through a barrier task that takes the other
job's futures as arguments, and which its own tasks take as an argument.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from control.engines.base import Engine, EngineError, Tasks, barrier, call_task

__all__ = ["DaskEngine"]


class DaskEngine(Engine):
    """Dask futures on a LocalCluster or a scheduler (``address``).

    Args:
        workers: worker processes of the LocalCluster.
        address: a running scheduler (``tcp://host:8786``; ``None``: a LocalCluster).
        retries: how often a failed task is retried.
    """

    name = "dask"

    def __init__(self, workers: int = 2, address: str | None = None, retries: int = 2) -> None:
        super().__init__(workers, address, retries)
        self.client: Any = None
        self.cluster: Any = None
        self._owns_client = True

    @classmethod
    def from_client(cls, client: Any, retries: int = 2) -> DaskEngine:
        """An engine on an existing ``distributed.Client`` (left open by ``close``)."""
        eng = cls(len(client.scheduler_info().get("workers", {})) or 1, None, retries)
        eng.client, eng._owns_client = client, False
        return eng

    def start(self) -> None:
        """Connect, or start the embedded runtime."""
        if self.client is not None:
            return
        from distributed import Client, LocalCluster

        try:
            if self.address:
                self.client = Client(self.address, timeout="15s")
            else:
                self.cluster = LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",  # a free port: never "8787 in use"
                    # workers closing with the cluster log lost heartbeats as errors;
                    # a failed task raises through its future, not the log
                    silence_logs=logging.CRITICAL,
                )
                self.client = Client(self.cluster)
        except (OSError, TimeoutError) as exc:
            raise EngineError(
                f"cannot reach Dask scheduler {self.address or 'LocalCluster'}: {exc}; "
                "e.g. --scheduler tcp://127.0.0.1:8786"
            ) from None

    def workers(self) -> int:
        """Worker slots of the engine."""
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def submit(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        priority: int = 0,
        after: Sequence[Tasks] = (),
    ) -> Tasks:
        """One task per item, after the tasks of ``after``."""
        deps = [f for t in after for f in t.handles]
        if deps:
            deps = [self.client.submit(barrier, *deps, priority=priority, pure=False)]
        # the items go straight to the workers (not through the scheduler); each task
        # then runs where its item is
        data = self.client.scatter(list(items), hash=False) if len(items) else []
        futs = [
            self.client.submit(
                call_task,
                fn,
                item,
                *deps,
                priority=priority,
                retries=self.retries,
                pure=False,
            )
            for item in data
        ]
        return Tasks(futs, len(futs), priority)

    def as_completed(self, tasks: Tasks) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as tasks finish."""
        from distributed import as_completed

        index = {f.key: i for i, f in enumerate(tasks.handles)}
        for fut in as_completed(tasks.handles):
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                raise EngineError(f"a Dask task failed: {type(exc).__name__}: {exc}") from exc
            yield index[fut.key], result

    def close(self) -> None:
        """Disconnect; stop what this engine started."""
        if self.client is not None and self._owns_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None
