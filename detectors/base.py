"""The one interface every detector implements (used by the flow and the control plane).

A detector is stateless code plus a per-key state object. The flow keeps one state per
key inside Bytewax's snapshotted state, so a state must be picklable (plain Python
values and numpy arrays) and deterministic: the same inputs from the same state give
the same scores and the same next state. At rest the flow keeps states as the bytes of
``pack_state`` (default: pickle + zlib level 1; detectors may use a faster format but must
still read the default one, so existing snapshots keep loading).
"""

from __future__ import annotations

import copy
import pickle
import zlib
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

BUILTIN_VERSION = "builtin-1"


class Detector(Protocol):
    """Scores one key's values in order; no look-ahead: score i uses values <= i."""

    name: ClassVar[str]
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
        epoch seconds, float64). Return the next state and scores in [0, 1].
        """

    def score_batch(
        self, states: list[Any | None], values: list[np.ndarray], timestamps: list[np.ndarray]
    ) -> tuple[list[Any], list[np.ndarray]]:
        """Score many keys at once: ``states[i]`` (``None``: ``init_state()``) with
        ``values[i]``/``timestamps[i]``. The given states are consumed (may be updated in
        place and returned). The result equals calling ``score`` per key, bit for bit.
        """

    def pack_state(self, state: Any) -> bytes:
        """Serialise a state for storage (exact round trip through ``unpack_state``)."""

    def unpack_state(self, data: bytes) -> Any:
        """Inverse of ``pack_state``; also accepts the default format
        (``zlib.compress(pickle.dumps(state, HIGHEST_PROTOCOL), 1)``, first byte 0x78).
        """

    def load_model(self, model: dict[str, Any]) -> None:
        """Replace or seed parameters from a trained model artifact (control plane)."""

    def explain(self, state: Any, value: float, ts: float) -> dict[str, Any]:
        """Why ``value`` (at ``ts``, epoch seconds) scored as it did, from the key's state
        after scoring it: ``{"component": str, "expected": [lo, hi] | None, "reason":
        REASONS[i] | None}`` (``expected``: the values the detector took as normal at
        that moment). Called for alerts only; may be slower than ``score``.
        """


#: The kinds of change an explanation names.
REASONS = ("spike", "level_shift", "variance_change", "pattern")


def state_before_batch(det: Any, state: Any, n: int) -> bytes | None:
    """What :func:`explain_in_batch` needs from before a batch of ``n`` records: the packed
    state (``state`` as is when already packed bytes; ``None`` state: the initial one),
    or ``None`` for a single record.
    """
    if n == 1:
        return None
    if isinstance(state, bytes):
        return bytes(state)
    return det.pack_state(det.init_state() if state is None else state)


def explain_in_batch(
    det: Any,
    after: Any,
    before: bytes | None,
    values: Sequence[float],
    timestamps: Sequence[float],
    j: int,
) -> dict[str, Any]:
    """``det.explain`` for record ``j`` of a batch, from the state right after that record:
    ``after`` (the state after the batch) for the batch's last record, else the state
    rebuilt from ``before`` (``pack_state`` of the state before the batch) by scoring
    records ``0..j`` again. So an explanation does not depend on how records were batched.
    """
    if j < len(values) - 1 and before is not None:
        after, _ = det.score(
            det.unpack_state(before),
            np.asarray(values[: j + 1], dtype=np.float64),
            np.asarray(timestamps[: j + 1], dtype=np.float64),
        )
    return det.explain(after, float(values[j]), float(timestamps[j]))


class BaseDetector:
    """Shared plumbing for the built-in detectors: parameters, versions, models.

    Subclasses set ``name`` and ``defaults`` and implement ``init_state``/``score``;
    ``score_batch`` (a loop over ``score``) and ``pack_state``/``unpack_state`` (pickle +
    zlib level 1) have generic defaults that subclasses may speed up.
    ``params`` overrides ``defaults``; unknown keys raise ``ValueError`` so typos in
    ``AD_DETECTOR_PARAMS`` fail loudly. A model dict is ``{"detector": name,
    "version": str, "params": {...}}`` (JSON-serialisable), as returned by ``fit``.

    Args:
        params: overrides of ``defaults`` (``None``: the defaults).
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

    def init_state(self) -> Any:
        """The state of a key that has seen no records."""
        raise NotImplementedError

    def score(
        self, state: Any, values: np.ndarray, timestamps: np.ndarray
    ) -> tuple[Any, np.ndarray]:
        """Score ``values`` at ``timestamps`` (epoch seconds); return the next state and
        scores in [0, 1].
        """
        raise NotImplementedError

    def score_batch(
        self, states: list[Any | None], values: list[np.ndarray], timestamps: list[np.ndarray]
    ) -> tuple[list[Any], list[np.ndarray]]:
        """Default: ``score`` per key (``None`` states start from ``init_state()``)."""
        out_states: list[Any] = []
        scores: list[np.ndarray] = []
        for st, v, t in zip(states, values, timestamps, strict=True):
            st, s = self.score(self.init_state() if st is None else st, v, t)
            out_states.append(st)
            scores.append(s)
        return out_states, scores

    def pack_state(self, state: Any) -> bytes:
        """Default format: the state's pickle, zlib-compressed at level 1."""
        return zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 1)

    def unpack_state(self, data: bytes) -> Any:
        """Inverse of :meth:`pack_state`."""
        return pickle.loads(zlib.decompress(data))  # noqa: S301 - our own state, from our snapshots

    def load_model(self, model: dict[str, Any]) -> None:
        """Replace/seed parameters from a model dict (see ``to_model``/``fit``)."""
        det = model.get("detector", self.name)
        if det != self.name:
            raise ValueError(f"model is for detector {det!r}, not {self.name!r}")
        self._set_params(dict(model.get("params", {})))
        self.model_version = str(model.get("version", "trained"))

    def explain(self, state: Any, value: float, ts: float) -> dict[str, Any]:
        """Default: names the detector only (built-in detectors say more)."""
        return {"component": self.name, "expected": None, "reason": None}

    def to_model(self) -> dict[str, Any]:
        """The current parameters as a JSON-serialisable model dict."""
        return {
            "detector": self.name,
            "version": self.model_version,
            "params": copy.deepcopy(self.params),
        }
