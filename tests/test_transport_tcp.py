"""The tcp transport and a node's defences: framing, oversized frames, garbage, mutual TLS."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from crdtdb.gossip import messages as gm
from crdtdb.node import open_node
from tests.replica_support import make_replica, ok, shown, txn
from tests.support import nothing_left_open
from transport import FrameDecoder, LocalProtocolError, RemoteProtocolError, frame
from transport.base import PeerDown, PeerUp, Received
from transport.tcp import TcpLimits, TlsConfig, open_tcp_transport, parse_hostport

# --- framing (sans-I/O) ------------------------------------------------------------------------


def test_frames_split_anywhere_come_out_whole() -> None:
    data = b"".join(frame(p) for p in (b"", b"a", b"x" * 1000))
    for cut in range(len(data) + 1):
        d = FrameDecoder()
        out = []
        for chunk in (data[:cut], data[cut:]):
            d.receive_data(chunk)
            while (f := d.next_frame()) is not None:
                out.append(f)
        assert out == [b"", b"a", b"x" * 1000]


def test_oversized_frames_are_refused_before_buffering() -> None:
    d = FrameDecoder(max_frame_bytes=10)
    d.receive_data(struct.pack(">I", 11))
    with pytest.raises(RemoteProtocolError, match="11 bytes"):
        d.next_frame()
    with pytest.raises(LocalProtocolError):
        frame(b"x" * 11, max_frame_bytes=10)


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:6641") == ("127.0.0.1", 6641)
    assert parse_hostport("[::1]:1") == ("::1", 1)
    for bad in ("6641", "host:", "host:99999", ":1"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


# --- transports -----------------------------------------------------------------------------------

async def _next(events: Any, kind: type, timeout: float = 5.0) -> Any:
    with trio.fail_after(timeout):
        async for ev in events:
            if isinstance(ev, kind):
                return ev
    raise AssertionError("channel closed")


@contextlib.asynccontextmanager
async def _linked(dialer_limits: TcpLimits | None = None
                  ) -> AsyncIterator[tuple[Any, Any, PeerUp, PeerUp]]:
    """A listening transport ``a`` and one ``b`` dialing it, once both saw the other up:
    ``(a, b, b's PeerUp on a, a's PeerUp on b)``."""
    async with open_tcp_transport(listen=[("127.0.0.1", 0)]) as a, \
            open_tcp_transport(peers=a.listen_addresses,
                               limits=dialer_limits or TcpLimits()) as b:
        up_b = await _next(b.events, PeerUp)
        up_a = await _next(a.events, PeerUp)
        yield a, b, up_a, up_b


@pytest.mark.trio
async def test_two_transports_exchange_frames() -> None:
    async with _linked() as (a, b, up_a, up_b):
        b.send_nowait(up_b.peer, b"hello")
        got = await _next(a.events, Received)
        assert (got.peer, got.frame) == (up_a.peer, b"hello")
        a.send_nowait(up_a.peer, b"back")
        assert (await _next(b.events, Received)).frame == b"back"


@pytest.mark.trio
async def test_frames_queued_together_go_out_together_in_order() -> None:
    async with _linked(TcpLimits(coalesce_bytes=10_000)) as (a, b, _, up_b):
        # The first frame goes straight to the socket, but is larger than the kernel takes
        # at once: the rest of it, and every frame after it, waits for the writer task.
        sent = [b"x" * 16_000_000] + [bytes([i % 256]) * (i * 37 % 900) for i in range(200)]
        for payload in sent:  # queued before the writer runs: one burst
            b.send_nowait(up_b.peer, payload)
        got = [(await _next(a.events, Received)).frame for _ in sent]
        assert got == sent
        # Fewer writes than frames, none over the bound (frames are < 1 KB each).
        assert 100 <= b.n_coalesced < len(sent)
        assert b.statistics()["coalesced_frames"] == b.n_coalesced
        assert b.statistics()["direct_frames"] == 0  # (the first was only partly written)


@pytest.mark.trio
async def test_a_frame_sent_while_nothing_is_pending_goes_straight_to_the_socket() -> None:
    async with _linked() as (a, b, _, up_b):
        for payload in (b"one", b"two", b"three"):
            b.send_nowait(up_b.peer, payload)
            assert (await _next(a.events, Received)).frame == payload
        assert b.statistics()["direct_frames"] == 3


@pytest.mark.trio
async def test_an_oversized_frame_drops_that_peer_only() -> None:
    limits = TcpLimits(max_frame_bytes=1000)
    async with open_tcp_transport(listen=[("127.0.0.1", 0)], limits=limits) as a:
        host, port = a.listen_addresses[0]
        bad = await trio.open_tcp_stream(host, port)
        await _next(a.events, PeerUp)
        await bad.send_all(struct.pack(">I", 10**8))
        down = await _next(a.events, PeerDown)
        assert "frame of 100000000 bytes" in down.reason
        with trio.fail_after(5):
            assert await bad.receive_some(10) == b""  # closed on us
        await bad.aclose()
        async with open_tcp_transport(peers=[(host, port)]) as good:
            up = await _next(good.events, PeerUp)
            good.send_nowait(up.peer, b"fine")
            assert (await _next(a.events, Received)).frame == b"fine"


@pytest.mark.trio
async def test_a_node_drops_a_peer_sending_garbage_and_keeps_serving() -> None:
    r = make_replica(1, 1)
    async with open_node({"Merge": r}, node_id="a", listen=[("127.0.0.1", 0)]) as node:
        host, port = node.transport.listen_addresses[0]
        bad = await trio.open_tcp_stream(host, port)
        await bad.send_all(frame(b"\xc1garbage"))
        with trio.fail_after(5):
            while await bad.receive_some(65536):
                pass  # the node's hello, then EOF
        await bad.aclose()
        assert node.gossip.statistics().disconnects == 1
        # A well-behaved peer still converges.
        peer = make_replica(2, 2)
        async with open_node({"Merge": peer}, node_id="b", peers=[(host, port)]):
            ok(txn(peer, {"op": "insert", "table": "Parent", "row": {"name": "p"}}))
            with trio.fail_after(10):
                while shown(r)["Parent"] == {}:
                    await trio.sleep(0.02)


@pytest.mark.trio
async def test_a_corrupted_update_from_a_peer_is_refused_over_tcp() -> None:
    r = make_replica(1, 1)
    other = make_replica(2, 2)
    sent: list[bytes] = []
    other.add_listener(lambda ev: ev.update and sent.append(ev.update))
    ok(txn(other, {"op": "insert", "table": "Parent", "row": {"name": "p"}}))
    damaged = bytearray(sent[0])
    damaged[len(damaged) // 2] ^= 0x01
    async with open_node({"Merge": r}, node_id="a", listen=[("127.0.0.1", 0)]) as node:
        host, port = node.transport.listen_addresses[0]
        s = await trio.open_tcp_stream(host, port)
        hello = gm.Hello("evil", {"Merge": (r.schema_digest, r.epoch_id)})
        await s.send_all(frame(gm.encode(hello)) +
                         frame(gm.encode(gm.Push("Merge", bytes(damaged), 0))))
        with trio.fail_after(5):
            while await s.receive_some(65536):
                pass
        await s.aclose()
    assert shown(r)["Parent"] == {}
    assert r.statistics().rejected_updates == 1


# --- mutual TLS ---------------------------------------------------------------------------------

def _tls(d: Path, name: str, ca: str = "cacert") -> TlsConfig:
    return TlsConfig(str(d / f"{name}-privkey.pem"), str(d / f"{name}-cert.pem"),
                     str(d / f"{ca}.pem"))


@pytest.mark.trio
async def test_mutual_tls_admits_cluster_members_and_refuses_strangers(pki: Path) -> None:
    async with open_tcp_transport(listen=[("127.0.0.1", 0)], tls=_tls(pki, "server")) as a:
        # A stranger (certificate from another CA) never becomes a peer, on either side.
        async with open_tcp_transport(peers=a.listen_addresses,
                                      tls=_tls(pki, "stranger", "othercacert")) as s:
            with trio.move_on_after(1.5):
                ev = await _next(a.events, PeerUp)
                raise AssertionError(f"stranger admitted: {ev}")
            assert s.statistics()["connections"] == 0
        # Without TLS at all: refused too.
        async with open_tcp_transport(peers=a.listen_addresses) as plain:
            with trio.move_on_after(1.0):
                await _next(a.events, PeerUp)
                raise AssertionError("plain-text peer admitted")
            del plain
        async with open_tcp_transport(peers=a.listen_addresses, tls=_tls(pki, "client")) as b:
            up_b = await _next(b.events, PeerUp)
            await _next(a.events, PeerUp)
            b.send_nowait(up_b.peer, b"over tls")
            assert (await _next(a.events, Received)).frame == b"over tls"


@pytest.mark.trio
async def test_a_peer_that_does_not_read_is_disconnected() -> None:
    async with _linked(TcpLimits(max_queued_frames=4)) as (_a, b, _, up):
        # a's events are never consumed again: its reader stops, the socket fills up, b's
        # writer blocks and b's queue overflows.
        with trio.fail_after(20):
            while True:
                b.send_nowait(up.peer, b"x" * 256 * 1024)
                await trio.sleep(0)
                if b.statistics()["connections"] == 0:
                    break
        down = await _next(b.events, PeerDown)
        assert "not reading" in down.reason


# --- closing: every socket is closed, whatever the transport was doing ------------------------

async def _wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    with trio.fail_after(timeout_s):
        while not condition():
            await trio.sleep(0.01)


async def _sees_eof(stream: trio.abc.Stream) -> None:
    """The other end closed its socket (whatever it had sent comes first)."""
    with trio.fail_after(5):
        while await stream.receive_some(65536):
            pass
    await stream.aclose()


@pytest.mark.trio
async def test_closing_while_announcing_a_peer_closes_its_socket() -> None:
    with nothing_left_open():
        async with open_tcp_transport(listen=[("127.0.0.1", 0)]) as a:
            host, port = a.listen_addresses[0]
            # Nobody reads a's events: one peer's frames fill them, and the next peer's
            # PeerUp waits for room when the transport closes.
            chatty = await trio.open_tcp_stream(host, port)
            await chatty.send_all(frame(b"x") * 1100)
            await _wait_until(lambda: a.events.statistics().current_buffer_used == 1000)
            late = await trio.open_tcp_stream(host, port)
            await _wait_until(lambda: a.events.statistics().tasks_waiting_send == 2)
        assert a.statistics()["connections"] == 0
        await _sees_eof(chatty)
        await _sees_eof(late)


@pytest.mark.trio
async def test_closing_mid_handshake_closes_the_socket_on_both_sides(pki: Path) -> None:
    with nothing_left_open():
        # A listener that accepts and never answers: the dialler waits in its handshake.
        mute = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        async with open_tcp_transport(peers=[mute.socket.getsockname()[:2]],
                                      tls=_tls(pki, "client")):
            with trio.fail_after(5):
                accepted = await mute.accept()
            await trio.sleep(0.1)  # the client's hello is out; it waits for an answer
        await _sees_eof(accepted)
        await mute.aclose()
        # A client that connects and never starts its handshake.
        async with open_tcp_transport(listen=[("127.0.0.1", 0)], tls=_tls(pki, "server")) as a:
            silent = await trio.open_tcp_stream(*a.listen_addresses[0])
            await trio.sleep(0.1)  # accepted; the handshake waits for the client's hello
        await _sees_eof(silent)
