"""Finding peers: static seeds, an in-memory registry (simulations), and mDNS (zeroconf).

Every discovery yields :class:`Found` (an address and, when known, the node id behind it) on
a trio receive channel; the node dials what it finds. zeroconf never runs inside a
simulation: it has its own threads and real timers.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

log = logging.getLogger("crdtdb.discovery")

SERVICE_TYPE = "_crdtdb._tcp.local."


@dataclass(frozen=True, slots=True)
class Found:
    host: str
    port: int
    node_id: str | None = None
    databases: tuple[str, ...] = ()


@asynccontextmanager
async def open_static_discovery(peers: Sequence[tuple[str, int]]
                                ) -> AsyncIterator[trio.MemoryReceiveChannel[Found]]:
    send, receive = trio.open_memory_channel[Found](max(1, len(peers)))
    for host, port in peers:
        send.send_nowait(Found(host, port))
    yield receive


class MemoryRegistry:
    """Discovery for simulations: nodes announce themselves to a shared, in-process registry."""

    def __init__(self) -> None:
        self._members: dict[str, Found] = {}
        self._watchers: list[trio.MemorySendChannel[Found]] = []

    def announce(self, found: Found) -> None:
        assert found.node_id is not None
        self._members[found.node_id] = found
        for w in list(self._watchers):
            try:
                w.send_nowait(found)
            except (trio.WouldBlock, trio.ClosedResourceError):
                self._watchers.remove(w)

    @asynccontextmanager
    async def watch(self, max_buffer: int = 1000
                    ) -> AsyncIterator[trio.MemoryReceiveChannel[Found]]:
        send, receive = trio.open_memory_channel[Found](max_buffer)
        for f in self._members.values():
            send.send_nowait(f)
        self._watchers.append(send)
        try:
            yield receive
        finally:
            if send in self._watchers:
                self._watchers.remove(send)


@asynccontextmanager
async def open_mdns_discovery(node_id: str, port: int, databases: Sequence[str], *,
                              addresses: Sequence[str] | None = None,
                              max_buffer: int = 1000
                              ) -> AsyncIterator[trio.MemoryReceiveChannel[Found]]:
    """Announce this node (``_crdtdb._tcp``, TXT: node id and databases) and browse for
    others. ``addresses`` are the IPv4 addresses to announce and to run mDNS on (default:
    the host's)."""
    from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[Found](max_buffer)
    interfaces: Any = list(addresses) if addresses else None
    announce = list(addresses) if addresses else [socket.gethostbyname(socket.gethostname())]
    info = ServiceInfo(
        SERVICE_TYPE, f"{node_id}.{SERVICE_TYPE}", port=port,
        addresses=[socket.inet_aton(a) for a in announce],
        properties={"node_id": node_id, "databases": ",".join(databases)})
    zc = await trio.to_thread.run_sync(
        lambda: Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        if interfaces else Zeroconf(ip_version=IPVersion.V4Only))

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:  # zeroconf's thread
        if state_change is not ServiceStateChange.Added:
            return
        found = zeroconf.get_service_info(service_type, name, timeout=3000)
        if found is None:
            return
        props = {k.decode(): (v or b"").decode() for k, v in found.properties.items()}
        if props.get("node_id") == node_id:
            return
        for addr in found.parsed_addresses(IPVersion.V4Only):
            f = Found(addr, found.port or 0, props.get("node_id"),
                      tuple(x for x in props.get("databases", "").split(",") if x))
            try:
                token.run_sync_soon(_send_nowait, send, f)
            except trio.RunFinishedError:
                return

    try:
        await trio.to_thread.run_sync(
            lambda: zc.register_service(info, cooperating_responders=True))
        browser = await trio.to_thread.run_sync(
            lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[on_change]))
        log.info("%s: announced on mDNS (%s) at %s:%d", node_id, SERVICE_TYPE,
                 ",".join(announce), port)
        try:
            yield receive
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(browser.cancel)
                await trio.to_thread.run_sync(zc.unregister_service, info)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(zc.close)


def _send_nowait(send: trio.MemorySendChannel[Found], f: Found) -> None:
    try:
        send.send_nowait(f)
    except (trio.WouldBlock, trio.ClosedResourceError):
        log.warning("discovery: dropped %s (consumer not keeping up)", f)
