"""Optional compiled hot path: the flow's per-record modules, built with Cython.

The ``.py`` files are the only source. Where a C compiler and Cython are available (the
build requires Cython; ``make install`` / ``pip install -e .`` build in place) the
modules below are also compiled to extension modules, which Python imports instead of
the source; where the compile fails the install goes on and the same modules run
interpreted, with identical results (``tests/flows/test_compiled.py``). The build
records the SHA-256 of each source it compiled in ``flows/_compiled.json``;
``flows/__init__.py`` runs a compiled module only while its source still has that
digest, and ``AD_COMPILED=0`` forces the interpreted modules.
"""

import hashlib
import json
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: modules on the per-record path (flows/__init__.py keeps the same list)
COMPILED = (
    "flows.windows",
    "flows.records",
    "flows.sensor_state",
    "flows.decode",
    "flows.logic",
)
HERE = Path(__file__).resolve().parent


def _source(module: str) -> Path:
    return HERE / (module.replace(".", "/") + ".py")


class BuildExt(build_ext):
    """``build_ext`` that also writes the digests of the compiled sources."""

    def run(self) -> None:
        super().run()
        built = {
            m: hashlib.sha256(_source(m).read_bytes()).hexdigest()
            for m in COMPILED
            if Path(self.get_ext_fullpath(m)).exists()
        }
        out = Path(self.get_ext_fullpath(COMPILED[0])).parent / "_compiled.json"
        out.write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")


try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: interpreted only
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension(m, [m.replace(".", "/") + ".py"], optional=True) for m in COMPILED],
        compiler_directives={"language_level": 3},
        quiet=True,
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
