"""Batch engines behind one interface (:class:`control.engines.base.Engine`).

``make_engine("dask" | "ray" | "spark", workers=, address=)``: Dask is the default
(an embedded LocalCluster, or ``address`` = a scheduler); Ray and Spark are optional
extras (``pip install 'anomaly-detector[ray]'`` / ``[spark]``).
"""

from __future__ import annotations

from importlib import import_module

from control.engines.base import Engine, EngineError, Tasks

__all__ = ["ENGINES", "Engine", "EngineError", "Tasks", "make_engine"]

#: engine name -> (module, class, the extra that installs it)
ENGINES = {
    "dask": ("control.engines.dask_engine", "DaskEngine", "dask"),
    "ray": ("control.engines.ray_engine", "RayEngine", "ray"),
    "spark": ("control.engines.spark_engine", "SparkEngine", "spark"),
}


def make_engine(
    name: str,
    workers: int = 2,
    address: str | None = None,
    retries: int = 2,
    spark_driver_memory: str | None = None,
) -> Engine:
    """An engine by name (not started; use it as a context manager)."""
    entry = ENGINES.get(name)
    if entry is None:
        raise EngineError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}, e.g. dask")
    module, cls, extra = entry
    top = {"dask": "distributed", "ray": "ray", "spark": "pyspark"}[name]
    try:
        import_module(top)
    except ImportError:
        raise EngineError(
            f"engine {name!r} is not installed; pip install 'anomaly-detector[{extra}]'"
        ) from None
    extra_kw = {"driver_memory": spark_driver_memory} if name == "spark" else {}
    engine: Engine = getattr(import_module(module), cls)(workers, address, retries, **extra_kw)
    return engine
