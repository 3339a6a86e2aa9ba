"""Run a real ovsdb-server for tests, and talk to it.

``OvsdbServer`` creates a standalone database file from a schema with ``ovsdb-tool create``
and serves it with ``ovsdb-server`` on a unix socket (in the foreground, as a child process).
``OvsdbClient`` is a small synchronous JSON-RPC client for that socket.

Both are deliberately plain (no asyncio, no trio, no threads) so that a failing test shows
exactly one request and one reply.  Every wait is bounded.

A fresh database and server costs about 20 ms (``ovsdb-tool create`` plus the server start),
so the differential tests start one per corpus case rather than emptying a shared one.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Self

#: Where the Debian packages install the binaries (ovsdb-server lives in /usr/sbin, which is
#: not always on a user's PATH).
_EXTRA_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")

#: The OVN_Southbound schema, from the Debian ovn-common package.
SB_SCHEMA_CANDIDATES = (Path("/usr/share/ovn/ovn-sb.ovsschema"),)


#: One .ovsschema path, or several.
SchemaPaths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def find_sb_schema() -> Path | None:
    for candidate in SB_SCHEMA_CANDIDATES:
        if candidate.is_file():
            return candidate
    return None


class OvsdbBinariesMissing(RuntimeError):
    """ovsdb-server or ovsdb-tool cannot be found."""


class OvsdbServerError(RuntimeError):
    """ovsdb-server or ovsdb-tool failed, or the server did not come up in time."""


class OvsdbRpcError(RuntimeError):
    """A JSON-RPC level error: the reply had a non-null "error" member (and no "result")."""

    def __init__(self, method: str, error: Any) -> None:
        super().__init__(f"{method}: {error!r}")
        self.method = method
        self.error = error


def die_with_parent() -> None:
    """In a child process: get SIGKILL when the parent dies (Linux ``PR_SET_PDEATHSIG``).

    Test and benchmark runs that are killed (a timeout, Ctrl-C) must not leave servers
    behind. Elsewhere this does nothing.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def find_binary(name: str) -> str | None:
    """Return the path of ``name`` (PATH first, then the usual sbin/bin directories)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_binaries() -> tuple[str, str]:
    """Return the paths of (ovsdb-tool, ovsdb-server) or raise OvsdbBinariesMissing."""
    tool = find_binary("ovsdb-tool")
    server = find_binary("ovsdb-server")
    missing = [n for n, p in (("ovsdb-tool", tool), ("ovsdb-server", server)) if p is None]
    if missing:
        raise OvsdbBinariesMissing(
            f"{' and '.join(missing)} not found (install the Debian package "
            "openvswitch-common / openvswitch-switch)"
        )
    assert tool is not None and server is not None
    return tool, server


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


class StartedProcesses:
    """``with X(...) as x``: start on entry (closing whatever did start if that fails),
    close on exit. Subclasses define ``start`` and ``close``."""

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ChildServer(StartedProcesses):
    """A server in a child process on a unix socket: start (bounded wait, log tail on
    failure), stop (SIGTERM, then SIGKILL), clients. Subclasses give the command line."""

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


class OvsdbServer(ChildServer):
    """A standalone ovsdb-server serving one new, empty database per schema on one unix
    socket, as a context manager::

        with OvsdbServer(schema_path, tmp_path) as server, server.client() as client:
            client.transact(server.db_name, [{"op": "comment", "comment": "hi"}])

    ``workdir`` holds the database files and the log. ``reset()`` throws the databases away
    and starts a new server on new, empty ones.
    """

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

    def reset(self) -> None:
        """Start over with new, empty databases (and a new server process)."""
        self.stop()
        self.start()


class OvsdbClient:
    """A minimal synchronous OVSDB JSON-RPC client over a unix socket.

    ovsdb-server sends a stream of concatenated JSON objects with no delimiter, so replies
    are cut out of a buffer with ``json.JSONDecoder.raw_decode``.  Notifications (messages
    with a "method" and a null id: update, locked, ...) are ignored; an "echo" request from
    the server is answered.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._buf = ""
        self._bytes = b""
        self._decoder = json.JSONDecoder()
        self._ids = itertools.count()

    def __enter__(self) -> OvsdbClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # -- framing -----------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(msg, separators=(",", ":")).encode())

    def _messages(self) -> Iterator[dict[str, Any]]:
        """Yield complete messages as they arrive (bounded by the socket timeout)."""
        deadline = time.monotonic() + self.timeout
        while True:
            self._buf = self._buf.lstrip()
            if self._buf:
                try:
                    msg, end = self._decoder.raw_decode(self._buf)
                except json.JSONDecodeError:
                    pass  # incomplete; read more
                else:
                    self._buf = self._buf[end:]
                    yield msg
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete reply from ovsdb-server in {self.timeout} s")
            self._sock.settimeout(remaining)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("ovsdb-server closed the connection")
            # Decode incrementally: a multi-byte UTF-8 character may straddle two reads.
            self._bytes += chunk
            try:
                text = self._bytes.decode()
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data":
                    raise
                text = self._bytes[: exc.start].decode()
                self._bytes = self._bytes[exc.start :]
            else:
                self._bytes = b""
            self._buf += text

    # -- requests ----------------------------------------------------------------------

    def request(self, method: str, params: list[Any]) -> dict[str, Any]:
        """Send a request and return the whole reply object ({"id", "result", "error"})."""
        request_id = next(self._ids)
        self._send({"method": method, "params": params, "id": request_id})
        for msg in self._messages():
            if "method" in msg:
                if msg["method"] == "echo" and msg.get("id") is not None:
                    self._send({"id": msg["id"], "result": msg.get("params", []), "error": None})
                continue  # a notification (update, locked, ...): not ours
            if msg.get("id") == request_id:
                return msg
        raise AssertionError("unreachable")  # _messages() only ends by raising

    def call(self, method: str, params: list[Any]) -> Any:
        """request() and return "result"; raise OvsdbRpcError on a JSON-RPC level error."""
        reply = self.request(method, params)
        if reply.get("error") is not None or "result" not in reply:
            raise OvsdbRpcError(method, reply.get("error"))
        return reply["result"]

    def transact(self, db_name: str, ops: list[Any]) -> list[Any]:
        """Run one transaction; return its "result" array (one element per operation, plus
        the commit error, if any)."""
        result = self.call("transact", [db_name, *ops])
        if not isinstance(result, list):
            raise OvsdbRpcError("transact", f"result is not an array: {result!r}")
        return result

    def get_schema(self, db_name: str) -> dict[str, Any]:
        return self.call("get_schema", [db_name])

    def list_dbs(self) -> list[str]:
        return self.call("list_dbs", [])
