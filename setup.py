"""The compiled modules (crdtdb/replica/_*.pyx), built where a C compiler is.

Everything else is in pyproject.toml. The extensions are optional: without a compiler the
install still succeeds and crdtdb runs the same code in Python (slower joins and merges; see
crdtdb/replica/encoding.py and envelope.py). scripts/bootstrap installs the compiler, so CI
always builds them.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

MODULES = [
    "_markers",  # markers (encoding.markers_reader, a full state's: joins), merged registers
    "_envelope",  # envelope.py's header reads and structure check (every merged update)
]

setup(ext_modules=cythonize(
    [Extension(f"crdtdb.replica.{name}", [f"crdtdb/replica/{name}.pyx"], optional=True)
     for name in MODULES],
    language_level=3))
