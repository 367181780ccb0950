"""Streaming anomaly detectors behind one interface (see ``detectors.base.Detector``).

``get_detector(name, params)`` builds one; ``DETECTORS`` lists the names; ``fit(name,
values, timestamps)`` learns a JSON-serialisable model dict that ``load_model`` accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from detectors.base import BUILTIN_VERSION, BaseDetector, Detector
from detectors.ensemble import EnsembleDetector, fit_ensemble
from detectors.mad import MadDetector, fit_mad

_REGISTRY: dict[str, type[BaseDetector]] = {
    MadDetector.name: MadDetector,
    EnsembleDetector.name: EnsembleDetector,
}
_FITTERS: dict[str, Callable[..., dict[str, Any]]] = {
    MadDetector.name: fit_mad,
    EnsembleDetector.name: fit_ensemble,
}

DETECTORS: tuple[str, ...] = tuple(_REGISTRY)
DEFAULT_DETECTOR = "ensemble"


def get_detector(name: str, params: dict[str, Any] | None = None) -> Detector:
    """Build detector ``name`` with optional parameter overrides."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; choose from {DETECTORS}") from None
    return cls(params)


def fit(
    name: str,
    values: np.ndarray,
    timestamps: np.ndarray | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Learn a model dict for detector ``name`` from history (for the control plane)."""
    if name not in _FITTERS:
        raise ValueError(f"unknown detector {name!r}; choose from {DETECTORS}")
    return _FITTERS[name](values, timestamps, params=params)


__all__ = ["BUILTIN_VERSION", "DEFAULT_DETECTOR", "DETECTORS", "Detector", "fit", "get_detector"]
