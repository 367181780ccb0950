"""Imports run one way: control → flows → connectors/detectors/state → schemas.

Every import in every module of the packages (top level and inside functions) is
checked, so a lower layer can never come to depend on a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: package -> the project packages it may import (besides itself)
ALLOWED = {
    "schemas": set(),
    "connectors": {"schemas"},
    "detectors": {"schemas"},
    "state": {"schemas"},
    "flows": {"connectors", "detectors", "state", "schemas"},
    "control": {"flows", "connectors", "detectors", "state", "schemas"},
    "benchmarks": {"control", "flows", "connectors", "detectors", "state", "schemas"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def _modules() -> list[Path]:
    return sorted(p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_imports_only_lower_layers(path: Path) -> None:
    pkg = path.relative_to(ROOT).parts[0]
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {top}"
        for line, top in _imports(path)
        if top in ALLOWED and top != pkg and top not in ALLOWED[pkg]
    ]
    assert not bad, f"{pkg} may import only {sorted(ALLOWED[pkg])}: {bad}"


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from control import cli\n")
    assert (2, "control") in _imports(bad)
