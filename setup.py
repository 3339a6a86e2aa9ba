"""The one compiled module (crdtdb/replica/_markers.pyx), built where a C compiler is.

Everything else is in pyproject.toml. The extension is optional: without a compiler the
install still succeeds and crdtdb runs the same loop in Python (slower joins; see
crdtdb/replica/encoding.py). scripts/bootstrap installs the compiler, so CI always builds it.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(ext_modules=cythonize(
    [Extension("crdtdb.replica._markers", ["crdtdb/replica/_markers.pyx"], optional=True)],
    language_level=3))
