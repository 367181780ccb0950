"""Per-key training on any batch engine: ``control.training.fit_batch`` as engine tasks.

The artifact does not depend on the engine or on how keys were batched into tasks:
each key's model comes from the same fit on the same series, and
``control.training.assemble_model`` sorts them, so Dask, Ray and Spark give the same
digest.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from control.engines import Engine
from control.history import Series
from control.training import _batches, check_training, fit_batch

__all__ = ["train_on_engine"]


def train_on_engine(
    engine: Engine,
    series: dict[str, Series],
    detector: str,
    *,
    params: dict[str, Any] | None = None,
    fit_spec: str | None = None,
    gpu: bool = False,
    tasks_per_worker: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit one model per key on a started ``engine``; ``{key: model}``, keys sorted."""
    check_training(series, fit_spec, gpu)
    batches = _batches(series, engine.workers() * tasks_per_worker)
    fn = partial(fit_batch, detector, params or None, fit_spec=fit_spec, gpu=gpu)
    results: dict[str, dict[str, Any]] = {}
    for _i, part in engine.as_completed(engine.submit(fn, batches)):
        results.update(part)
        if progress is not None:
            progress(len(results), len(series))
    return {k: results[k] for k in sorted(results)}
