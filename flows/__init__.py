"""The detector dataflow and its per-record modules.

The per-record modules (``COMPILED``) may also exist compiled (``setup.py``, Cython),
which Python imports in preference to the source. Before any of them is imported, this
package makes sure a compiled module never stands in for different source: the build
records each source's SHA-256 in ``_compiled.json``, and where a ``.py`` no longer has
that digest (edited since the last ``make install``), or where ``AD_COMPILED=0``, the
source is loaded instead (with a warning for the stale case). ``IMPLEMENTATION`` says,
per module, which one runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import warnings
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

__all__ = ["COMPILED", "IMPLEMENTATION"]

#: modules on the per-record path, in import-dependency order (setup.py compiles them)
COMPILED = ("windows", "records", "sensor_state", "decode", "logic")

#: module name -> "compiled" | "interpreted"
IMPLEMENTATION: dict[str, str] = {}


def _load_source(name: str, src: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"{__name__}.{name}", src)
    assert spec is not None and spec.loader is not None  # noqa: S101 - narrowing; a .py path always has a spec
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    setattr(sys.modules[__name__], name, module)


def _choose() -> None:
    here = Path(__file__).parent
    off = os.environ.get("AD_COMPILED", "").strip().lower() in ("0", "false", "no", "off")
    try:
        digests: dict[str, str] = json.loads((here / "_compiled.json").read_text())
    except (OSError, ValueError):
        digests = {}
    for name in COMPILED:
        src = here / f"{name}.py"
        if not any((here / f"{name}{s}").exists() for s in EXTENSION_SUFFIXES):
            IMPLEMENTATION[name] = "interpreted"
            continue
        stale = (
            not off
            and src.exists()
            and (  # (an install may ship the compiled module alone)
                digests.get(f"{__name__}.{name}") != hashlib.sha256(src.read_bytes()).hexdigest()
            )
        )
        if stale:
            warnings.warn(
                f"flows/{name}.py differs from the source of its compiled module: "
                "running the source (rebuild with `make install`)",
                stacklevel=3,
            )
        if off or stale:
            _load_source(name, src)
            IMPLEMENTATION[name] = "interpreted"
        else:
            IMPLEMENTATION[name] = "compiled"


_choose()
