"""Spark: ``local[N]`` or a cluster master (``--master spark://host:7077``). A job is a
DataFrame with one row per task item, run with ``groupBy("task").applyInPandas``;
Spark retries a failed task (``local[N]`` becomes ``local[N,retries+1]``, since local
mode retries nothing otherwise). Spark has no dependencies between jobs: a job that
must wait for others runs after them, in the driver, and higher ``--priority`` jobs
run first.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from control.engines.base import Engine, EngineError, Tasks

__all__ = ["SparkEngine"]


def _run_group(pdf: Any) -> Any:
    """One task: unpickle ``(fn, item)``, run it, pickle the result."""
    import pandas as pd

    fn, item = pickle.loads(pdf["blob"].iloc[0])  # noqa: S301 - our own task, from our driver
    return pd.DataFrame({"task": [int(pdf["task"].iloc[0])], "blob": [pickle.dumps(fn(item))]})


def _local_master(master: str, workers: int, retries: int) -> str:
    m = re.fullmatch(r"local(?:\[(\d+|\*)\])?", master)
    if m is None:
        return master
    return f"local[{m.group(1) or workers},{retries + 1}]"


class SparkEngine(Engine):
    """Spark ``applyInPandas`` jobs on ``local[N]`` or a master (``address``).

    Args:
        workers: cores of ``local[N]``.
        address: a Spark master (``None``: ``local[workers]``).
        retries: how often a failed task is retried.
        driver_memory: the embedded driver's heap (``spark.driver.memory``; default
            ``AD_SPARK_DRIVER_MEMORY``, else ``1g``): it holds a job's pickled partitions.
    """

    name = "spark"

    def __init__(
        self,
        workers: int = 2,
        address: str | None = None,
        retries: int = 2,
        driver_memory: str | None = None,
    ) -> None:
        super().__init__(workers, address, retries)
        self.spark: Any = None
        self._owns = True
        self.driver_memory = driver_memory or os.environ.get("AD_SPARK_DRIVER_MEMORY") or "1g"

    @classmethod
    def from_session(cls, spark: Any, retries: int = 2) -> SparkEngine:
        """An engine on an existing ``SparkSession`` (left running by ``close``)."""
        eng = cls(spark.sparkContext.defaultParallelism, None, retries)
        eng.spark, eng._owns = spark, False
        return eng

    def start(self) -> None:
        """Connect, or start the embedded runtime."""
        if self.spark is not None:
            return
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        from pyspark.sql import SparkSession

        master = _local_master(
            self.address or f"local[{self.n_workers}]", self.n_workers, self.retries
        )
        try:
            self.spark = (
                SparkSession.builder.master(master)
                .appName("adctl")
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                # one task per item: adaptive execution would coalesce them into one
                .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
                .config("spark.task.maxFailures", str(self.retries + 1))
                .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                # the driver holds a job's pickled partitions: about 30 bytes a reading
                .config("spark.driver.memory", self.driver_memory)
                .getOrCreate()
            )
        except Exception as exc:  # noqa: BLE001 - py4j raises many kinds
            raise EngineError(
                f"cannot start Spark at {master}: {exc}; e.g. --master local[2]"
            ) from None
        self.spark.sparkContext.setLogLevel("ERROR")

    def workers(self) -> int:
        """Worker slots of the engine."""
        return max(1, int(self.spark.sparkContext.defaultParallelism))

    def submit(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        priority: int = 0,
        after: Sequence[Tasks] = (),
    ) -> Tasks:
        """One task per item, after the tasks of ``after``."""
        for dep in after:  # no cross-job DAG in Spark: finish what this job waits for
            if dep.results is None:
                dep.results = dict(self._run(dep.handles))
        return Tasks([(fn, item) for item in items], len(items), priority)

    def _run(self, pairs: list[tuple[Callable[[Any], Any], Any]]) -> Iterator[tuple[int, Any]]:
        if not pairs:
            return
        import pandas as pd

        pdf = pd.DataFrame({"task": range(len(pairs)), "blob": [pickle.dumps(p) for p in pairs]})
        # a Spark task costs ~0.1 s of Python-worker and Arrow set-up: a few groups each
        slots = min(len(pairs), 2 * self.workers())
        self.spark.conf.set("spark.sql.shuffle.partitions", str(slots))
        df = self.spark.createDataFrame(pdf, "task long, blob binary")
        out = df.groupBy("task").applyInPandas(_run_group, schema="task long, blob binary")
        try:
            rows = out.collect()
        except Exception as exc:  # noqa: BLE001 - py4j/pyspark errors, re-raised
            raise EngineError(f"a Spark task failed: {str(exc).splitlines()[0]}") from exc
        for row in rows:
            yield int(row["task"]), pickle.loads(row["blob"])  # noqa: S301 - our own task result

    def as_completed(self, tasks: Tasks) -> Iterator[tuple[int, Any]]:
        """``(index, result)`` as tasks finish."""
        if tasks.results is None:
            tasks.results = dict(self._run(tasks.handles))
        yield from tasks.results.items()

    def close(self) -> None:
        """Disconnect; stop what this engine started."""
        if self.spark is not None and self._owns:
            self.spark.stop()
        self.spark = None
