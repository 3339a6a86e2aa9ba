"""An async OVSDB JSON-RPC client on trio, built on the sans-I/O codec.

::

    async with open_ovsdb_client("tcp:127.0.0.1:6641,tcp:127.0.0.1:6642") as client:
        results = await client.transact("OVN_Northbound", [{"op": "select", ...}])
        async for note in client.notifications():   # update2/update3, locked, stolen...
            ...

Why it looks the way it does:

* One reader task owns the receive side, one writer task the send side, so several tasks
  may call concurrently (replies are matched by id) and a cancelled call never leaves half
  a message on the wire (callers only append whole messages to the writer's buffer). A
  cancelled ``transact`` also sends ovsdb-server's ``cancel`` notification, so a transaction
  blocked in a ``wait`` does not linger server-side; its reply, if one still comes, is
  dropped. A message goes straight to the socket from the task that queues it when the
  writer has nothing in hand (no scheduler pass before it leaves); the writer sends what
  the socket did not take.
* :meth:`OvsdbClient.send_request` is a call without a waiting task: its callback gets the
  reply from the reader (a relay answers its own client from there).
* The server's ``echo`` probes are answered by the reader at once: ovsdb-server drops tcp
  clients that stay silent through two probe intervals. The client probes the server too,
  as OVS clients do (tcp only by default), so a hung server becomes :class:`ConnectionLost`
  instead of a call that never returns.
* Notifications go to a bounded buffer (``max_queued_notifications``). A client that does
  not read them is disconnected with :class:`NotificationOverflow` when it is full: never
  unbounded memory, never a silently lost update (which would corrupt a monitor's replica).
  Alternatively an ``on_notification`` callback handles each one synchronously, in the
  reader, before any later message is looked at: once a call's reply is in, every
  notification the server sent before it has been handled (what a replica that must show a
  transaction's own updates before its reply needs), without a task switch in between.
* A dropped connection is an ordinary event for a client, not a crash: pending and later
  calls raise :class:`ConnectionLost`, the notification iterator raises it after the
  buffered notifications, and the ``async with`` body goes on. Reconnecting (and resuming
  monitors with ``monitor_cond_since``) is the caller's policy.
* ``remote`` may list several servers (a Raft cluster's members); they are tried in order
  and the first that accepts the connection is used. Which member is the leader is a
  database question: see :func:`is_leader`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from crdtdb.errors import CrdtdbError
from crdtdb.ovsdb.jsonrpc import (
    CLOSED,
    DEFAULT_MAX_MESSAGE_BYTES,
    NEED_DATA,
    ErrorReply,
    JsonRpcConnection,
    Notification,
    RemoteProtocolError,
    Reply,
    Request,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_MAX_QUEUED_NOTIFICATIONS",
    "DEFAULT_PROBE_INTERVAL_S",
    "ZERO_UUID",
    "BadReply",
    "ConnectFailed",
    "ConnectionLost",
    "InvalidRemote",
    "Notification",
    "NotificationOverflow",
    "OvsdbClient",
    "Remote",
    "ReplyCallback",
    "RpcError",
    "TransactionFailed",
    "UnknownDatabase",
    "is_leader",
    "open_ovsdb_client",
    "parse_remotes",
]

log = logging.getLogger(__name__)

#: Per remote tried.
DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
#: OVS's default inactivity probe for tcp sessions.
DEFAULT_PROBE_INTERVAL_S: Final = 5.0
#: About one large monitor's worth of changes queued before a non-reader is cut off.
DEFAULT_MAX_QUEUED_NOTIFICATIONS: Final = 10_000
#: OVS's default tcp port for OVSDB.
DEFAULT_TCP_PORT: Final = 6640
#: ``monitor_cond_since`` with this id asks for a full dump.
ZERO_UUID: Final = "00000000-0000-0000-0000-000000000000"
#: The id OVS gives its echo probes; their replies are dropped.
_PROBE_ID: Final = "echo"
_RECEIVE_CHUNK_BYTES: Final = 256 * 1024


# -- errors ---------------------------------------------------------------------------------


class InvalidRemote(CrdtdbError, ValueError):
    """A remote string is not ``unix:PATH`` or ``tcp:IP[:PORT]`` (comma-separated)."""


class ConnectFailed(CrdtdbError, ConnectionError):
    """None of the remotes accepted a connection; ``failures`` says why, per remote."""

    def __init__(self, failures: Sequence[tuple[str, BaseException]]):
        self.failures = list(failures)
        super().__init__(
            "could not connect to any remote: "
            + "; ".join(f"{remote}: {exc}" for remote, exc in self.failures)
        )


class ConnectionLost(CrdtdbError, ConnectionError):
    """The connection dropped (EOF, socket error, protocol error, unanswered probe); the
    outcome of calls still pending is unknown."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


class NotificationOverflow(ConnectionLost):
    """The notification buffer was full: the client disconnected rather than drop an
    update or grow without bound."""


class RpcError(CrdtdbError):
    """The server answered with a JSON-RPC error (``{"id":..,"error":..}``): ``error`` is
    its value verbatim (a string such as ``"unknown method"`` or an OVSDB error object)."""

    def __init__(self, method: str, error: Any):
        self.method = method
        self.error = error
        super().__init__(f"{method}: {error!r}")


class TransactionFailed(CrdtdbError):
    """A transaction's results hold an OVSDB error object (``transact(check=True)``):
    ``error`` is the first one, ``results`` the whole array."""

    def __init__(self, error: Mapping[str, Any], results: list[Any]):
        self.error = dict(error)
        self.results = results
        details = error.get("details")
        super().__init__(f"{error.get('error')}: {details}" if details else error.get("error"))


class BadReply(CrdtdbError):
    """A reply's result does not have the shape its method promises."""


class UnknownDatabase(CrdtdbError, LookupError):
    """The server's ``_Server`` database has no row for this database."""


# -- remotes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Remote:
    """An active remote: ``unix:PATH`` or ``tcp:IP[:PORT]`` (IPv6 in brackets)."""

    kind: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: str) -> Remote:
        kind, _, rest = text.strip().partition(":")
        if kind == "unix":
            if not rest:
                raise InvalidRemote(f"{text!r}: unix needs a path (unix:PATH)")
            return cls("unix", path=rest)
        if kind == "tcp":
            if rest.startswith("["):
                host, bracket, port_s = rest[1:].partition("]")
                if not bracket or (port_s and not port_s.startswith(":")):
                    raise InvalidRemote(f"{text!r}: bad IPv6 address")
                port_s = port_s[1:]
            else:
                host, _, port_s = rest.partition(":")
            if not host:
                raise InvalidRemote(f"{text!r}: tcp needs an address (tcp:IP[:PORT])")
            try:
                port = int(port_s) if port_s else DEFAULT_TCP_PORT
            except ValueError:
                raise InvalidRemote(f"{text!r}: bad port {port_s!r}") from None
            if not 0 < port <= 65535:
                raise InvalidRemote(f"{text!r}: port out of range")
            return cls("tcp", host=host, port=port)
        raise InvalidRemote(f"{text!r}: expected unix:PATH or tcp:IP[:PORT] (ssl is not "
                            "supported)")

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_remotes(text: str) -> list[Remote]:
    """``"tcp:a:1,tcp:b:2"`` -> remotes, in order (the syntax OVS clients take)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise InvalidRemote("no remote given")
    return [Remote.parse(p) for p in parts]


async def _connect(
    remotes: Sequence[Remote], connect_timeout_s: float
) -> tuple[trio.SocketStream, Remote]:
    failures: list[tuple[str, BaseException]] = []
    for remote in remotes:
        with trio.move_on_after(connect_timeout_s):
            try:
                if remote.kind == "unix":
                    assert remote.path is not None
                    stream = await trio.open_unix_socket(remote.path)
                else:
                    assert remote.host is not None and remote.port is not None
                    stream = await trio.open_tcp_stream(remote.host, remote.port)
            except OSError as exc:
                failures.append((str(remote), exc))
                continue
            return stream, remote
        failures.append((str(remote), TimeoutError(f"no connection in {connect_timeout_s} s")))
    raise ConnectFailed(failures)


# -- the client -----------------------------------------------------------------------------


#: What :meth:`OvsdbClient.send_request` calls back with: the reply, or None when the
#: connection was lost or closed first (the request's outcome is then unknown).
ReplyCallback = Callable[[Reply | ErrorReply | None], None]


@dataclass(eq=False, slots=True)
class _Call:
    method: str
    #: Set for a call a task awaits (:meth:`OvsdbClient.call`)...
    done: trio.Event | None = None
    reply: Reply | ErrorReply | None = None
    #: ... or the callback of :meth:`OvsdbClient.send_request`.
    on_reply: ReplyCallback | None = None


class OvsdbClient:
    """A connected client: use :func:`open_ovsdb_client`, which runs its tasks."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        remote: Remote,
        *,
        probe_interval_s: float,
        max_message_bytes: int,
        max_queued_notifications: int,
        on_notification: Callable[[Notification], None] | None = None,
    ) -> None:
        if max_queued_notifications < 1:
            raise ValueError("max_queued_notifications must be at least 1")
        #: The remote this client is connected to (one of those it was given).
        self.remote = remote
        self.probe_interval_s = probe_interval_s
        self._stream = stream
        self._codec = JsonRpcConnection(max_message_bytes=max_message_bytes)
        self._next_id = 0
        self._calls: dict[int, _Call] = {}
        self._out = bytearray()
        self._out_ready = trio.Event()
        #: The socket's descriptor while it is open, for writes from the calling task
        #: (None for other streams: the writer task sends everything).
        self._fd: int | None = (stream.socket.fileno()
                                if isinstance(stream, trio.SocketStream) else None)
        #: The writer is in send_all(): nothing else may write to the socket meanwhile.
        self._writing = False
        self._notes_send, self._notes_recv = trio.open_memory_channel[Notification](
            max_queued_notifications
        )
        self._on_notification = on_notification
        self._lost: ConnectionLost | None = None
        self._closed = False
        self._down = trio.Event()
        self._tasks = trio.CancelScope()
        self._last_input = trio.current_time()
        #: Notifications received so far (queued or read): a reader that counts what it
        #: read can tell when it has seen every notification sent before some reply.
        self.notifications_received = 0

    # -- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._lost is None and not self._closed

    @property
    def lost(self) -> ConnectionLost | None:
        """Why the connection dropped, if it did."""
        return self._lost

    # -- calls -----------------------------------------------------------------------------

    async def call(self, method: str, params: Sequence[Any]) -> Any:
        """Send a request and return its result. Raises :class:`RpcError` for an error
        reply, :class:`ConnectionLost` if the connection drops first,
        ``trio.ClosedResourceError`` after :meth:`aclose`."""
        self._check_usable()
        request_id = self._next_id
        data = self._codec.send(Request(request_id, method, list(params)))
        self._next_id += 1
        done = trio.Event()
        call = _Call(method, done)
        self._calls[request_id] = call
        self._queue(data)
        try:
            await done.wait()
        except BaseException:
            if self._calls.pop(request_id, None) is not None and method == "transact":
                self._send_nowait(Notification("cancel", [request_id]))
            raise
        reply = call.reply
        if reply is None:
            self._check_usable()
            raise AssertionError("a call woke up without a reply on a live connection")
        if isinstance(reply, ErrorReply):
            raise RpcError(method, reply.error)
        return reply.result

    def send_request(self, method: str, params: Sequence[Any], on_reply: ReplyCallback) -> None:
        """Send a request and return at once: ``on_reply`` gets its reply from the reader
        (after every notification the server sent before it, as :meth:`call`'s caller
        would), or None if the connection is lost or closed first. For a caller that must
        not wait for a task switch; ``on_reply`` must not block, and what it raises is
        logged. Raises like :meth:`call` if the connection is already unusable."""
        self._check_usable()
        request_id = self._next_id
        data = self._codec.send(Request(request_id, method, list(params)))
        self._next_id += 1
        self._calls[request_id] = _Call(method, on_reply=on_reply)
        self._queue(data)

    async def transact(
        self, db: str, ops: Sequence[Mapping[str, Any]], *, check: bool = False
    ) -> list[Any]:
        """Run one transaction; return its results (one per operation, plus a commit
        error if any). With ``check``, raise :class:`TransactionFailed` if any failed."""
        results = await self.call("transact", [db, *ops])
        if not isinstance(results, list):
            raise BadReply(f"transact: result is not an array: {results!r}")
        if check:
            for result in results:
                if isinstance(result, dict) and "error" in result:
                    raise TransactionFailed(result, results)
        return results

    async def get_schema(self, db: str) -> dict[str, Any]:
        schema = await self.call("get_schema", [db])
        if not isinstance(schema, dict):
            raise BadReply(f"get_schema: result is not an object: {schema!r}")
        return schema

    async def list_dbs(self) -> list[str]:
        names = await self.call("list_dbs", [])
        if not isinstance(names, list):
            raise BadReply(f"list_dbs: result is not an array: {names!r}")
        return names

    async def echo(self, *params: Any) -> list[Any]:
        return await self.call("echo", list(params))

    async def monitor_cond(
        self, db: str, monitor_id: Any, requests: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Start a conditional monitor; return the initial ``table-updates2``. Changes
        arrive as ``update2`` notifications ``[monitor_id, table-updates2]``."""
        updates = await self.call("monitor_cond", [db, monitor_id, requests])
        if not isinstance(updates, dict):
            raise BadReply(f"monitor_cond: result is not an object: {updates!r}")
        return updates

    async def monitor_cond_since(
        self,
        db: str,
        monitor_id: Any,
        requests: Mapping[str, Any],
        last_txn_id: str = ZERO_UUID,
    ) -> tuple[bool, str, dict[str, Any]]:
        """Start (or resume) a monitor from ``last_txn_id``: ``(found, last_txn_id,
        updates)``. ``found`` means ``updates`` holds exactly the changes since that
        transaction; otherwise it is a full dump. Changes then arrive as ``update3``
        notifications ``[monitor_id, txn_id, table-updates2]``."""
        reply = await self.call("monitor_cond_since", [db, monitor_id, requests, last_txn_id])
        if (
            not isinstance(reply, list)
            or len(reply) != 3
            or not isinstance(reply[0], bool)
            or not isinstance(reply[1], str)
            or not isinstance(reply[2], dict)
        ):
            raise BadReply(f"monitor_cond_since: result is not [found, id, updates]: {reply!r}")
        return reply[0], reply[1], reply[2]

    async def monitor_cond_change(
        self, monitor_id: Any, new_monitor_id: Any, requests: Mapping[str, Any]
    ) -> None:
        """Change a monitor's conditions (and id); the changes arrive as notifications."""
        await self.call("monitor_cond_change", [monitor_id, new_monitor_id, requests])

    async def monitor_cancel(self, monitor_id: Any) -> None:
        await self.call("monitor_cancel", [monitor_id])

    async def lock(self, name: str) -> bool:
        """Ask for a lock: True if acquired now; otherwise the request is queued and a
        ``locked`` notification ``[name]`` comes when it is granted."""
        return _locked(await self.call("lock", [name]), "lock")

    async def steal(self, name: str) -> bool:
        """Take a lock from its holder (who gets a ``stolen`` notification); always True."""
        return _locked(await self.call("steal", [name]), "steal")

    async def unlock(self, name: str) -> None:
        """Release (or stop waiting for) a lock."""
        await self.call("unlock", [name])

    # -- notifications ---------------------------------------------------------------------

    async def next_notification(self) -> Notification:
        """The next notification from the server (``update2``, ``update3``, ``locked``,
        ``stolen``, ``monitor_canceled``...). Those received before a drop are still
        delivered; then :class:`ConnectionLost` (or ``trio.ClosedResourceError`` after
        :meth:`aclose`)."""
        try:
            return await self._notes_recv.receive()
        except trio.EndOfChannel:
            self._check_usable()
            raise AssertionError("notification channel closed on a live connection") from None

    def next_notification_nowait(self) -> Notification:
        """The next queued notification, or ``trio.WouldBlock`` if none is queued. Every
        notification the server sent before a reply is queued by the time the reply's call
        returns, so a caller can read exactly what came before it."""
        try:
            return self._notes_recv.receive_nowait()
        except trio.EndOfChannel:
            self._check_usable()
            raise AssertionError("notification channel closed on a live connection") from None

    def notifications(self) -> AsyncIterator[Notification]:
        """``async for note in client.notifications()``: ends after :meth:`aclose`, raises
        :class:`ConnectionLost` after a drop. Several iterators share one queue. (With an
        ``on_notification`` callback nothing is queued here.)"""
        return _Notifications(self)

    async def wait_disconnected(self) -> None:
        """Until the connection is lost (see :attr:`lost`) or closed."""
        await self._down.wait()

    # -- lifetime --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection. Pending and later calls raise ``trio.ClosedResourceError``;
        the server drops what this session held (locks, monitors)."""
        if not self._closed:
            self._closed = True
            self._shut_down()
        self._fd = None
        await trio.aclose_forcefully(self._stream)

    async def _run(self) -> None:
        """The connection's tasks; returns when the connection is lost or closed."""
        try:
            with self._tasks:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._writer)
                    if self.probe_interval_s > 0:
                        nursery.start_soon(self._prober)
        finally:
            self._fd = None
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    # -- internals -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the OVSDB client was closed")
        if self._lost is not None:
            raise type(self._lost)(self._lost.reason) from self._lost.__cause__

    def _lose(self, error: ConnectionLost, cause: BaseException | None = None) -> None:
        if self._lost is not None or self._closed:
            return
        error.__cause__ = cause
        self._lost = error
        log.info("%s: connection lost: %s", self.remote, error.reason)
        self._shut_down()

    def _shut_down(self) -> None:
        """Wake every pending call (they see why), end the notifications, stop the tasks."""
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if call.on_reply is not None:
                self._call_back(call.on_reply, None)
            elif call.done is not None:
                call.done.set()
        self._notes_send.close()
        self._tasks.cancel()
        self._down.set()

    def _queue(self, data: bytes) -> None:
        if not self._out and not self._writing and self._fd is not None:
            # Straight to the socket from this task: waking the writer would cost a pass of
            # the scheduler before the message leaves.
            try:
                sent = os.write(self._fd, data)
            except OSError:  # full (BlockingIOError), or broken: the writer finds out
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._out += data
        self._out_ready.set()

    def _call_back(self, on_reply: ReplyCallback, reply: Reply | ErrorReply | None) -> None:
        try:
            on_reply(reply)
        except Exception:
            log.exception("%s: a reply callback failed", self.remote)

    def _send_nowait(self, event: Request | Notification | Reply | ErrorReply) -> None:
        if self.connected:
            self._queue(self._codec.send(event))

    async def _writer(self) -> None:
        while True:
            if not self._out:
                self._out_ready = trio.Event()
                await self._out_ready.wait()
                continue
            data = bytes(self._out)
            self._out.clear()
            self._writing = True
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._lose(ConnectionLost(f"send failed: {exc}"), exc)
                return
            finally:
                self._writing = False

    async def _reader(self) -> None:
        while True:
            try:
                data = await self._stream.receive_some(_RECEIVE_CHUNK_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._lose(ConnectionLost(f"receive failed: {exc}"), exc)
                return
            self._last_input = trio.current_time()
            self._codec.receive_data(data)
            while True:
                try:
                    event = self._codec.next_event()
                except RemoteProtocolError as exc:
                    self._lose(ConnectionLost(f"protocol error: {exc}"), exc)
                    return
                if event is NEED_DATA:
                    break
                if event is CLOSED:
                    self._lose(ConnectionLost("the server closed the connection"))
                    return
                self._dispatch(event)
                if not self.connected:
                    return

    def _dispatch(self, event: Request | Notification | Reply | ErrorReply) -> None:
        if isinstance(event, Reply | ErrorReply):
            request_id = event.id
            call = self._calls.pop(request_id, None) if type(request_id) is int else None
            if call is not None:
                if call.on_reply is not None:
                    self._call_back(call.on_reply, event)
                elif call.done is not None:
                    call.reply = event
                    call.done.set()
            elif request_id == _PROBE_ID or (
                type(request_id) is int and 0 <= request_id < self._next_id
            ):
                pass  # a probe's reply, or the reply to a call its caller gave up on
            else:
                self._lose(ConnectionLost(f"reply to a request never sent (id {request_id!r})"))
        elif isinstance(event, Request):
            if event.method == "echo":
                self._send_nowait(Reply(event.id, event.params))
            else:
                self._send_nowait(ErrorReply(event.id, "unknown method"))
        else:
            self.notifications_received += 1
            if self._on_notification is not None:
                try:
                    self._on_notification(event)
                except Exception as exc:
                    # The handler's owner learns why from ``lost`` (its __cause__).
                    self._lose(ConnectionLost(f"notification handler failed: {exc}"), exc)
                return
            try:
                self._notes_send.send_nowait(event)
            except trio.WouldBlock:
                self._lose(NotificationOverflow(
                    f"{self._notes_send.statistics().current_buffer_used} notifications queued "
                    "and not read (max_queued_notifications)"
                ))

    async def _prober(self) -> None:
        """After ``probe_interval_s`` without input, send an echo; if nothing at all
        arrives within another interval, the server is gone or hung."""
        interval_s = self.probe_interval_s
        while True:
            await trio.sleep_until(self._last_input + interval_s)
            if trio.current_time() < self._last_input + interval_s:
                continue
            sent_at = trio.current_time()
            self._send_nowait(Request(_PROBE_ID, "echo", []))
            await trio.sleep_until(sent_at + interval_s)
            if self._last_input < sent_at:
                self._lose(ConnectionLost(f"no answer to an echo probe in {interval_s} s"))
                return


class _Notifications:
    """The iterator behind :meth:`OvsdbClient.notifications` (a class, not an async
    generator, so breaking out of the loop needs no cleanup)."""

    def __init__(self, client: OvsdbClient):
        self._client = client

    def __aiter__(self) -> _Notifications:
        return self

    async def __anext__(self) -> Notification:
        try:
            return await self._client.next_notification()
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _locked(result: Any, method: str) -> bool:
    if not isinstance(result, dict) or not isinstance(result.get("locked"), bool):
        raise BadReply(f"{method}: result is not {{\"locked\": bool}}: {result!r}")
    return result["locked"]


@asynccontextmanager
async def open_ovsdb_client(
    remote: str,
    *,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    probe_interval_s: float | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_queued_notifications: int = DEFAULT_MAX_QUEUED_NOTIFICATIONS,
    on_notification: Callable[[Notification], None] | None = None,
) -> AsyncIterator[OvsdbClient]:
    """Connect to the first of ``remote``'s comma-separated remotes that accepts (each
    given ``connect_timeout_s``) and yield a client; close it on exit.

    ``probe_interval_s``: None is OVS's default (5 s on tcp, no probes on unix sockets);
    0 disables probes. Raises :class:`ConnectFailed` or :class:`InvalidRemote`.

    ``on_notification``: handle each notification synchronously in the reader instead of
    queueing it (it must not block; if it raises, the connection counts as lost, with that
    exception as the cause of :attr:`OvsdbClient.lost`).
    """
    remotes = parse_remotes(remote)
    if probe_interval_s is not None and not probe_interval_s >= 0:
        raise ValueError("probe_interval_s must be >= 0")
    stream, chosen = await _connect(remotes, connect_timeout_s)
    if probe_interval_s is None:
        probe_interval_s = DEFAULT_PROBE_INTERVAL_S if chosen.kind == "tcp" else 0.0
    try:
        client = OvsdbClient(
            stream,
            chosen,
            probe_interval_s=probe_interval_s,
            max_message_bytes=max_message_bytes,
            max_queued_notifications=max_queued_notifications,
            on_notification=on_notification,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._run)
            try:
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        # The connection's tasks never raise (a drop becomes ConnectionLost), so a group
        # here only wraps what the body raised: give the caller that exception, unchanged.
        exc = _sole_exception(group)
        if exc is group:
            raise
        context, suppress = exc.__context__, exc.__suppress_context__
        try:
            raise exc
        finally:
            exc.__context__, exc.__suppress_context__ = context, suppress
            del exc


async def is_leader(client: OvsdbClient, db: str) -> bool:
    """Whether the server ``client`` is connected to is the connected leader for ``db``,
    read from its ``_Server`` database as the OVS IDL does (a standalone server is its own
    leader; a relay or a follower is not; nor is a member cut off from its cluster).
    Raises :class:`UnknownDatabase` if the server does not serve ``db``."""
    results = await client.transact(
        "_Server",
        [{
            "op": "select",
            "table": "Database",
            "where": [["name", "==", db]],
            "columns": ["leader", "connected", "model"],
        }],
        check=True,
    )
    rows = results[0].get("rows") if isinstance(results[0], dict) else None
    if not isinstance(rows, list):
        raise BadReply(f"_Server select: no rows in {results[0]!r}")
    if not rows:
        raise UnknownDatabase(f"{client.remote}: no _Server.Database row for {db!r}")
    row = rows[0]
    return row.get("connected") is True and row.get("leader") is True
