"""Optional compiled hot path: the flow's per-record modules, built with Cython.

The ``.py`` files are the only source. Where a C compiler and Cython are available (the
build requires Cython; ``make install`` / ``pip install -e .`` build in place) the
modules below are also compiled to extension modules, which Python imports instead of
the source; where the compile fails the install goes on and the same modules run
interpreted, with identical results (``tests/flows/test_compiled.py``). ``AD_COMPILED=0``
forces the interpreted modules (``flows/__init__.py``).
"""

from setuptools import Extension, setup

#: modules on the per-record path (flows/__init__.py keeps the same list)
COMPILED = ("flows.windows", "flows.records", "flows.decode", "flows.logic")

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

setup(ext_modules=ext_modules)
