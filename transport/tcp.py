"""The tcp transport: trio streams carrying length-prefixed frames, optionally mutual TLS.

``open_tcp_transport`` listens (``listen``) and keeps a connection to each static peer
(``peers``), reconnecting with exponential backoff and jitter. Every connection, accepted or
dialled, is a peer named ``tcp:HOST:PORT#N``; the gossip layer learns which node is behind it
from its hello. Bounds: frame size, frames queued per peer (a peer that does not read is
disconnected), connection attempts' timeout.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from transport.base import PeerDown, PeerUp, Received, TransportEvent
from transport.framing import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, RemoteProtocolError, frame

log = logging.getLogger("crdtdb.transport.tcp")


@dataclass(frozen=True, slots=True)
class TcpLimits:
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    #: Frames queued for one peer before it counts as not reading.
    max_queued_frames: int = 10_000
    connect_timeout_s: float = 5.0
    backoff_s_min: float = 0.1
    backoff_s_max: float = 5.0
    receive_chunk_bytes: int = 256 * 1024
    #: Frames queued for a peer while one was being sent go out together, up to this many
    #: bytes: one system call per burst (on loopback it also runs the receiver's TCP stack).
    coalesce_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Mutual TLS with a cluster CA: a peer without a certificate it signed is refused."""

    private_key: str
    certificate: str
    ca_cert: str

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca_cert)
        ctx.load_cert_chain(self.certificate, self.private_key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_cert)
        ctx.load_cert_chain(self.certificate, self.private_key)
        ctx.check_hostname = False  # peers are identified by the CA, not by DNS names
        return ctx


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class _Conn:
    def __init__(self, key: str, stream: trio.abc.Stream, limits: TcpLimits):
        self.key = key
        self.stream = stream
        self.send, self.queue = trio.open_memory_channel[bytes](limits.max_queued_frames)
        self.cancel = trio.CancelScope()
        self.reason = "closed"
        #: frames queued or in the writer's hands (not yet handed to the kernel)
        self.pending = 0
        #: a plain socket's descriptor (not TLS): written to directly when nothing is pending
        self.fd: int | None = (stream.socket.fileno()
                               if isinstance(stream, trio.SocketStream) else None)


class TcpTransport:
    """Use :func:`open_tcp_transport`."""

    def __init__(self, nursery: trio.Nursery, limits: TcpLimits, tls: TlsConfig | None,
                 rng: random.Random):
        self._nursery = nursery
        self.limits = limits
        self._tls = tls
        self._rng = rng
        self._conns: dict[str, _Conn] = {}
        self._ids = itertools.count(1)
        self._send_events, self.events = trio.open_memory_channel[TransportEvent](1000)
        self.listen_addresses: list[tuple[str, int]] = []
        self._dialing: set[tuple[str, int]] = set()
        #: Frames that went out in the same write as an earlier one.
        self.n_coalesced = 0
        #: Frames written whole from send_nowait (see there).
        self.n_direct = 0

    # --- Transport ----------------------------------------------------------------------------

    def send_nowait(self, peer: str, payload: bytes) -> None:
        conn = self._conns.get(peer)
        if conn is None:
            return
        data = frame(payload, max_frame_bytes=self.limits.max_frame_bytes)
        if conn.fd is not None and not conn.pending:
            # Straight to the socket from the caller's task (nothing queued or in the
            # writer's hands, so nothing can come out of order): waking the writer task
            # costs a scheduler pass per frame, and a hub sends a frame per leaf and update.
            try:
                sent = os.write(conn.fd, data)
            except OSError:  # full (BlockingIOError), or broken: the writer finds out
                sent = 0
            if sent == len(data):
                self.n_direct += 1
                return
            data = data[sent:]
        try:
            conn.send.send_nowait(data)
            conn.pending += 1
        except trio.WouldBlock:
            self.disconnect(peer, f"peer is not reading ({self.limits.max_queued_frames} "
                                  f"frames queued)")
        except trio.ClosedResourceError:
            pass

    def disconnect(self, peer: str, reason: str) -> None:
        conn = self._conns.get(peer)
        if conn is not None:
            conn.reason = reason
            conn.cancel.cancel()

    def add_peer(self, host: str, port: int) -> bool:
        """Keep a connection to another peer from now on (e.g. found by discovery); False if
        it is already dialled."""
        if (host, port) in self._dialing:
            return False
        self._dialing.add((host, port))
        self._nursery.start_soon(self._dial, host, port)
        return True

    async def drain(self) -> None:
        """Wait until every queued frame was handed to the kernel (bound it with a timeout)."""
        while any(c.pending for c in self._conns.values()):
            await trio.sleep(0.01)

    def statistics(self) -> dict[str, Any]:
        return {"connections": len(self._conns), "coalesced_frames": self.n_coalesced,
                "direct_frames": self.n_direct,
                "queued_frames": {k: c.queue.statistics().current_buffer_used
                                  for k, c in self._conns.items()}}

    # --- connections --------------------------------------------------------------------------

    async def _run_conn(self, stream: trio.abc.Stream, where: str) -> None:
        """Own ``stream`` from here on: it is closed however this ends, cancelled too."""
        key = f"tcp:{where}#{next(self._ids)}"
        conn = _Conn(key, stream, self.limits)
        self._conns[key] = conn
        announced = False
        try:
            await self._send_events.send(PeerUp(key))
            announced = True
            with conn.cancel:
                async with trio.open_nursery() as n:
                    n.start_soon(self._writer, conn)
                    await self._reader(conn)
                    n.cancel_scope.cancel()
        finally:
            del self._conns[key]
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await trio.aclose_forcefully(stream)
                if announced:
                    await self._send_events.send(PeerDown(key, conn.reason))

    async def _reader(self, conn: _Conn) -> None:
        decoder = FrameDecoder(max_frame_bytes=self.limits.max_frame_bytes)
        while True:
            try:
                data = await conn.stream.receive_some(self.limits.receive_chunk_bytes)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError,
                    OSError) as exc:
                conn.reason = f"connection lost: {exc}"
                return
            if not data:
                conn.reason = "peer closed the connection"
                return
            decoder.receive_data(data)
            while True:
                try:
                    f = decoder.next_frame()
                except RemoteProtocolError as exc:
                    conn.reason = str(exc)
                    log.warning("%s: %s; disconnecting", conn.key, exc)
                    return
                if f is None:
                    break
                try:  # (no scheduler pass per frame: the next receive_some is one)
                    self._send_events.send_nowait(Received(conn.key, f))
                except trio.WouldBlock:
                    await self._send_events.send(Received(conn.key, f))

    async def _writer(self, conn: _Conn) -> None:
        async for data in conn.queue:
            chunks = [data]
            size = len(data)
            while size < self.limits.coalesce_bytes:
                try:
                    more = conn.queue.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                chunks.append(more)
                size += len(more)
            if len(chunks) > 1:
                data = b"".join(chunks)
                self.n_coalesced += len(chunks) - 1
            try:
                await conn.stream.send_all(data)
                conn.pending -= len(chunks)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError,
                    OSError) as exc:
                conn.reason = f"connection lost: {exc}"
                conn.cancel.cancel()
                return

    async def _wrap_server(self, stream: trio.abc.Stream) -> trio.abc.Stream | None:
        if self._tls is None:
            return stream
        tls = trio.SSLStream(stream, self._tls.server_context(), server_side=True)
        try:
            with trio.fail_after(self.limits.connect_timeout_s):
                await tls.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError) as exc:
            log.warning("refused a peer: TLS handshake failed: %s", exc)
            await trio.aclose_forcefully(stream)
            return None
        return tls

    async def _handle_incoming(self, stream: trio.SocketStream) -> None:
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            host, port = "?", 0
        wrapped = await self._wrap_server(stream)  # (serve_listeners closes stream)
        if wrapped is not None:
            await self._run_conn(wrapped, f"{host}:{port}")

    async def _listen(self, host: str, port: int,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.listen_addresses += [tuple(lst.socket.getsockname()[:2]) for lst in listeners]
        task_status.started()
        await trio.serve_listeners(self._handle_incoming, listeners)

    async def _dial(self, host: str, port: int) -> None:
        """Keep one connection to a static peer, reconnecting with backoff and jitter."""
        delay = self.limits.backoff_s_min
        while True:
            stream: trio.abc.Stream | None = None
            try:
                with trio.fail_after(self.limits.connect_timeout_s):
                    stream = await trio.open_tcp_stream(host, port)
                    if self._tls is not None:
                        tls = trio.SSLStream(stream, self._tls.client_context(),
                                             server_hostname=host)
                        await tls.do_handshake()
                        stream = tls
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, ssl.SSLError) as exc:
                log.debug("connect to %s:%d failed: %s", host, port, exc)
                if stream is not None:
                    await trio.aclose_forcefully(stream)
            except BaseException:  # cancelled mid-handshake (the transport is closing)
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                raise
            else:
                delay = self.limits.backoff_s_min
                await self._run_conn(stream, f"{host}:{port}")
            await trio.sleep(delay * self._rng.uniform(0.5, 1.5))
            delay = min(delay * 2, self.limits.backoff_s_max)


@asynccontextmanager
async def open_tcp_transport(*, listen: Sequence[tuple[str, int]] = (),
                             peers: Sequence[tuple[str, int]] = (),
                             tls: TlsConfig | None = None, limits: TcpLimits | None = None,
                             rng: random.Random | None = None
                             ) -> AsyncIterator[TcpTransport]:
    async with trio.open_nursery() as nursery:
        t = TcpTransport(nursery, limits or TcpLimits(), tls, rng or random.Random())
        for host, port in listen:
            await nursery.start(t._listen, host, port)
        for host, port in peers:
            t.add_peer(host, port)
        try:
            yield t
        finally:
            nursery.cancel_scope.cancel()
