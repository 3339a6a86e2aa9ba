"""Run ``crdtdb serve`` (and, for comparison, a multi-database ovsdb-server) for tests.

``CrdtdbServer`` starts ``python -m crdtdb.cli serve`` as a child process on a unix socket
in a work directory, the way :class:`~crdtdb.testing.ovsdb_server.OvsdbServer` starts the
real ovsdb-server, and offers the same surface: ``sock_path``, ``remote``, ``pid``,
``running``, ``client()``, ``transact()``, ``log_tail()``, ``start()``/``stop()``/``close()``.

``RealOvsdbServer`` is the reference counterpart with the same surface for several
databases on one socket (``ovsdb-server nb.db sb.db --remote=punix:...``), which the
single-database ``OvsdbServer`` does not do.  Differential tests take either through the
:class:`ServerUnderTest` protocol and run the same client script against both.

Every wait is bounded; a server that does not come up raises with the tail of its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Protocol, Self

import crdtdb
from crdtdb.testing.ovsdb_server import (
    OvsdbClient,
    OvsdbServerError,
    die_with_parent,
    find_binaries,
)

#: The directory that holds the ``crdtdb`` package the tests import, so the child process
#: runs the same code (put first on its PYTHONPATH).
_PACKAGE_ROOT = Path(crdtdb.__file__).resolve().parent.parent

_LISTENING_RE = re.compile(r"listening on (\S+)")

#: One .ovsschema path, or several.
SchemaPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


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


def _tail(path: Path, n_lines: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(lines[-n_lines:]) or "(log is empty)"


def _db_name(schema_path: Path) -> str:
    name = json.loads(schema_path.read_text())["name"]
    if not isinstance(name, str):
        raise ValueError(f"{schema_path}: schema has no name")
    return name


class _ChildServer:
    """The lifecycle shared by both servers: a child process on a unix socket."""

    #: Program name for messages.
    what = "server"

    def __init__(
        self,
        schema_paths: SchemaPaths,
        workdir: str | os.PathLike[str],
        *,
        startup_timeout: float,
        stop_timeout: float,
    ) -> None:
        paths = [schema_paths] if isinstance(schema_paths, str | os.PathLike) else schema_paths
        if not paths:
            raise ValueError("at least one schema is needed")
        self.schema_paths = [Path(p) for p in paths]
        self.workdir = Path(workdir)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.db_names: list[str] = [_db_name(p) for p in self.schema_paths]
        self.log_path = self.workdir / f"{self.what}.log"
        # A unix socket path must fit in sun_path (108 bytes); pytest's tmp_path can be
        # longer, and then the socket goes to a short private directory instead.
        self._sockdir: str | None = None
        sockdir = self.workdir
        if len(str(self.workdir / "db.sock")) > 100:
            self._sockdir = tempfile.mkdtemp(prefix="crdtdb-")
            sockdir = Path(self._sockdir)
        self._sock_path = sockdir / "db.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.returncode: int | None = None

    # -- the surface both servers share -----------------------------------------------

    @property
    def sock_path(self) -> Path:
        return self._sock_path

    @property
    def remote(self) -> str:
        """The address clients connect to (``unix:PATH``)."""
        return f"unix:{self._sock_path}"

    @property
    def db_name(self) -> str:
        """The first database (the only one, usually)."""
        return self.db_names[0]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self, n_lines: int = 20) -> str:
        return _tail(self.log_path, n_lines)

    def client(self, timeout: float = 10.0) -> OvsdbClient:
        if not self.running:
            raise OvsdbServerError(
                f"{self.what} is not running; log {self.log_path}:\n{self.log_tail()}"
            )
        return OvsdbClient(self._sock_path, timeout=timeout)

    def transact(self, ops: list[Any], db_name: str | None = None) -> list[Any]:
        """One-shot transact (opens and closes a connection)."""
        with self.client() as client:
            return client.transact(db_name or self.db_name, ops)

    # -- lifecycle ----------------------------------------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Anything to do before the process starts (create database files...)."""

    def _env(self) -> dict[str, str] | None:
        return None

    def start(self) -> None:
        if self._proc is not None:
            raise OvsdbServerError(f"{self.what} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._sock_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self._sock_path.unlink()
        self._prepare()
        self.returncode = None
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._command(),
            cwd=self.workdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            preexec_fn=die_with_parent,
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_until_listening(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.002
        while True:
            if self._proc.poll() is not None:
                raise OvsdbServerError(
                    f"{self.what} exited with status {self._proc.returncode} during startup; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self._sock_path.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.settimeout(1.0)
                    try:
                        probe.connect(str(self._sock_path))
                    except OSError:
                        pass
                    else:
                        return
            if time.monotonic() >= deadline:
                raise OvsdbServerError(
                    f"{self.what} did not accept connections on {self._sock_path} within "
                    f"{self.startup_timeout} s; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), then SIGKILL.  Returns the exit status (None if the
        server was not running)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=self.stop_timeout)
            self.returncode = proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.returncode

    def close(self) -> None:
        """stop(), and remove the private socket directory, if one was made."""
        self.stop()
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None


class CrdtdbServer(_ChildServer):
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


class RealOvsdbServer(_ChildServer):
    """A standalone ovsdb-server serving one new, empty database per schema on one unix
    socket; the reference that :class:`CrdtdbServer` is compared with."""

    what = "ovsdb-server"

    def __init__(
        self,
        schema_paths: SchemaPaths,
        workdir: str | os.PathLike[str],
        *,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            schema_paths,
            workdir,
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
        )
        self.tool, self.server = find_binaries()
        self.db_paths = [self.workdir / f"{name}.db" for name in self.db_names]
        self.ctl_path = self.sock_path.parent / "db.ctl"
        self.extra_args = list(extra_args)

    def _prepare(self) -> None:
        for db_path, schema_path in zip(self.db_paths, self.schema_paths, strict=True):
            with contextlib.suppress(FileNotFoundError):
                db_path.unlink()
            created = subprocess.run(
                [self.tool, "create", str(db_path), str(schema_path)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if created.returncode != 0:
                raise OvsdbServerError(
                    f"ovsdb-tool create {schema_path} failed (exit {created.returncode}): "
                    f"{created.stderr.strip()}"
                )

    def _command(self) -> list[str]:
        return [
            self.server,
            *map(str, self.db_paths),
            f"--remote=punix:{self.sock_path}",
            f"--unixctl={self.ctl_path}",
            "--no-chdir",
            *self.extra_args,
        ]
