"""The ovsdb relay in-process (crdtdb.consensus.ovsdb_relay behind the trio server) in front
of a real standalone ovsdb-server, which is its own leader: what the forwarding path must
keep that is hard to see through whole processes.

* a client that pipelines transactions has them committed in the order it sent them, and
  hears its monitor's update of each before that transaction's reply;
* a transaction cut off mid-flight is answered "commit outcome unknown".
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from crdtdb.consensus.ovsdb_relay import OvsdbRelay, RelayOptions, open_ovsdb_relay
from crdtdb.engine import DatabaseSchema
from crdtdb.ovsdb import server as node
from crdtdb.ovsdb.jsonrpc import NEED_DATA, JsonRpcConnection, Notification, Reply, Request
from crdtdb.ovsdb.server import Remote, open_ovsdb_server
from crdtdb.testing.ovsdb_server import OvsdbServer

pytestmark = pytest.mark.ovsdb_server

SCHEMA_JSON = {
    "name": "db", "version": "1.0.0",
    "tables": {"T": {"columns": {"name": {"type": "string"}, "n": {"type": "integer"}},
                     "indexes": [["name"]], "isRoot": True}}}


def insert(name: str) -> dict[str, Any]:
    return {"op": "insert", "table": "T", "row": {"name": name}}


def select(name: str) -> dict[str, Any]:
    return {"op": "select", "table": "T", "where": [["name", "==", name]],
            "columns": ["name"]}


@pytest.fixture
def leader(ovsdb_server: Callable[[Path | str], OvsdbServer], tmp_path: Path) -> OvsdbServer:
    path = tmp_path / "db.ovsschema"
    path.write_text(json.dumps(SCHEMA_JSON))
    return ovsdb_server(path)


@asynccontextmanager
async def relay_node(leader: OvsdbServer
                     ) -> AsyncIterator[tuple[OvsdbRelay, node.OvsdbServer, trio.SocketStream]]:
    """A relay to ``leader`` served on loopback, and a raw connection to it."""
    schema = DatabaseSchema.from_json(SCHEMA_JSON)
    async with open_ovsdb_relay(leader.remote, [schema], options=RelayOptions(
            backoff_s_min=0.05, backoff_s_max=0.1)) as relay, \
            open_ovsdb_server(relay.databases, [Remote.parse("ptcp:0:127.0.0.1")],
                              lock_gate=relay.locks) as server:
        host, port = server.listeners[0].socket.getsockname()[:2]
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            yield relay, server, stream


@pytest.mark.trio
async def test_the_lock_gate_outliving_its_server_no_longer_calls_into_it(
        leader: OvsdbServer) -> None:
    # (crdtdb serve closes the server before the plugins that hold the gate)
    schema = DatabaseSchema.from_json(SCHEMA_JSON)
    async with open_ovsdb_relay(leader.remote, [schema]) as relay:
        before = relay.locks.on_change
        async with open_ovsdb_server(relay.databases, [Remote.parse("ptcp:0:127.0.0.1")],
                                     lock_gate=relay.locks) as server:
            assert relay.locks.on_change == server.lock_changed
        assert relay.locks.on_change is before


async def receive(stream: trio.SocketStream, codec: JsonRpcConnection, n: int) -> list[Any]:
    """The next ``n`` messages."""
    out: list[Any] = []
    while len(out) < n:
        event = codec.next_event()
        if event is NEED_DATA:
            codec.receive_data(await stream.receive_some())
        else:
            out.append(event)
    return out


@pytest.mark.trio
async def test_pipelined_transactions_commit_in_order_updates_first(
        leader: OvsdbServer) -> None:
    async with relay_node(leader) as (_, _, stream):
        codec = JsonRpcConnection()
        await stream.send_all(codec.send(Request("m", "monitor_cond", [
            "db", "m", {"T": [{"columns": ["name"]}]}])))
        with trio.fail_after(10):
            await receive(stream, codec, 1)
            # All at once: each select must see the insert sent just before it.
            n = 50
            burst = b"".join(codec.send(Request(i, "transact", [
                "db", insert(f"r{i // 2}") if i % 2 == 0 else select(f"r{i // 2}")]))
                for i in range(2 * n))
            await stream.send_all(burst)
            events = await receive(stream, codec, 3 * n)
    replies = [e for e in events if isinstance(e, Reply)]
    assert [r.id for r in replies] == list(range(2 * n))
    for r in replies:
        assert "error" not in r.result[0], r
        if r.id % 2:
            assert r.result[0]["rows"] == [{"name": f"r{r.id // 2}"}], r
    # Each insert's update comes before its reply.
    seen: set[str] = set()
    for e in events:
        if isinstance(e, Notification):
            seen |= {row["insert"]["name"] for row in e.params[1]["T"].values()}
        elif e.id % 2 == 0:
            assert f"r{e.id // 2}" in seen, e


@pytest.mark.trio
async def test_a_transaction_cut_off_mid_flight_has_an_unknown_outcome(
        leader: OvsdbServer) -> None:
    async with relay_node(leader) as (relay, server, stream):
        codec = JsonRpcConnection()
        assert leader.pid is not None
        os.kill(leader.pid, signal.SIGSTOP)
        try:
            await stream.send_all(codec.send(Request(1, "transact", ["db", insert("a")])))
            with trio.fail_after(10):
                while server.core.statistics()["pending_transactions"] == 0:
                    await trio.sleep(0.01)
                await trio.sleep(0.1)  # (on its way to the leader)
                os.kill(leader.pid, signal.SIGKILL)
                [reply] = await receive(stream, codec, 1)
        finally:
            os.kill(leader.pid, signal.SIGKILL)
    assert isinstance(reply, Reply)
    assert reply.result[-1]["error"] == "commit outcome unknown"
    assert relay.n_unknown_outcomes == 1
