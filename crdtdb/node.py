"""A crdtdb node: replicas served to OVSDB clients while they gossip with peers.

``open_node`` wires the pieces together under one nursery: the OVSDB server (JSON-RPC
remotes), the tcp transport, and the sans-I/O gossip core, which it feeds with transport
events and timer ticks and whose outputs it performs. Local commits are pushed to peers as
they are acknowledged; peers' updates merge into the replicas and reach monitoring clients.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import trio

from crdtdb.gossip import Disconnect, Gossip, GossipConfig, Send
from crdtdb.replica import ChangeEvent, Replica
from transport.base import PeerDown, PeerUp, Received
from transport.tcp import TcpLimits, TcpTransport, TlsConfig, open_tcp_transport

log = logging.getLogger("crdtdb.node")

STATUS_INTERVAL_S = 1.0
#: The gossip timers run at most this often. A frame that moves a deadline earlier wakes the
#: timer task (Gossip.deadline_moved_earlier: a peer up, pulls picking up again, any frame
#: during a compaction round); a hub handles thousands a second, and each tick walks every
#: peer. Gossip's deadlines (pulls every 0.125-0.375 s, pings, round timers) need no finer
#: precision.
MIN_TICK_INTERVAL_S = 0.02
#: Transport events handled in one go before the pump yields to other tasks.
PUMP_BATCH = 32
#: How long a closing node waits for its queued frames to leave.
DRAIN_TIMEOUT_S = 2.0


class Node:
    """A running node: use :func:`open_node`."""

    def __init__(self, node_id: str, replicas: Mapping[str, Replica], gossip: Gossip,
                 transport: TcpTransport | Any, ovsdb: Any, status_file: Path | None):
        self.node_id = node_id
        self.replicas = dict(replicas)
        self.gossip = gossip
        self.transport = transport
        self.ovsdb = ovsdb
        self.status_file = status_file
        self.started = time.time()
        self._wakeup = trio.Event()

    def _perform(self, outputs: Sequence[Any]) -> None:
        self._send(outputs)
        if self.gossip.deadline_moved_earlier():
            self._wakeup.set()

    def _send(self, outputs: Sequence[Any]) -> None:
        for out in outputs:
            if isinstance(out, Send):
                self.transport.send_nowait(out.peer, out.frame)
            elif isinstance(out, Disconnect):
                self.transport.disconnect(out.peer, out.reason)

    def _on_commit(self, db: str) -> Any:
        def on_change(ev: ChangeEvent) -> None:
            if ev.local and ev.update is not None:
                self._perform(self.gossip.local_update(db, ev.update, ev.span))
        return on_change

    async def _pump(self) -> None:
        events = self.transport.events
        replicas = list(self.replicas.values())
        async for ev in events:
            # What a batch's updates change is shown (and sent to OVSDB clients) once, after
            # the batch: see Replica.hold_changes. A batch is handled in one scheduler pass:
            # one clock reading for all of it, and whether a deadline moved earlier is asked
            # once at its end (the timer task runs only after this one yields anyway).
            now = trio.current_time()
            for r in replicas:
                r.hold_changes()
            try:
                self._handle(ev, now)
                # The events already there, without a scheduler pass each (a hub receives a
                # frame per leaf and change); a bounded batch, so OVSDB clients get their
                # turn.
                for _ in range(PUMP_BATCH - 1):
                    try:
                        ev = events.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._handle(ev, now)
            finally:
                for r in replicas:
                    r.release_changes()
                if self.gossip.deadline_moved_earlier():
                    self._wakeup.set()

    def _handle(self, ev: Any, now: float) -> None:
        if isinstance(ev, Received):  # (most events)
            outputs = self.gossip.receive(ev.peer, ev.frame, now)
            if outputs:
                self._send(outputs)
        elif isinstance(ev, PeerUp):
            self._perform(self.gossip.connected(ev.peer, now))
        elif isinstance(ev, PeerDown):
            p = self.gossip.peers.get(ev.peer)
            if p is not None:
                log.info("%s: peer %s (%s) down: %s", self.node_id, ev.peer,
                         p.node_id, ev.reason)
            self.gossip.disconnected(ev.peer)

    async def _timers(self) -> None:
        while True:
            ticked = trio.current_time()
            self._perform(self.gossip.tick(ticked))
            self._wakeup = trio.Event()
            deadline = self.gossip.next_deadline()
            with trio.move_on_at(ticked + 1.0 if deadline is None else deadline):
                await self._wakeup.wait()
            await trio.sleep_until(ticked + MIN_TICK_INTERVAL_S)

    async def _discover(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
        """Announce this node on mDNS and dial the nodes found (the smaller node id dials)."""
        from transport.discovery import open_mdns_discovery

        if not self.transport.listen_addresses:
            raise ValueError("--discover needs --listen (peers must be able to dial us)")
        host, port = self.transport.listen_addresses[0]
        addresses = None if host in ("0.0.0.0", "") else [host]
        async with open_mdns_discovery(self.node_id, port, sorted(self.replicas),
                                       addresses=addresses) as found:
            task_status.started()
            async for f in found:
                if f.node_id is not None and f.node_id <= self.node_id:
                    continue  # that node dials us
                if self.transport.add_peer(f.host, f.port):
                    log.info("%s: discovered %s at %s:%d", self.node_id, f.node_id, f.host,
                             f.port)

    async def _status_writer(self) -> None:
        assert self.status_file is not None
        while True:
            # orjson: the json module's indenting encoder is pure Python (a hub's status of
            # 20 peers: 810 -> 148 us with the shallow dicts below; small, once a second).
            text = orjson.dumps(self.status(), default=str,
                                option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
            # In a worker thread: a rename over the old file can wait for the disk (ext4
            # flushes the new file's data first), and the event loop must not wait with it.
            await trio.to_thread.run_sync(_write_replacing, self.status_file, text)
            await trio.sleep(STATUS_INTERVAL_S)

    def compact(self, db: str) -> None:
        """Coordinate a compaction round of ``db`` (raises
        :class:`~crdtdb.gossip.protocol.CompactionRefusedError` while one runs)."""
        self._perform(self.gossip.start_compaction(db, trio.current_time()))

    def status(self) -> dict[str, Any]:
        """Peers, lag and conflicts: what ``crdtdb status`` prints."""
        g = self.gossip.statistics()
        return {
            "node_id": self.node_id,
            "time": time.time(),
            "uptime_s": time.time() - self.started,
            "listen": [f"{h}:{p}" for h, p in self.transport.listen_addresses],
            "peers": g.peers,
            "gossip": _shallow(g, skip="peers"),
            "databases": {name: {**_shallow(r.statistics()), "epoch_id": str(r.epoch_id)}
                          for name, r in self.replicas.items()},
        }


def _shallow(stats: Any, skip: str | None = None) -> dict[str, Any]:
    """A statistics dataclass as a dict. Not ``dataclasses.asdict``: its deep copy of every
    value is for objects that may be shared, and statistics are built fresh for each call."""
    return {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.name != skip}


def _write_replacing(path: Path, text: bytes) -> None:
    """Write ``path`` so that readers see the old text or the new, never a partial one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)


def load_node_id(data_dir: Path | None) -> str:
    """The node's name: kept in ``data_dir/node-id`` so that it survives restarts."""
    if data_dir is None:
        return f"node-{uuidlib.uuid4().hex[:12]}"
    path = data_dir / "node-id"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    node_id = f"node-{uuidlib.uuid4().hex[:12]}"
    path.write_text(node_id + "\n")
    return node_id


@asynccontextmanager
async def open_node(replicas: Mapping[str, Replica], *, node_id: str,
                    listen: Sequence[tuple[str, int]] = (),
                    peers: Sequence[tuple[str, int]] = (),
                    tls: TlsConfig | None = None, remotes: Sequence[Any] = (),
                    ssl_files: Any = None, limits: Any = None,
                    gossip_config: GossipConfig | None = None,
                    tcp_limits: TcpLimits | None = None,
                    status_file: Path | None = None, discover: bool = False,
                    transport: Any = None,
                    rng: random.Random | None = None,
                    linearizable: Mapping[str, Any] | None = None,
                    lock_gate: Any = None) -> AsyncIterator[Node]:
    """Serve ``replicas`` on OVSDB ``remotes`` and gossip them with ``peers`` (and whoever
    connects to ``listen``) until the block exits.

    ``linearizable``: more databases to serve, kept by a consensus plugin (not gossiped);
    ``lock_gate``: the plugin's cluster-wide locks (see :class:`crdtdb.ovsdb.core.LockGate`).

    ``transport``: an already open transport (e.g. a :mod:`transport.memory` endpoint) to
    use instead of tcp; ``listen``/``peers``/``tls`` are then ignored.
    """
    from crdtdb.ovsdb.server import open_ovsdb_server

    rng = rng or random.Random()
    async with AsyncExitStack() as stack:
        if transport is None:
            transport = await stack.enter_async_context(
                open_tcp_transport(listen=listen, peers=peers, tls=tls, limits=tcp_limits,
                                   rng=random.Random(rng.random())))
        ovsdb = None
        if remotes:
            ovsdb = await stack.enter_async_context(
                open_ovsdb_server({**replicas, **(linearizable or {})}, list(remotes),
                                  ssl_files=ssl_files, limits=limits, lock_gate=lock_gate))
        gossip = Gossip(node_id, replicas, rng=random.Random(rng.random()),
                        config=gossip_config)
        node = Node(node_id, replicas, gossip, transport, ovsdb, status_file)
        hooks = [(r, node._on_commit(name)) for name, r in replicas.items()]
        for r, fn in hooks:
            r.add_listener(fn)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(node._pump)
                nursery.start_soon(node._timers)
                if status_file is not None:
                    nursery.start_soon(node._status_writer)
                if discover:
                    await nursery.start(node._discover)
                log.info("%s: node up (listening on %s; peers %s)", node_id,
                         ", ".join(f"{h}:{p}" for h, p in transport.listen_addresses) or "-",
                         ", ".join(f"{h}:{p}" for h, p in peers) or "-")
                try:
                    yield node
                finally:
                    # What was committed last is still queued for peers: hand it over.
                    with trio.move_on_after(DRAIN_TIMEOUT_S) as drain:
                        drain.shield = True
                        await transport.drain()
                    nursery.cancel_scope.cancel()
        finally:
            for r, fn in hooks:
                r.remove_listener(fn)
