"""Run ``crdtdb serve`` (and, for comparison, a multi-database ovsdb-server) for tests.

``CrdtdbServer`` starts ``python -m crdtdb.cli serve`` as a child process on a unix socket
in a work directory, the way :class:`~crdtdb.testing.ovsdb_server.OvsdbServer` starts the
real ovsdb-server, and offers the same surface: ``sock_path``, ``remote``, ``pid``,
``running``, ``client()``, ``transact()``, ``log_tail()``, ``start()``/``stop()``/``close()``.

``RealOvsdbServer`` is the reference counterpart (an alias of ``OvsdbServer``, which serves
one or several databases on one socket). Differential tests take either through the
:class:`ServerUnderTest` protocol and run the same client script against both.

Every wait is bounded; a server that does not come up raises with the tail of its log.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import crdtdb
from crdtdb.testing.ovsdb_server import (
    ChildServer,
    OvsdbClient,
    OvsdbServer,
    OvsdbServerError,
    SchemaPaths,
)

#: The directory that holds the ``crdtdb`` package the tests import, so the child process
#: runs the same code (put first on its PYTHONPATH).
_PACKAGE_ROOT = Path(crdtdb.__file__).resolve().parent.parent

_LISTENING_RE = re.compile(r"listening on (\S+)")



class ServerUnderTest(Protocol):
    """What the differential tests need from either server."""

    @property
    def sock_path(self) -> Path: ...

    @property
    def remote(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def running(self) -> bool: ...

    def client(self, timeout: float = 10.0) -> OvsdbClient: ...

    def log_tail(self, n_lines: int = 20) -> str: ...


class CrdtdbServer(ChildServer):
    """``crdtdb serve`` in a child process, as a context manager::

        with CrdtdbServer([nb_schema, sb_schema], tmp_path) as server:
            subprocess.run(["ovn-nbctl", f"--db={server.remote}", "show"])

    ``remotes`` are extra ``--remote`` arguments (``ptcp:0:127.0.0.1``...); the unix socket
    in ``workdir`` (``sock_path``) is always served first.  ``data_dir`` is passed as
    ``--data-dir``; without it the databases are in memory.  ``extra_args`` go before the
    schemas (``--probe-interval=1``...).  The server logs at INFO level to
    ``workdir/crdtdb.log``.
    """

    what = "crdtdb"

    def __init__(
        self,
        schema_paths: SchemaPaths,
        workdir: str | os.PathLike[str],
        *,
        data_dir: str | os.PathLike[str] | None = None,
        remotes: Sequence[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            schema_paths,
            workdir,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
        )
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.remotes = list(remotes or [])
        self.extra_args = list(extra_args)

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "crdtdb.cli", "-v", "serve",
               f"--remote=punix:{self.sock_path}"]
        cmd += [f"--remote={r}" for r in self.remotes]
        if self.data_dir is not None:
            cmd.append(f"--data-dir={self.data_dir}")
        cmd += self.extra_args
        cmd += [str(p) for p in self.schema_paths]
        return cmd

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{_PACKAGE_ROOT}{os.pathsep}{path}" if path else str(_PACKAGE_ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def addresses(self) -> list[str]:
        """The addresses the server said it listens on (``unix:...``, ``tcp:IP:PORT``...),
        from its log, in order."""
        found: list[str] = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            m = _LISTENING_RE.search(line)
            if m and " listening on " in line and m.group(1) not in found:
                found.append(m.group(1))
        return found

    def wait_for_tcp(self, timeout: float = 10.0) -> str:
        """The first ``tcp:IP:PORT`` address from the log (waits for it, bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            for address in self.addresses():
                if address.startswith("tcp:"):
                    return address
            if time.monotonic() >= deadline:
                raise OvsdbServerError(f"no tcp listener in the log:\n{self.log_tail()}")
            time.sleep(0.02)


#: The reference counterpart of :class:`CrdtdbServer` (same surface, several databases).
RealOvsdbServer = OvsdbServer
