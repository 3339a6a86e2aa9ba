"""Shared fixtures and options.

- ``--slow`` runs the tests marked ``slow`` (they are skipped otherwise, unless selected
  explicitly with ``-m slow``).
- ``sb_schema_path`` / ``kitchen_sink_schema_path``: schema files.
- ``pki``: a directory with ``cacert``, ``server``, ``client`` (signed by it) and
  ``stranger`` (signed by ``othercacert``) keys and certificates.
- ``ovsdb_server``: a factory that starts a real ovsdb-server on a fresh database.  Tests
  that use it must be marked ``@pytest.mark.ovsdb_server``.  Without the binaries those
  tests are skipped, except when the environment variable CI is set: then they fail.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# Make the helper modules in tests/ (support, differential) importable as top-level modules
# whatever the rootdir/import mode.
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from support import KITCHEN_SINK_SCHEMA, require_binaries  # noqa: E402

from crdtdb.testing.ovsdb_server import (  # noqa: E402
    SB_SCHEMA_CANDIDATES,
    OvsdbServer,
    find_sb_schema,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", default=False, help="also run tests marked slow"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow") or "slow" in (config.getoption("markexpr") or ""):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --slow (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; CI is set, so this test may not be skipped")
    pytest.skip(f"{what} is missing")


@pytest.fixture(scope="module", autouse=True)
def _collect_leaks_per_module() -> Iterator[None]:
    """Anything a module's tests left unclosed (sockets, files) warns when it is collected,
    and with warnings as errors that fails whichever test runs then, often in another
    module: collect at each module's end, so the failure lands in the module that leaked."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def sb_schema_path() -> Path:
    """The OVN_Southbound schema (from the Debian ovn-common package)."""
    path = find_sb_schema()
    if path is None:
        _missing(f"the OVN_Southbound schema ({', '.join(map(str, SB_SCHEMA_CANDIDATES))})")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def kitchen_sink_schema_path() -> Path:
    """The project's own schema that uses every type and constraint."""
    return KITCHEN_SINK_SCHEMA


@pytest.fixture
def ovsdb_server(tmp_path: Path) -> Iterator[Callable[[Path | str], OvsdbServer]]:
    """Factory: ``ovsdb_server(schema_path)`` returns a started OvsdbServer on a new, empty
    database.  Every server it started is stopped at teardown."""
    require_binaries()
    servers: list[OvsdbServer] = []

    def start(schema_path: Path | str) -> OvsdbServer:
        server = OvsdbServer(schema_path, tmp_path / f"ovsdb-{len(servers)}")
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.close()


# --- a PKI for the TLS tests (made with openssl) ------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=d)


def _cert(d: Path, name: str, ca: str) -> None:
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
             "-keyout", f"{name}-privkey.pem", "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}-cert.pem", cwd=d)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA with a server and a client certificate, and a stranger signed by another CA."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "cacert")
    _ca(d, "othercacert")
    _cert(d, "server", "cacert")
    _cert(d, "client", "cacert")
    _cert(d, "stranger", "othercacert")
    return d
