"""Ray: a local runtime (``ray.init``) or a running cluster (``--address``). Tasks are
Ray remote functions with ``max_retries``; a job waits for another through a barrier
task that takes the other job's object refs as arguments, and which its own tasks take
as an argument. Ray has no task priorities: a higher ``--priority`` job is
only submitted first.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from control.engines.base import Engine, EngineError, Tasks, barrier, call_task

__all__ = ["RayEngine"]

#: object store of an embedded runtime (small: results are small, the machine shared)
OBJECT_STORE_BYTES = 200 * 1024 * 1024


def _check_reachable(address: str) -> None:
    """Fail at once on a cluster address nothing listens on (``ray.init`` retries for
    minutes): ``host:port`` or ``ray://host:port``; ``auto`` and others are left to Ray.
    """
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as exc:
        raise EngineError(
            f"cannot reach Ray at {address}: {exc}; e.g. --address ray://head:10001 "
            "(or none for a local Ray)"
        ) from None


class RayEngine(Engine):
    """Ray tasks on a local runtime or a cluster (``address``).

    Args:
        workers: CPUs of the local runtime.
        address: a running cluster's address (``None``: a local runtime).
        retries: how often a failed task is retried.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, retries: int = 2) -> None:
        super().__init__(workers, address, retries)
        self._started = False
        self._remote: Any = None
        self._barrier: Any = None

    def start(self) -> None:
        """Connect, or start the embedded runtime."""
        import ray

        if not ray.is_initialized():
            if self.address:
                _check_reachable(self.address)
            try:
                if self.address:
                    ray.init(address=self.address, logging_level=logging.ERROR)
                else:
                    ray.init(
                        num_cpus=self.n_workers,
                        include_dashboard=False,
                        object_store_memory=OBJECT_STORE_BYTES,
                        logging_level=logging.ERROR,
                        log_to_driver=False,
                    )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise EngineError(
                    f"cannot start or reach Ray {self.address or 'locally'}: {exc}; "
                    "e.g. --address ray://127.0.0.1:10001"
                ) from None
            self._started = True
        self._remote = ray.remote(max_retries=self.retries, retry_exceptions=True)(call_task)
        self._barrier = ray.remote(barrier)

    def workers(self) -> int:
        """Worker slots of the engine."""
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def submit(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        priority: int = 0,
        after: Sequence[Tasks] = (),
    ) -> Tasks:
        """One task per item, after the tasks of ``after``."""
        deps = [r for t in after for r in t.handles]
        if deps:
            deps = [self._barrier.remote(*deps)]
        refs = [self._remote.remote(fn, item, *deps) for item in items]
        return Tasks(refs, len(refs), priority)

    def as_completed(self, tasks: Tasks) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as tasks finish."""
        import ray

        index = {r: i for i, r in enumerate(tasks.handles)}
        pending = list(tasks.handles)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - re-raised with context
                    raise EngineError(f"a Ray task failed: {type(exc).__name__}: {exc}") from exc
                yield index[ref], result

    def close(self) -> None:
        """Disconnect; stop what this engine started."""
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False
