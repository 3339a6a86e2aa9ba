"""Test-only helpers shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crdtdb.testing.ovsdb_server import OvsdbBinariesMissing, find_binaries

#: The project's own schema that uses every type and constraint.
KITCHEN_SINK_SCHEMA = Path(__file__).resolve().parent / "schemas" / "kitchen_sink.ovsschema"


def require_binaries() -> tuple[str, str]:
    """Like find_binaries(), for tests: skip when missing, but fail when $CI is set.

    CI must run every ovsdb-server test, so a missing binary there is an error, never a
    silent skip.
    """
    try:
        return find_binaries()
    except OvsdbBinariesMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; CI is set, so ovsdb-server tests may not be skipped")
        pytest.skip(str(exc))
