"""Finding the optional compiled twins (``crdtdb/replica/_*.pyx``, built by setup.py where a
C compiler is): each is used only at the ABI its Python module was written for, so a stale
build left in a tree falls back to the Python code, as does ``CRDTDB_PURE_PYTHON=1``."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

#: ``CRDTDB_PURE_PYTHON=1``: run the Python twins even where the compiled ones were built
#: (for comparisons; nothing else changes).
PURE_PYTHON = os.environ.get("CRDTDB_PURE_PYTHON") == "1"


def load(name: str, abi: int) -> ModuleType | None:
    """``crdtdb.replica.<name>`` if it was built and is of ``abi``, else None."""
    try:
        module = importlib.import_module(f"crdtdb.replica.{name}")
    except ImportError:
        return None
    return module if getattr(module, "ABI", None) == abi else None
