"""Per-key model training on Dask (an embedded ``LocalCluster`` or a remote scheduler).

The only call into the detectors package is :func:`fit_adapter`; everything else is
plumbing: batching keys into tasks, progress, and assembling one deterministic artifact::

    {"detector": name, "version": V, "params": <pooled default params>,
     "keys": {key: <that key's model from detectors.fit>, ...}, "training": {...}}

The top level is itself a valid model for ``Detector.load_model`` (its ``params`` are
the per-key parameters pooled by median, for keys without a model of their own); each
``keys[k]`` is that key's own model. Every ``version`` field is set to ``V``.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from control.history import Series

__all__ = ["TrainingError", "assemble_model", "fit_adapter", "fit_batch", "train_on_dask"]

FitFn = Callable[..., dict[str, Any]]
Progress = Callable[[int, int], None]


class TrainingError(RuntimeError):
    """Training could not run (no fit function, cluster unreachable, a task failed)."""


def fit_adapter(
    detector: str,
    values: np.ndarray,
    timestamps: np.ndarray,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Adapter to the detectors package: ``detectors.fit(name, values, timestamps, params)``."""
    import detectors

    fit = getattr(detectors, "fit", None)
    if fit is None:
        raise TrainingError(
            "the detectors package has no fit(name, values, timestamps); "
            "it is needed to train models"
        )
    return fit(detector, values, timestamps, params=params or None)


def resolve_fit(spec: str | None) -> FitFn:
    """``None`` for :func:`fit_adapter`, or ``"package.module:function"`` (same signature)."""
    if not spec:
        return fit_adapter
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise TrainingError(f"fit function {spec!r} must look like package.module:function")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise TrainingError(f"cannot import fit function {spec!r}: {exc}") from None


@contextmanager
def _xp_env(gpu: bool) -> Iterator[None]:
    """Run the numeric work on CuPy (``AD_XP=cupy``) inside this block when ``gpu``."""
    if not gpu:
        yield
        return
    old = os.environ.get("AD_XP")
    os.environ["AD_XP"] = "cupy"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("AD_XP", None)
        else:
            os.environ["AD_XP"] = old


def fit_batch(
    detector: str,
    params: dict[str, Any] | None,
    batch: Sequence[tuple[str, np.ndarray, np.ndarray]],
    fit_spec: str | None = None,
    gpu: bool = False,
) -> list[tuple[str, dict[str, Any]]]:
    """Fit every ``(key, timestamps, values)`` in ``batch``; runs on a Dask worker."""
    fit = resolve_fit(fit_spec)
    p = dict(params or {})
    restore_xp: Any = None
    if gpu:
        # Detectors with an ``xp`` parameter train on CuPy; the stored model keeps the
        # CPU setting so the flow (maybe without a GPU) can load it.
        from detectors import get_detector

        current = getattr(get_detector(detector, params), "params", {})
        if "xp" in current:
            restore_xp, p["xp"] = current["xp"], "cupy"
    out = []
    with _xp_env(gpu):
        for key, ts, vs in batch:
            model = fit(detector, vs, ts, params=p or None)
            if restore_xp is not None and "xp" in model.get("params", {}):
                model["params"]["xp"] = restore_xp
            out.append((key, model))
    return out


def _median_params(models: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool per-key parameters: median of numeric values, most common otherwise."""
    pooled: dict[str, Any] = {}
    names = sorted({k for m in models for k in m.get("params", {})})
    for name in names:
        vals = [m["params"][name] for m in models if name in m.get("params", {})]
        nums = [v for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(nums) == len(vals) and nums:
            med = float(np.median(np.asarray(nums, dtype=np.float64)))
            pooled[name] = int(round(med)) if all(isinstance(v, int) for v in nums) else med
        else:
            reprs = sorted(vals, key=lambda v: (-sum(1 for w in vals if w == v), repr(v)))
            pooled[name] = reprs[0]
    return pooled


def assemble_model(
    detector: str,
    version: str,
    per_key: dict[str, dict[str, Any]],
    training: dict[str, Any],
) -> dict[str, Any]:
    """The artifact dict (see module docstring); deterministic for the same inputs."""
    keys = {k: {**per_key[k], "version": version} for k in sorted(per_key)}
    return {
        "detector": detector,
        "version": version,
        "params": _median_params(list(keys.values())),
        "keys": keys,
        "training": training,
    }


def check_training(series: dict[str, Series], fit_spec: str | None, gpu: bool) -> None:
    """Fail fast, here rather than on every worker: no history, ``gpu`` without a CUDA
    device, or a ``fit_spec`` that does not resolve (``TrainingError``).
    """
    if not series:
        raise TrainingError("no history to train on (no records matched)")
    if gpu:
        from detectors.xp import cupy_available

        if not cupy_available():
            raise TrainingError("--gpu needs CuPy and a CUDA device on this machine")
    resolve_fit(fit_spec)


def _batches(
    series: dict[str, Series], n_tasks: int
) -> list[list[tuple[str, np.ndarray, np.ndarray]]]:
    items = [(k, series[k].timestamps, series[k].values) for k in sorted(series)]
    size = max(1, math.ceil(len(items) / max(1, n_tasks)))
    return [items[i : i + size] for i in range(0, len(items), size)]


def train_on_dask(
    series: dict[str, Series],
    detector: str,
    *,
    params: dict[str, Any] | None = None,
    scheduler: str | None = None,
    n_workers: int = 2,
    tasks_per_worker: int = 4,
    fit_spec: str | None = None,
    gpu: bool = False,
    progress: Progress | None = None,
    timeout: float = 3600.0,
) -> dict[str, dict[str, Any]]:
    """Fit one model per key on Dask; return ``{key: model}`` (keys sorted).

    ``scheduler`` is ``tcp://host:port`` of a running cluster, or ``None`` for an
    embedded ``LocalCluster`` of ``n_workers`` single-threaded worker processes.
    """
    from distributed import Client, LocalCluster, as_completed

    check_training(series, fit_spec, gpu)
    cluster = None
    try:
        if scheduler:
            client = Client(scheduler, timeout="15s")
        else:
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=40,
            )
            client = Client(cluster)
    except (OSError, TimeoutError) as exc:
        raise TrainingError(
            f"cannot reach Dask scheduler {scheduler or 'LocalCluster'}: {exc}"
        ) from None
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})) or n_workers)
        batches = _batches(series, workers * tasks_per_worker)
        futures = [
            client.submit(fit_batch, detector, params, b, fit_spec, gpu, pure=False)
            for b in batches
        ]
        results: dict[str, dict[str, Any]] = {}
        done_keys = 0
        for fut in as_completed(futures, timeout=timeout):
            try:
                part = fut.result()
            except Exception as exc:  # noqa: BLE001 - re-raised with context
                raise TrainingError(f"a training task failed: {type(exc).__name__}: {exc}") from exc
            for key, model in part:
                results[key] = model
            done_keys += len(part)
            if progress is not None:
                progress(done_keys, len(series))
        return {k: results[k] for k in sorted(results)}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
