"""The async OVSDB client (crdtdb.ovsdb.client) against a real ovsdb-server, standalone and
as a 3-member Raft cluster, and against scripted fake servers for what a real one will not
do on demand (probe us, flood us, misbehave)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from support import NB_SCHEMA, need_ovn

from crdtdb.ovsdb.client import (
    ConnectFailed,
    ConnectionLost,
    InvalidRemote,
    Notification,
    NotificationOverflow,
    OvsdbClient,
    Remote,
    RpcError,
    TransactionFailed,
    is_leader,
    open_ovsdb_client,
    parse_remotes,
)
from crdtdb.ovsdb.jsonrpc import Reply
from crdtdb.testing.ovsdb_cluster import OvsdbCluster
from crdtdb.testing.ovsdb_server import OvsdbServer, find_binary
from crdtdb.testing.ports import free_tcp_ports

DB = "OVN_Northbound"
SWITCHES = {"Logical_Switch": [{"columns": ["name"]}]}


def insert_switch(name: str) -> list[dict[str, Any]]:
    return [{"op": "insert", "table": "Logical_Switch", "row": {"name": name}}]


async def switch_names(client: OvsdbClient) -> set[str]:
    [result] = await client.transact(DB, [
        {"op": "select", "table": "Logical_Switch", "where": [], "columns": ["name"]}
    ], check=True)
    return {row["name"] for row in result["rows"]}


def names_in(updates: dict[str, Any]) -> dict[str, str]:
    """{name: "initial"/"insert"/...} for the Logical_Switch rows in table-updates2."""
    out = {}
    for change in updates.get("Logical_Switch", {}).values():
        [(kind, row)] = change.items()
        if "name" in row:
            out[row["name"]] = kind
    return out


@pytest.fixture
def nb_server(ovsdb_server: Callable[[Path | str], OvsdbServer]) -> OvsdbServer:
    need_ovn()
    return ovsdb_server(NB_SCHEMA)


# -- remotes ---------------------------------------------------------------------------------


def test_parse_remotes() -> None:
    assert parse_remotes("unix:/run/db.sock, tcp:10.0.0.1:6641,tcp:[::1]:7,tcp:h") == [
        Remote("unix", path="/run/db.sock"),
        Remote("tcp", host="10.0.0.1", port=6641),
        Remote("tcp", host="::1", port=7),
        Remote("tcp", host="h", port=6640),
    ]
    assert str(Remote("tcp", host="::1", port=7)) == "tcp:[::1]:7"
    for bad in ("", "ssl:1.2.3.4:5", "tcp:", "tcp:h:x", "tcp:h:0", "unix:", "ptcp:6640"):
        with pytest.raises(InvalidRemote):
            parse_remotes(bad)


@pytest.mark.trio
async def test_connect_failed_names_every_remote(tmp_path: Path) -> None:
    [port] = free_tcp_ports(1)
    remotes = f"unix:{tmp_path}/nothing.sock,tcp:127.0.0.1:{port}"
    with pytest.raises(ConnectFailed) as info:
        async with open_ovsdb_client(remotes, connect_timeout_s=2):
            pass
    assert [remote for remote, _ in info.value.failures] == remotes.split(",")


# -- scripted fake servers -------------------------------------------------------------------


Script = Callable[[trio.SocketStream], Awaitable[None]]


@asynccontextmanager
async def fake_server(script: Script) -> AsyncIterator[str]:
    """A tcp listener on loopback that runs ``script`` on each connection."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, EOFError):
                await script(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [listener])
        yield f"tcp:127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def read_message(stream: trio.SocketStream, buf: bytearray) -> dict[str, Any]:
    decoder = json.JSONDecoder()
    while True:
        text = buf.decode().lstrip()
        if text:
            try:
                msg, end = decoder.raw_decode(text)
            except json.JSONDecodeError:
                pass
            else:
                buf[:] = text[end:].encode()
                return msg
        chunk = await stream.receive_some()
        if not chunk:
            raise EOFError
        buf += chunk


@pytest.mark.trio
async def test_answers_server_echo_and_matches_replies() -> None:
    seen: list[dict[str, Any]] = []

    async def script(stream: trio.SocketStream) -> None:
        buf = bytearray()
        await stream.send_all(b'{"id":"echo","method":"echo","params":["ping"]}')
        # The client's first call and its answer to our echo, in either order.
        first, second = await read_message(stream, buf), await read_message(stream, buf)
        call, answer = (first, second) if "method" in first else (second, first)
        seen.append(answer)
        # A reply nobody asked for must break the connection; a good one first.
        await stream.send_all(json.dumps({"id": call["id"], "result": ["x"], "error": None})
                              .encode())
        await stream.send_all(b'{"id":999,"result":{},"error":null}')
        await trio.sleep_forever()

    async with fake_server(script) as remote, open_ovsdb_client(remote) as client:
        assert await client.list_dbs() == ["x"]
        with trio.fail_after(5), pytest.raises(ConnectionLost, match="never sent"):
            await client.next_notification()
    assert seen == [{"id": "echo", "result": ["ping"], "error": None}]


@pytest.mark.trio
async def test_unread_notifications_disconnect_instead_of_growing() -> None:
    async def script(stream: trio.SocketStream) -> None:
        for _ in range(50):
            await stream.send_all(b'{"id":null,"method":"update2","params":["m",{}]}')
        await trio.sleep_forever()

    async with fake_server(script) as remote, open_ovsdb_client(
        remote, max_queued_notifications=10
    ) as client:
        with trio.fail_after(5):
            while client.connected:
                await trio.sleep(0.01)
        with pytest.raises(NotificationOverflow):
            await client.echo()
        # What was queued before the drop is still delivered, then the reason.
        notes = []
        with pytest.raises(NotificationOverflow):
            async for note in client.notifications():
                notes.append(note)
        assert len(notes) == 10


@pytest.mark.trio
async def test_on_notification_runs_before_the_next_reply_is_handed_over() -> None:
    async def script(stream: trio.SocketStream) -> None:
        buf = bytearray()
        call = await read_message(stream, buf)
        # The update and the reply in one write: the handler must have seen the update by
        # the time the caller has its reply.
        await stream.send_all(b'{"id":null,"method":"update2","params":["m",{"n":1}]}'
                              + json.dumps({"id": call["id"], "result": ["x"], "error": None})
                              .encode())
        await read_message(stream, buf)
        await stream.send_all(b'{"id":null,"method":"update2","params":["m",{"n":2}]}')
        await trio.sleep_forever()

    seen: list[Any] = []

    def handle(note: Notification) -> None:
        if note.params[1]["n"] == 2:
            raise ValueError("cannot use this one")
        seen.append(note.params)

    async with fake_server(script) as remote, open_ovsdb_client(
        remote, on_notification=handle
    ) as client:
        assert await client.list_dbs() == ["x"]
        assert seen == [["m", {"n": 1}]]
        assert client.notifications_received == 1
        # The server answers the next call with an update the handler refuses: that ends
        # the connection, with the handler's exception as the cause.
        with trio.fail_after(5), pytest.raises(ConnectionLost, match="handler failed"):
            await client.echo()
        assert isinstance(client.lost, ConnectionLost)
        assert isinstance(client.lost.__cause__, ValueError)
        with trio.fail_after(5):
            await client.wait_disconnected()


@pytest.mark.trio
async def test_send_request_calls_back_from_the_reader_in_order() -> None:
    """The callback of a request sent without a waiting task gets its reply after the
    notifications sent before it, and None (outcome unknown) if the connection drops."""
    async def script(stream: trio.SocketStream) -> None:
        buf = bytearray()
        first = await read_message(stream, buf)
        await stream.send_all(b'{"id":null,"method":"update2","params":["m",{"n":1}]}'
                              + json.dumps({"id": first["id"], "result": ["x"],
                                            "error": None}).encode())
        await read_message(stream, buf)  # the second: dropped with the connection

    seen: list[Any] = []
    async with fake_server(script) as remote, open_ovsdb_client(
        remote, on_notification=lambda note: seen.append(note.params)
    ) as client:
        client.send_request("list_dbs", [], seen.append)
        client.send_request("list_dbs", [], seen.append)
        assert seen == []  # never called back before it returns
        with trio.fail_after(5):
            await client.wait_disconnected()
        assert seen == [["m", {"n": 1}], Reply(0, ["x"]), None]
        with pytest.raises(ConnectionLost):
            client.send_request("list_dbs", [], seen.append)


@pytest.mark.trio
async def test_probe_detects_a_silent_server() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()  # accepts, never answers (a hung server)

    async with fake_server(script) as remote, open_ovsdb_client(
        remote, probe_interval_s=0.1
    ) as client:
        with trio.fail_after(5), pytest.raises(ConnectionLost, match="echo probe"):
            await client.list_dbs()


@pytest.mark.trio
async def test_body_exceptions_come_out_unwrapped() -> None:
    async def script(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    cause = ValueError("why")
    async with fake_server(script) as remote:
        with pytest.raises(KeyError) as info:
            async with open_ovsdb_client(remote):
                raise KeyError("mine") from cause
    assert info.value.__cause__ is cause


# -- a standalone ovsdb-server ---------------------------------------------------------------

pytest_ovsdb = pytest.mark.ovsdb_server


@pytest_ovsdb
@pytest.mark.trio
async def test_list_dbs_schema_and_standalone_leader(nb_server: OvsdbServer) -> None:
    async with open_ovsdb_client(nb_server.remote) as client:
        assert sorted(await client.list_dbs()) == [DB, "_Server"]
        assert (await client.get_schema(DB))["name"] == DB
        assert await client.echo(1, "two") == [1, "two"]
        assert await is_leader(client, DB)


@pytest_ovsdb
@pytest.mark.trio
async def test_transact_insert_select(nb_server: OvsdbServer) -> None:
    async with open_ovsdb_client(nb_server.remote) as client:
        [inserted] = await client.transact(DB, insert_switch("ls0"), check=True)
        assert inserted["uuid"][0] == "uuid"
        assert await switch_names(client) == {"ls0"}


@pytest_ovsdb
@pytest.mark.trio
async def test_errors(nb_server: OvsdbServer) -> None:
    async with open_ovsdb_client(nb_server.remote) as client:
        with pytest.raises(RpcError) as info:
            await client.call("no_such_method", [])
        assert info.value.error == "unknown method"
        with pytest.raises(RpcError) as info:
            await client.transact("NoSuchDb", [])
        assert info.value.error["error"] == "unknown database"
        # An operation error is a result, unless the caller asks for a check.
        bad = [{"op": "insert", "table": "NoSuchTable", "row": {}}]
        [result] = await client.transact(DB, bad)
        assert result["error"] == "syntax error"
        with pytest.raises(TransactionFailed, match="syntax error"):
            await client.transact(DB, bad, check=True)
        # The connection is still fine.
        assert await client.list_dbs()


@pytest_ovsdb
@pytest.mark.trio
async def test_concurrent_calls_get_their_own_replies(nb_server: OvsdbServer) -> None:
    """A transaction blocked in "wait" is answered after later calls: replies out of
    order still reach the right callers."""
    wait_for_x = [{
        "op": "wait", "table": "Logical_Switch", "where": [["name", "==", "x"]],
        "columns": ["name"], "until": "==", "rows": [{"name": "x"}], "timeout": 10_000,
    }]
    order: list[str] = []
    async with open_ovsdb_client(nb_server.remote) as client:

        async def waiter() -> None:
            await client.transact(DB, wait_for_x, check=True)
            order.append("waiter")

        async def inserter(i: int) -> None:
            [result] = await client.transact(DB, insert_switch(f"ls{i}"), check=True)
            [rows] = await client.transact(DB, [{
                "op": "select", "table": "Logical_Switch",
                "where": [["_uuid", "==", result["uuid"]]], "columns": ["name"],
            }])
            assert rows["rows"] == [{"name": f"ls{i}"}]
            order.append(f"ls{i}")

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.05)  # its request goes out first
                async with trio.open_nursery() as inserters:
                    for i in range(20):
                        inserters.start_soon(inserter, i)
                assert "waiter" not in order
                await client.transact(DB, insert_switch("x"), check=True)
    assert len(order) == 21 and order[-1] == "waiter"


@pytest_ovsdb
@pytest.mark.trio
async def test_cancelled_transact_leaves_the_connection_usable(nb_server: OvsdbServer) -> None:
    wait_forever = [{
        "op": "wait", "table": "Logical_Switch", "where": [], "columns": ["name"],
        "until": "==", "rows": [{"name": "never"}],
    }]
    async with open_ovsdb_client(nb_server.remote) as client:
        with trio.move_on_after(0.1) as scope:
            await client.transact(DB, wait_forever)
        assert scope.cancelled_caught
        assert await client.list_dbs()
        assert await client.transact(DB, insert_switch("after"), check=True)
        # The client sent "cancel": the server dropped the blocked transaction.
        appctl = find_binary("ovs-appctl")
        if appctl is not None:
            memory = subprocess.run(
                [appctl, "-t", str(nb_server.ctl_path), "memory/show"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            assert "sessions:1" in memory and "triggers" not in memory


@pytest_ovsdb
@pytest.mark.trio
async def test_monitor_cond_notifications(nb_server: OvsdbServer) -> None:
    async with open_ovsdb_client(nb_server.remote) as watcher, open_ovsdb_client(
        nb_server.remote
    ) as writer:
        await writer.transact(DB, insert_switch("before"), check=True)
        initial = await watcher.monitor_cond(DB, "mon", SWITCHES)
        assert names_in(initial) == {"before": "initial"}
        for name in ("a", "b"):
            await writer.transact(DB, insert_switch(name), check=True)
        seen: dict[str, str] = {}
        with trio.fail_after(5):
            async for note in watcher.notifications():
                assert note.method == "update2"
                assert note.params[0] == "mon"
                seen.update(names_in(note.params[1]))
                if len(seen) == 2:
                    break
        assert seen == {"a": "insert", "b": "insert"}
        await watcher.monitor_cancel("mon")
        with pytest.raises(RpcError):
            await watcher.monitor_cancel("mon")


@pytest_ovsdb
@pytest.mark.trio
async def test_lock_steal_unlock(nb_server: OvsdbServer) -> None:
    async with open_ovsdb_client(nb_server.remote) as a, open_ovsdb_client(
        nb_server.remote
    ) as b, open_ovsdb_client(nb_server.remote) as c:
        with trio.fail_after(5):
            assert await a.lock("L") is True
            assert await b.lock("L") is False  # queued behind a
            assert await c.steal("L") is True
            with pytest.raises(TransactionFailed, match="not owner"):
                await a.transact(DB, [{"op": "assert", "lock": "L"}], check=True)
            # The server told a before answering its transaction: queued by now.
            note = a.next_notification_nowait()
            assert (note.method, note.params) == ("stolen", ["L"])
            with pytest.raises(trio.WouldBlock):
                a.next_notification_nowait()
            # a's request stays queued (first): when c lets go, a gets the lock back...
            await c.unlock("L")
            note = await a.next_notification()
            assert (note.method, note.params) == ("locked", ["L"])
            await a.transact(DB, [{"op": "assert", "lock": "L"}], check=True)
            # ...and then b.
            await a.unlock("L")
            note = await b.next_notification()
            assert (note.method, note.params) == ("locked", ["L"])


@pytest_ovsdb
@pytest.mark.trio
async def test_connection_lost_when_server_killed(nb_server: OvsdbServer) -> None:
    wait_forever = [{
        "op": "wait", "table": "Logical_Switch", "where": [], "columns": ["name"],
        "until": "==", "rows": [{"name": "never"}],
    }]
    async with open_ovsdb_client(nb_server.remote) as client:
        await client.monitor_cond(DB, "mon", SWITCHES)
        await client.transact(DB, insert_switch("seen"), check=True)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:

                async def pending() -> None:
                    with pytest.raises(ConnectionLost, match="closed the connection"):
                        await client.transact(DB, wait_forever)

                nursery.start_soon(pending)
                await trio.sleep(0.05)
                assert nb_server.pid is not None
                os.kill(nb_server.pid, signal.SIGKILL)
        assert not client.connected
        with pytest.raises(ConnectionLost):
            await client.list_dbs()
        # The update that arrived before the drop is still delivered, then the reason.
        notes = []
        with pytest.raises(ConnectionLost):
            async for note in client.notifications():
                notes.append(note)
        assert [names_in(n.params[1]) for n in notes] == [{"seen": "insert"}]


@pytest_ovsdb
@pytest.mark.trio
async def test_calls_after_aclose_raise_closed(nb_server: OvsdbServer) -> None:
    async with open_ovsdb_client(nb_server.remote) as client:
        await client.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await client.list_dbs()
        assert [n async for n in client.notifications()] == []


# -- a 3-member Raft cluster -----------------------------------------------------------------

pytest_cluster = pytest.mark.ovsdb_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[OvsdbCluster]:
    need_ovn()
    with OvsdbCluster(NB_SCHEMA, tmp_path / "cluster", n_members=3) as c:
        yield c


async def wait_for_names(remote: str, expected: set[str], *, timeout_s: float = 5.0) -> None:
    """Poll one member until it has applied everything in ``expected`` (followers learn of
    commits a heartbeat later than the leader)."""
    async with open_ovsdb_client(remote) as client:
        with trio.fail_after(timeout_s):
            while not expected <= await switch_names(client):
                await trio.sleep(0.02)


@pytest_cluster
@pytest.mark.trio
async def test_cluster_has_exactly_one_leader(cluster: OvsdbCluster) -> None:
    leaders = []
    for i in range(3):
        async with open_ovsdb_client(cluster.remote(i)) as client:
            if await is_leader(client, DB):
                leaders.append(i)
    assert leaders == [cluster.leader_index()]


@pytest_cluster
@pytest.mark.trio
async def test_cluster_writes_via_follower_and_leader_reach_every_member(
    cluster: OvsdbCluster,
) -> None:
    leader = cluster.leader_index()
    follower = (leader + 1) % 3
    async with open_ovsdb_client(cluster.remote(follower)) as client:
        assert not await is_leader(client, DB)
        await client.transact(DB, insert_switch("via-follower"), check=True)
    async with open_ovsdb_client(cluster.remote(leader)) as client:
        await client.transact(DB, insert_switch("via-leader"), check=True)
    for i in range(3):
        await wait_for_names(cluster.remote(i), {"via-follower", "via-leader"})


@pytest_cluster
@pytest.mark.trio
async def test_cluster_commits_after_the_leader_dies(cluster: OvsdbCluster) -> None:
    old_leader = cluster.leader_index()
    cluster.kill(old_leader)
    # The dead member refuses connections, so the remote list moves on to a live one; that
    # member holds the transaction until a new leader is elected.
    with trio.fail_after(15):
        while True:
            try:
                async with open_ovsdb_client(cluster.remotes, connect_timeout_s=1) as client:
                    assert client.remote != Remote.parse(cluster.remote(old_leader))
                    await client.transact(DB, insert_switch("after-failover"), check=True)
                    break
            except (ConnectionLost, ConnectFailed):
                await trio.sleep(0.1)
    survivors = [i for i in range(3) if i != old_leader]
    for i in survivors:
        await wait_for_names(cluster.remote(i), {"after-failover"})
    new_leader = cluster.leader_index()
    assert new_leader in survivors
    # The old leader comes back as a follower and catches up from the new one.
    cluster.restart(old_leader)
    await wait_for_names(cluster.remote(old_leader), {"after-failover"})


@pytest_cluster
@pytest.mark.trio
async def test_cluster_monitor_cond_since_resumes_with_only_missed_changes(
    cluster: OvsdbCluster,
) -> None:
    leader = cluster.leader_index()
    first, second = (leader + 1) % 3, (leader + 2) % 3
    with trio.fail_after(10):
        async with open_ovsdb_client(cluster.remote(first)) as client:
            found, last_id, updates = await client.monitor_cond_since(DB, "m", SWITCHES)
            assert not found and updates == {}
            await client.transact(DB, insert_switch("seen"), check=True)
            note = await client.next_notification()
            assert note.method == "update3"
            monitor_id, last_id, updates = note.params
            assert monitor_id == "m" and names_in(updates) == {"seen": "insert"}
        # Disconnected: a change is made that the monitor misses.
        async with open_ovsdb_client(cluster.remote(leader)) as client:
            await client.transact(DB, insert_switch("missed"), check=True)
        # Resume on another member (Raft entry ids name the same transactions everywhere).
        async with open_ovsdb_client(cluster.remote(second)) as client:
            found, resumed_id, updates = await client.monitor_cond_since(
                DB, "m", SWITCHES, last_id
            )
            assert found
            seen = names_in(updates)
            assert (resumed_id != last_id) == ("missed" in seen)
            while "missed" not in seen:  # that member had not applied it yet: it follows
                note = await client.next_notification()
                seen.update(names_in(note.params[2]))
            assert seen == {"missed": "insert"}


@pytest_cluster
@pytest.mark.trio
async def test_cluster_paused_member_is_detected_and_catches_up(cluster: OvsdbCluster) -> None:
    paused = (cluster.leader_index() + 1) % 3
    async with open_ovsdb_client(cluster.remote(paused), probe_interval_s=0.2) as stuck:
        cluster.pause(paused)
        try:
            with trio.fail_after(5), pytest.raises(ConnectionLost, match="echo probe"):
                await stuck.list_dbs()
            # A majority is still up: the cluster commits without it.
            others = ",".join(cluster.remote(i) for i in range(3) if i != paused)
            async with open_ovsdb_client(others) as client:
                await client.transact(DB, insert_switch("while-paused"), check=True)
        finally:
            cluster.resume(paused)
    await wait_for_names(cluster.remote(paused), {"while-paused"})
