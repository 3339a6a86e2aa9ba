"""Real nodes (replica + gossip + node loop) on the memory transport under trio's MockClock:
faults and partitions, then a heal, and every node converges; virtual time, no sockets."""

from __future__ import annotations

import random
from contextlib import AsyncExitStack

import pytest
import trio
import trio.testing

from crdtdb.node import open_node
from tests.replica_support import make_replica, ok, shown, txn
from transport.base import PeerUp, Received
from transport.memory import LinkFaults, MemoryNetwork


@pytest.mark.trio
async def test_frames_keep_order_and_respect_latency(autojump_clock: trio.testing.MockClock
                                                     ) -> None:
    net = MemoryNetwork(rng=random.Random(1), faults=LinkFaults(latency_s=(0.01, 0.05)))
    a, b = net.endpoint("a"), net.endpoint("b")
    async with trio.open_nursery() as n:
        n.start_soon(net.run)
        net.connect("a", "b")
        assert isinstance(await b.events.receive(), PeerUp)
        t0 = trio.current_time()
        for i in range(50):
            a.send_nowait("b", bytes([i]))
        got = []
        for _ in range(50):
            ev = await b.events.receive()
            assert isinstance(ev, Received)
            got.append(ev.frame[0])
        assert got == list(range(50))
        assert trio.current_time() - t0 >= 0.01
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_bandwidth_limit_delays_big_frames(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork(rng=random.Random(1), faults=LinkFaults(bandwidth_bps=1000))
    a, b = net.endpoint("a"), net.endpoint("b")
    async with trio.open_nursery() as n:
        n.start_soon(net.run)
        net.connect("a", "b")
        await b.events.receive()
        t0 = trio.current_time()
        a.send_nowait("b", b"x" * 5000)
        await b.events.receive()
        assert trio.current_time() - t0 >= 5.0
        n.cancel_scope.cancel()


@pytest.mark.trio
@pytest.mark.parametrize("seed", range(3))
async def test_nodes_converge_after_partition_and_loss(
        autojump_clock: trio.testing.MockClock, seed: int) -> None:
    rng = random.Random(seed)
    net = MemoryNetwork(rng=rng, faults=LinkFaults(latency_s=(0.001, 0.02)))
    names = [f"n{i}" for i in range(5)]
    replicas = {name: make_replica(i + 1, seed * 10 + i) for i, name in enumerate(names)}
    async with trio.open_nursery() as n, AsyncExitStack() as stack:
        n.start_soon(net.run)
        for name in names:
            await stack.enter_async_context(open_node(
                {"Merge": replicas[name]}, node_id=name, transport=net.endpoint(name),
                rng=random.Random(rng.random())))
        for i, x in enumerate(names):
            for y in names[i + 1:]:
                net.connect(x, y)
        await trio.sleep(1)
        # Fault phase: a partition, loss and duplication while every node writes.
        net.faults.groups = [set(names[:2]), set(names[2:])]
        net.faults.loss, net.faults.duplicate = 0.3, 0.2
        for k in range(20):
            r = replicas[rng.choice(names)]
            ok(txn(r, {"op": "insert", "table": "Parent", "row": {"name": f"p{k}", "n": k}}))
            await trio.sleep(rng.uniform(0, 0.5))
        # Healed phase: everyone must converge.
        net.faults.groups = None
        net.faults.loss = net.faults.duplicate = 0.0
        first = replicas[names[0]]
        with trio.fail_after(60):
            while any(shown(r) != shown(first) for r in replicas.values()) or len(
                    shown(first)["Parent"]) != 20:
                await trio.sleep(0.25)
        await stack.aclose()
        n.cancel_scope.cancel()


@pytest.mark.trio
async def test_memory_discovery_tells_every_watcher() -> None:
    from transport.discovery import Found, MemoryRegistry, open_static_discovery

    reg = MemoryRegistry()
    reg.announce(Found("sim", 1, "a"))
    async with reg.watch() as w1, reg.watch() as w2:
        assert (await w1.receive()).node_id == "a"
        assert (await w2.receive()).node_id == "a"
        reg.announce(Found("sim", 2, "b"))
        assert (await w1.receive()).node_id == "b"
        assert (await w2.receive()).node_id == "b"
    async with open_static_discovery([("10.0.0.1", 6650)]) as found:
        assert await found.receive() == Found("10.0.0.1", 6650)
