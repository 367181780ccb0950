"""Array-module switch: numpy everywhere, CuPy when installed and a GPU is present.

Detector kernels take an ``xp`` module argument and use only the numpy API subset that
CuPy implements, so the same code runs on either. ``AD_XP=numpy|cupy|auto`` (default
``auto``) chooses; ``auto`` picks CuPy only when it imports and sees a CUDA device.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np


def cupy_available() -> bool:
    """True when ``cupy`` imports and at least one CUDA device is visible."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # noqa: BLE001 - any import/driver failure means "no GPU"
        return False


def get_xp(prefer: str | None = None) -> ModuleType:
    """Return ``numpy`` or ``cupy`` (``prefer``: 'numpy', 'cupy' or 'auto')."""
    choice = (prefer or os.environ.get("AD_XP", "auto")).lower()
    if choice == "numpy":
        return np
    if choice in ("cupy", "auto") and cupy_available():
        import cupy

        return cupy
    if choice == "cupy":
        raise RuntimeError("AD_XP=cupy but cupy or a CUDA device is not available")
    return np


def asnumpy(a: Any) -> np.ndarray:
    """Bring an array (numpy or cupy) back to host numpy."""
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return np.asarray(get() if get is not None else a)


def array_module(a: Any) -> ModuleType:
    """The module (numpy or cupy) that owns array ``a``."""
    if isinstance(a, np.ndarray):
        return np
    import cupy

    return cupy.get_array_module(a)
