"""Test-only helpers shared by several test modules."""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crdtdb.testing.ovsdb_server import OvsdbBinariesMissing, find_binaries, find_binary

#: The project's own schema that uses every type and constraint.
KITCHEN_SINK_SCHEMA = Path(__file__).resolve().parent / "schemas" / "kitchen_sink.ovsschema"
#: The OVN schemas, from the Debian ovn-common package.
NB_SCHEMA = Path("/usr/share/ovn/ovn-nb.ovsschema")
SB_SCHEMA = Path("/usr/share/ovn/ovn-sb.ovsschema")


@contextlib.contextmanager
def nothing_left_open() -> Iterator[None]:
    """Fail if the block left a socket or file to the garbage collector. (Left alone, it
    warns when collected, and with warnings as errors fails whichever test runs then:
    collect here, inside the block that leaked it.)"""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, leaked


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


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; CI is set, so this test may not be skipped")
    pytest.skip(f"{what} is not installed")


def need_ovn(*tools: str) -> dict[str, str]:
    """ovsdb-server, the OVN schemas and ``tools`` (paths by name): skip when missing, fail
    under CI."""
    require_binaries()
    found: dict[str, str] = {}
    for tool in tools:
        path = find_binary(tool)
        if path is None:
            _missing(tool)
        found[tool] = path  # type: ignore[assignment]
    for schema in (NB_SCHEMA, SB_SCHEMA):
        if not schema.is_file():
            _missing(f"{schema} (Debian ovn-common)")
    return found


def drive_local_commits(core: Any) -> None:
    """Complete the commits a ServerCore handed out to the local plugin, synchronously (it
    never really awaits), as the server's I/O layer would."""
    while core.commits:
        pending = core.commits.pop(0)
        coro = core.databases[pending.request.db_name].commit(pending.request)
        try:
            coro.send(None)
        except StopIteration as done:
            core.commit_finished(pending, done.value)
        else:  # pragma: no cover - the local plugin has nothing to wait for
            raise AssertionError("the local plugin awaited something")
