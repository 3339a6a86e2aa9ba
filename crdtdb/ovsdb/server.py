"""The OVSDB JSON-RPC server on trio: listeners, connections, backpressure, probes and timers.

All protocol decisions are made by :class:`~crdtdb.ovsdb.core.ServerCore` and the codec in
:mod:`crdtdb.ovsdb.jsonrpc`; this module only moves bytes and time. One task reads each
connection and runs the core synchronously; one task writes what the socket did not take at
once (whoever queues a message writes it straight to a unix or tcp socket when the writer
has nothing in hand: no scheduler pass before a reply leaves). Changes from outside any
session (a replica merging peers' updates) are sent when the merging task yields, so a
batch of them costs a client one write, not one each. A client that does not read
its replies is disconnected once its unsent backlog passes ``max_backlog_bytes``, so it can
never stall the others.

Group commit: of a pipelined burst already received, up to ``Limits.flush_every`` requests
run back to back before anything is sent; a store that can (a replica: ``hold_commits``)
logs their commits with one write, and only once that write is done do their replies and
monitor updates go out (per session in the usual order: a transaction's updates before its
reply). Nothing awaits in between, so no other task sees a commit that is not durable.

Commits go to a database's plugin synchronously where it can take them so (``submit``: the
ovsdb relay forwards them at once, in the order they came, and answers from its connection's
reader); otherwise a task per commit awaits the plugin.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from crdtdb.consensus.commit import CommitOutcome, Failed
from crdtdb.engine.snapshot import Changeset
from crdtdb.errors import CrdtdbError
from crdtdb.ovsdb.core import Database, LockGate, PendingCommit, ServerCore, Session
from crdtdb.ovsdb.history import DEFAULT_MAX_TXNS
from crdtdb.ovsdb.jsonrpc import (
    CLOSED,
    NEED_DATA,
    JsonRpcConnection,
    LocalProtocolError,
    RemoteProtocolError,
    Request,
)

log = logging.getLogger(__name__)


class RemoteSyntaxError(CrdtdbError, ValueError):
    """A ``--remote`` string is not in ovsdb-server's syntax."""


@dataclass(frozen=True, slots=True)
class Remote:
    """A passive remote: ``punix:PATH``, ``ptcp:PORT[:IP]`` or ``pssl:PORT[:IP]``."""

    kind: str
    path: str | None = None
    port: int | None = None
    host: str = "0.0.0.0"

    @classmethod
    def parse(cls, text: str) -> Remote:
        kind, _, rest = text.partition(":")
        if kind == "punix":
            if not rest:
                raise RemoteSyntaxError(f"{text}: punix needs a path (punix:PATH)")
            return cls("punix", path=rest)
        if kind in ("ptcp", "pssl"):
            port_s, _, host = rest.partition(":")
            try:
                port = int(port_s) if port_s else 6640
            except ValueError:
                raise RemoteSyntaxError(f"{text}: bad port {port_s!r}") from None
            if not 0 <= port <= 65535:
                raise RemoteSyntaxError(f"{text}: port out of range")
            host = host.strip("[]") or "0.0.0.0"
            return cls(kind, port=port, host=host)
        raise RemoteSyntaxError(f"{text}: expected punix:PATH, ptcp:PORT[:IP] or "
                                "pssl:PORT[:IP]")

    def __str__(self) -> str:
        if self.kind == "punix":
            return f"punix:{self.path}"
        return f"{self.kind}:{self.port}:{self.host}"


@dataclass(frozen=True, slots=True)
class SslFiles:
    private_key: str
    certificate: str
    ca_cert: str

    def server_context(self) -> ssl.SSLContext:
        """Mutual TLS, as ovsdb-server requires: clients must present a certificate the CA
        signed."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_cert)
        ctx.load_cert_chain(self.certificate, self.private_key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(slots=True)
class Limits:
    """Bounds on what one client can make the server hold. Defaults are generous but finite."""

    max_message_bytes: int = 64 * 1024 * 1024
    max_backlog_bytes: int = 256 * 1024 * 1024
    #: Stop reading a client's requests while this much of its output is unsent (as
    #: ovsdb-server does), so a pipelining client gets backpressure, not unbounded buffering.
    pause_reading_bytes: int = 4 * 1024 * 1024
    #: Stop reading a client's requests while this many of its transactions wait for a
    #: consensus plugin (queued or committing), so a pipelining client cannot queue without
    #: bound. Waits blocked on a condition do not count (the client may need to cancel them).
    max_pending_commits: int = 1000
    #: How long a closing connection may take to flush the replies already queued for it.
    drain_timeout_s: float = 5.0
    receive_chunk_bytes: int = 256 * 1024
    #: Of requests already buffered (a pipelining client), handle at most this many before
    #: sending what they queued (and logging their commits: see the module docstring):
    #: fewer socket and log writes, each socket write waking a peer. 1 sends after every
    #: request. Well under a pipelining client's window: at the window itself (64, that of
    #: sims/bench_serve.py's client) the server ran the whole window before any reply left,
    #: so client and server took turns instead of overlapping. Single runs of that bench
    #: (quiet machine, after serve13): 64: 4.4-5.3k txn/s; 32: 5.6-7.8k; 24: 6.7-7.6k;
    #: 16: 6.2-7.2k; 8: 5.6-6.0k; three rounds each of 16 and 24: medians 6.4k and 6.2k.
    flush_every: int = 16
    #: tcp/ssl only: after this long without input, send an echo probe; disconnect after
    #: twice this long. 0 disables probes (ovsdb-server's default is 5 s on tcp).
    probe_interval_s: float = 5.0
    #: Transactions kept per database for monitor_cond_since resumes (fewer while they hold
    #: more atoms than the database: see crdtdb/ovsdb/history.py); 0 keeps none, as a
    #: standalone ovsdb-server (every resume is then a full dump).
    txn_history: int = DEFAULT_MAX_TXNS


@dataclass(eq=False)
class _Connection:
    session: Session
    codec: JsonRpcConnection
    stream: trio.abc.Stream
    peer: str
    probe: bool
    out: bytearray = field(default_factory=bytearray)
    wakeup: trio.Event = field(default_factory=trio.Event)
    #: Set whenever the writer has sent something (or has nothing left to send).
    progress: trio.Event = field(default_factory=trio.Event)
    sending: bool = False
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    last_input: float = 0.0
    closing_reason: str | None = None
    #: The socket's descriptor while it is open, for writes without the writer task (None
    #: for TLS: only the writer sends there).
    fd: int | None = None


class OvsdbServer:
    """A running server: use :func:`open_ovsdb_server`."""

    def __init__(self, core: ServerCore, limits: Limits):
        self.core = core
        self.limits = limits
        self._conns: dict[int, _Connection] = {}
        self._deadline_changed = trio.Event()
        #: Set while a flush is due when the running task yields (see _flush_soon).
        self._flush_wanted = trio.Event()
        self.listeners: list[trio.SocketListener | trio.SSLListener] = []
        self._unix_paths: list[Path] = []
        self.n_connections = 0
        self._nursery: trio.Nursery | None = None
        self.stopped = False
        #: Stores that take a burst's commits as a group (see Replica.hold_commits): held
        #: while a reader runs requests, released before anything is sent.
        self._holders = [db for db in core.databases.values()
                         if callable(getattr(db, "hold_commits", None))]

    # --- connections ----------------------------------------------------------------------

    async def _serve_stream(self, stream: trio.abc.Stream, probe: bool, where: str) -> None:
        peer = _peer_name(stream, where)
        conn = _Connection(self.core.open_session(), JsonRpcConnection(
            max_message_bytes=self.limits.max_message_bytes), stream, peer, probe)
        if isinstance(stream, trio.SocketStream):
            conn.fd = stream.socket.fileno()
        conn.last_input = trio.current_time()
        self._conns[conn.session.id] = conn
        self.n_connections += 1
        # (DEBUG, as ovsdb-server's: a CLI connects per command; ~2% of such a connection's
        # CPU went into these two lines at INFO. A disconnect with a reason stays INFO.)
        log.debug("%s: connected (session %d)", peer, conn.session.id)
        try:
            with conn.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, conn)
                    if probe and self.limits.probe_interval_s > 0:
                        nursery.start_soon(self._prober, conn)
                    await self._reader(conn)
                    # The client is gone or misbehaved: still deliver the replies to what it
                    # sent before (ovsdb-server does), within a bound.
                    with trio.move_on_after(self.limits.drain_timeout_s):
                        while conn.out or conn.sending:
                            await conn.progress.wait()
                    nursery.cancel_scope.cancel()
        finally:
            conn.fd = None
            self._conns.pop(conn.session.id, None)
            self.core.close_session(conn.session)
            self._flush()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            if conn.closing_reason:
                log.info("%s: disconnected (session %d): %s", peer, conn.session.id,
                         conn.closing_reason)
            else:
                log.debug("%s: disconnected (session %d)", peer, conn.session.id)

    def _must_pause(self, conn: _Connection) -> bool:
        return (len(conn.out) >= self.limits.pause_reading_bytes
                or self.core.pending_commits(conn.session) >= self.limits.max_pending_commits)

    async def _paused(self, conn: _Connection) -> None:
        """Until the client may send more: its replies are going out, and not too many of
        its transactions wait for a plugin."""
        while self._must_pause(conn):
            await conn.progress.wait()

    async def _reader(self, conn: _Connection) -> None:
        try:
            await self._read_requests(conn)
        finally:
            self._flush()  # what the last requests queued (a no-op when nothing is)

    async def _read_requests(self, conn: _Connection) -> None:
        """Handle requests as they arrive. Of a pipelined burst already buffered, up to
        ``flush_every`` are handled before their replies and updates go out together: one
        socket write per connection for them, not one per message (each wakes the peer),
        the better part of the server's own cost for small transactions."""
        batch = 0
        while True:
            if self._must_pause(conn):
                self._flush()
                await self._paused(conn)
            try:
                data = await conn.stream.receive_some(self.limits.receive_chunk_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                conn.closing_reason = f"receive failed: {exc}"
                return
            conn.last_input = trio.current_time()
            conn.codec.receive_data(data)
            session = conn.session
            pause_bytes = self.limits.pause_reading_bytes
            no_pending_allowed = self.limits.max_pending_commits <= 0
            while True:
                # What is already buffered waits too (a pipelined burst arrives at once).
                # (_must_pause asked only where it can say yes: its first test inline, its
                # second while transactions are pending; two calls less a request)
                if (len(conn.out) >= pause_bytes or session.triggers or no_pending_allowed) \
                        and self._must_pause(conn):
                    self._flush()
                    batch = 0
                    await self._paused(conn)
                try:
                    event = conn.codec.next_event()
                except RemoteProtocolError as exc:
                    conn.closing_reason = f"protocol error: {exc}"
                    log.warning("%s: %s; disconnecting", conn.peer, exc)
                    return
                if event is NEED_DATA:
                    break
                if event is CLOSED:
                    return
                for db in self._holders:
                    db.hold_commits()
                try:
                    reason = self.core.handle(conn.session, event)
                except Exception:
                    # A bug must cost one client its connection, never the server.
                    log.exception("%s: internal error handling %r", conn.peer, event)
                    conn.closing_reason = "internal error (logged)"
                    return
                if session.abandoned:
                    for request_id in session.abandoned:
                        conn.codec.abandon(request_id)
                    session.abandoned.clear()
                batch += 1
                if reason is not None:
                    conn.closing_reason = reason
                    log.warning("%s: %s; disconnecting", conn.peer, reason)
                    return
                if (batch >= self.limits.flush_every or self.core.commits
                        or self.core.waits_changed):
                    self._flush()
                    batch = 0
            # Nothing complete is buffered: send what the burst queued before waiting.
            self._flush()
            batch = 0
            if not data:
                return

    async def _writer(self, conn: _Connection) -> None:
        while True:
            await conn.wakeup.wait()
            conn.wakeup = trio.Event()
            while conn.out:
                chunk = bytes(conn.out)
                conn.out.clear()
                conn.sending = True
                try:
                    await conn.stream.send_all(chunk)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    conn.closing_reason = f"send failed: {exc}"
                    conn.cancel_scope.cancel()
                    return
                finally:
                    conn.sending = False
                conn.progress.set()
                conn.progress = trio.Event()

    async def _prober(self, conn: _Connection) -> None:
        """After ``probe_interval_s`` without input, send an echo request; if nothing at all
        arrives within another interval, drop the client (ovsdb-server's inactivity probe)."""
        interval = self.limits.probe_interval_s
        while True:
            await trio.sleep_until(conn.last_input + interval)
            if trio.current_time() - conn.last_input < interval:
                continue
            sent_at = trio.current_time()
            self._queue(conn, [Request("echo", "echo", [])])
            await trio.sleep_until(sent_at + interval)
            if conn.last_input < sent_at:
                idle = trio.current_time() - conn.last_input
                conn.closing_reason = f"no response to inactivity probe after {idle:.1f} s"
                log.warning("%s: %s; disconnecting", conn.peer, conn.closing_reason)
                conn.cancel_scope.cancel()
                return

    def _queue(self, conn: _Connection, events: list[Any]) -> None:
        for ev in events:
            try:
                conn.out += conn.codec.send(ev)
            except LocalProtocolError:
                log.exception("%s: cannot encode %r; disconnecting", conn.peer, ev)
                conn.closing_reason = "internal error (logged)"
                conn.cancel_scope.cancel()
                return
        if len(conn.out) > self.limits.max_backlog_bytes:
            conn.closing_reason = (f"client is not reading: {len(conn.out)} bytes of replies "
                                   f"backlogged (limit {self.limits.max_backlog_bytes})")
            log.warning("%s: %s; disconnecting", conn.peer, conn.closing_reason)
            conn.out.clear()
            conn.cancel_scope.cancel()
            return
        if conn.fd is not None and not conn.sending:
            # Straight to the socket from this task (the writer is not in send_all, so
            # nothing can interleave): waking the writer costs a scheduler pass first.
            try:
                sent = os.write(conn.fd, conn.out)
            except OSError:  # full (BlockingIOError), or broken: the writer finds out
                sent = 0
            if sent:
                del conn.out[:sent]
                conn.progress.set()
                conn.progress = trio.Event()
            if not conn.out:
                return
        conn.wakeup.set()

    def publish(self, db_name: str, changeset: Changeset) -> None:
        """A change from outside any session: notify monitors and retry waits now; send
        once the caller's turn ends (see ``_flush_soon``)."""
        with _logged(f"publishing a change of {db_name}"):
            self.core.publish(db_name, changeset)
        self._flush_soon()

    def _flush_soon(self) -> None:
        """Flush when the running task next yields, not now: changes merged from peers come
        in batches (a hub merges a frame per leaf and change without yielding), and
        flushing after each sends a client one write, and a wakeup, per change. The
        notifications and their order are the same; the first flush of any kind sends
        them (a reader's before its next reply, so no reply overtakes them)."""
        if self._nursery is None:
            self._flush()
            return
        if not self._flush_wanted.is_set():
            self._flush_wanted.set()

    async def _flusher(self) -> None:
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            self._flush()

    def _release(self) -> None:
        """Make held commits durable before any reply or update tells of them. If that
        fails, nothing queued may go out (it could tell of a commit that is not durable):
        every session with something queued is disconnected, as the committing client
        would have been."""
        for db in self._holders:
            try:
                db.release_commits()
            except Exception as exc:
                log.exception("%s: held commits could not be made durable",
                              getattr(db, "name", "?"))
                for conn in list(self._conns.values()):
                    if conn.session.outbox:
                        conn.session.outbox.clear()
                        conn.closing_reason = f"commit failed: {exc}"
                        conn.cancel_scope.cancel()

    def _flush(self) -> None:
        """Encode every session's queued messages (a commit can address many sessions),
        once the commits they tell of are durable."""
        self._release()
        for conn in list(self._conns.values()):
            if conn.session.outbox:
                self._queue(conn, conn.session.drain())
        if self.core.waits_changed:
            self.core.waits_changed = False
            self._deadline_changed.set()
        if self.core.commits:
            commits, self.core.commits = self.core.commits, []
            assert self._nursery is not None, "commits need a running server"
            for pending in commits:
                if not self._submit(pending):
                    self._nursery.start_soon(self._commit, pending)

    def _submit(self, pending: PendingCommit) -> bool:
        """Hand a transaction to a plugin that takes it without a task (see ``submit`` in
        crdtdb.consensus.database); False if it did not."""
        submit = getattr(self.core.databases[pending.request.db_name], "submit", None)
        if submit is None:
            return False
        try:
            return bool(submit(pending.request,
                               lambda result: self._commit_finished(pending, result)))
        except Exception:
            self._commit_finished(pending, self._plugin_failed(pending))
            return True

    async def _commit(self, pending: PendingCommit) -> None:
        """Hand one transaction to its database's consensus plugin (which retries on its own
        while the cluster is unavailable, as ovsdb-server keeps a transaction pending through
        a Raft election)."""
        db: Any = self.core.databases[pending.request.db_name]
        try:
            result: CommitOutcome = await db.commit(pending.request)
        except Exception:
            result = self._plugin_failed(pending)
        self._commit_finished(pending, result)

    @staticmethod
    def _plugin_failed(pending: PendingCommit) -> Failed:
        log.exception("%s: commit of %r failed", pending.request.db_name,
                      pending.trigger.request.id)
        return Failed({"error": "internal error",
                       "details": "commit failed in the consensus plugin (logged)"})

    def _commit_finished(self, pending: PendingCommit, result: CommitOutcome) -> None:
        if self.stopped:
            return  # a plugin answering after the server stopped: nobody to tell
        with _logged("finishing a commit"):
            self.core.commit_finished(pending, result)
        self._flush()

    def lock_changed(self, name: str, held: bool) -> None:
        """From the lock gate: this node took or lost ``name`` cluster-wide."""
        with _logged(f"lock {name} changing hands"):
            self.core.lock_changed(name, held)
        self._flush()

    async def _timers(self) -> None:
        """Complete waits whose timeout expired."""
        while True:
            deadline = self.core.next_deadline_ms()
            self._deadline_changed = trio.Event()
            at = math.inf if deadline is None else deadline / 1000
            with trio.move_on_at(at):
                await self._deadline_changed.wait()
                continue
            with _logged("running timers"):
                self.core.run_timers()
            self._flush()

    # --- listeners ------------------------------------------------------------------------

    async def _listen(self, remote: Remote, ssl_files: SslFiles | None,
                      nursery: trio.Nursery) -> None:
        if remote.kind == "punix":
            assert remote.path is not None
            path = Path(remote.path)
            if path.exists() or path.is_symlink():
                path.unlink()
            path.parent.mkdir(parents=True, exist_ok=True)
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            # Bind and listen under a temporary name, then rename: the socket appears only
            # once it accepts connections, so a client that waits for the file never races.
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            try:  # (until serve_listeners owns it, the socket is closed here: a bad path,
                # a bind cancelled)
                if tmp.exists():
                    tmp.unlink()
                await sock.bind(str(tmp))
                os.chmod(tmp, 0o770)
                sock.listen(128)
                os.replace(tmp, path)
            except BaseException:
                sock.close()
                raise
            listener: Any = trio.SocketListener(sock)
            probe = False
        else:
            context = None
            if remote.kind == "pssl":  # (before listening: a bad key opens no socket)
                if ssl_files is None:
                    raise RemoteSyntaxError(f"{remote}: needs --private-key, --certificate "
                                            "and --ca-cert")
                context = ssl_files.server_context()
            listeners = await trio.open_tcp_listeners(remote.port or 0, host=remote.host)
            # A name may resolve to several addresses; ovsdb-server listens on the first.
            listener = listeners[0]
            for extra in listeners[1:]:
                extra.socket.close()
            probe = True
            if context is not None:
                listener = trio.SSLListener(listener, context)
        self.listeners.append(listener)
        if remote.kind == "punix":
            self._unix_paths.append(Path(remote.path))  # type: ignore[arg-type]
        log.info("listening on %s", self.address_of(listener, remote))

        where = self.address_of(listener, remote)

        async def handler(stream: trio.abc.Stream) -> None:
            try:
                await self._serve_stream(stream, probe, where)
            except Exception:
                # A bug must cost one client its connection, never the server.
                log.exception("%s: internal error; connection dropped", where)

        nursery.start_soon(trio.serve_listeners, handler, [listener])

    @staticmethod
    def address_of(listener: Any, remote: Remote) -> str:
        if remote.kind == "punix":
            return f"unix:{remote.path}"
        inner = listener.transport_listener if isinstance(listener, trio.SSLListener) \
            else listener
        host, port = inner.socket.getsockname()[:2]
        return f"{'ssl' if remote.kind == 'pssl' else 'tcp'}:{host}:{port}"

    def statistics(self) -> dict[str, int]:
        return {"connections": len(self._conns), "connections_total": self.n_connections,
                "backlog_bytes": sum(len(c.out) for c in self._conns.values()),
                **self.core.statistics()}


@asynccontextmanager
async def open_ovsdb_server(databases: Mapping[str, Database], remotes: list[Remote], *,
                            ssl_files: SslFiles | None = None, limits: Limits | None = None,
                            lock_gate: LockGate | None = None,
                            ) -> AsyncIterator[OvsdbServer]:
    """Serve ``databases`` on ``remotes`` until the block exits (then every client is
    disconnected). ``lock_gate`` makes OVSDB locks cluster-wide (it must call
    :meth:`OvsdbServer.lock_changed`)."""
    limits = limits or Limits()
    # (the run's clock, looked up once: trio.current_time() finds it at every call, and
    # the core asks for the time once a transaction)
    clock_time = trio.lowlevel.current_clock().current_time
    core = ServerCore(databases, now_ms=lambda: int(clock_time() * 1000),
                      lock_gate=lock_gate, txn_history=limits.txn_history)
    server = OvsdbServer(core, limits)
    gate_was = getattr(lock_gate, "on_change", None)
    if lock_gate is not None:
        lock_gate.on_change = server.lock_changed  # type: ignore[attr-defined]
    # Stores that change on their own (a replica merging a peer's update) say so.
    feeds: list[tuple[Any, Any]] = []
    try:  # (the feeds come off again however this ends: a remote that fails to open too)
        for name, db in databases.items():
            add = getattr(db, "add_listener", None)
            if add is not None:
                def on_change(ev: Any, name: str = name) -> None:
                    if not ev.local:
                        server.publish(name, ev.changes)
                add(on_change)
                feeds.append((db, on_change))
        async with trio.open_nursery() as nursery:
            server._nursery = nursery
            for remote in remotes:
                await server._listen(remote, ssl_files, nursery)
            nursery.start_soon(server._timers)
            nursery.start_soon(server._flusher)
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for path in server._unix_paths:
            path.unlink(missing_ok=True)
        for db, fn in feeds:
            db.remove_listener(fn)
        if lock_gate is not None:  # (a gate outliving this server calls into it no more)
            lock_gate.on_change = gate_was  # type: ignore[attr-defined]
        server.stopped = True


@contextmanager
def _logged(what: str) -> Iterator[None]:
    """Outside a session's reader (which drops just that client), a bug must not take the
    whole server down: log it and carry on."""
    try:
        yield
    except Exception:
        log.exception("internal error while %s", what)


def _peer_name(stream: trio.abc.Stream, where: str) -> str:
    """"tcp:IP:PORT" of a tcp/ssl client; unix clients have no name, so the socket's."""
    inner: Any = stream
    if isinstance(stream, trio.SSLStream):
        inner = stream.transport_stream
    sock = getattr(inner, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        peer = None
    if isinstance(peer, tuple):
        return f"{'ssl' if isinstance(stream, trio.SSLStream) else 'tcp'}:{peer[0]}:{peer[1]}"
    return where
