"""The one interface every detector implements (used by the flow and the control plane).

A detector is stateless code plus a per-key state object. The flow keeps one state per
key inside Bytewax's snapshotted state, so a state must be picklable (plain Python
values and numpy arrays) and deterministic: the same inputs from the same state give
the same scores and the same next state.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Protocol

import numpy as np

BUILTIN_VERSION = "builtin-1"


class Detector(Protocol):
    """Scores one key's values in order; no look-ahead: score i uses values <= i."""

    name: str
    #: Version of the detector code/configuration, and of the loaded model
    #: (``"builtin-1"`` until ``load_model`` installs a trained one).
    version: str
    model_version: str

    def init_state(self) -> Any:
        """A fresh per-key state."""

    def score(
        self, state: Any, values: np.ndarray, timestamps: np.ndarray
    ) -> tuple[Any, np.ndarray]:
        """Score a batch of one key's values (float64, event-time order; timestamps in
        epoch seconds, float64). Return the next state and scores in [0, 1]."""

    def load_model(self, model: dict[str, Any]) -> None:
        """Replace or seed parameters from a trained model artifact (control plane)."""


class BaseDetector:
    """Shared plumbing for the built-in detectors: parameters, versions, models.

    Subclasses set ``name`` and ``defaults`` and implement ``init_state``/``score``.
    ``params`` overrides ``defaults``; unknown keys raise ``ValueError`` so typos in
    ``AD_DETECTOR_PARAMS`` fail loudly. A model dict is ``{"detector": name,
    "version": str, "params": {...}}`` (JSON-serialisable), as returned by ``fit``.
    """

    name: ClassVar[str] = "base"
    defaults: ClassVar[dict[str, Any]] = {}
    version: str = BUILTIN_VERSION

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = copy.deepcopy(self.defaults)
        self.model_version = BUILTIN_VERSION
        self._set_params(params or {})

    def _set_params(self, params: dict[str, Any]) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}")
        self.params.update(copy.deepcopy(params))
        self._configure()

    def _configure(self) -> None:
        """Derive cached constants from ``self.params`` (override as needed)."""

    def load_model(self, model: dict[str, Any]) -> None:
        """Replace/seed parameters from a model dict (see ``to_model``/``fit``)."""
        det = model.get("detector", self.name)
        if det != self.name:
            raise ValueError(f"model is for detector {det!r}, not {self.name!r}")
        self._set_params(dict(model.get("params", {})))
        self.model_version = str(model.get("version", "trained"))

    def to_model(self) -> dict[str, Any]:
        """The current parameters as a JSON-serialisable model dict."""
        return {"detector": self.name, "version": self.model_version,
                "params": copy.deepcopy(self.params)}
