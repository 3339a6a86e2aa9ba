"""A served replica: what a peer's update merges in reaches monitoring clients and waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from crdtdb.ovsdb.jsonrpc import JsonRpcConnection, Notification, Reply, Request, Sentinel
from crdtdb.ovsdb.server import Remote, open_ovsdb_server
from tests.replica_support import make_replica, ok, txn, where_uuid


class Client:
    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.codec = JsonRpcConnection()
        self.ids = 0
        self.notifications: list[Notification] = []

    async def call(self, method: str, params: list[Any]) -> Any:
        self.ids += 1
        await self.stream.send_all(self.codec.send(Request(self.ids, method, params)))
        while True:
            ev = await self.next()
            if isinstance(ev, Reply) and ev.id == self.ids:
                return ev.result

    async def send(self, method: str, params: list[Any]) -> int:
        self.ids += 1
        await self.stream.send_all(self.codec.send(Request(self.ids, method, params)))
        return self.ids

    async def next(self) -> Any:
        while True:
            ev = self.codec.next_event()
            if ev is Sentinel.NEED_DATA:
                data = await self.stream.receive_some(65536)
                assert data, "server closed the connection"
                self.codec.receive_data(data)
                continue
            assert ev is not Sentinel.CLOSED
            if isinstance(ev, Notification):
                self.notifications.append(ev)
            return ev

    async def notification(self) -> Notification:
        while True:
            ev = await self.next()
            if isinstance(ev, Notification):
                return ev


@pytest.mark.trio
async def test_remote_merge_reaches_monitors_and_waits(tmp_path: Path) -> None:
    served = make_replica(1, 1)
    peer = make_replica(2, 2)
    out: list[bytes] = []
    peer.add_listener(lambda ev: ev.update and out.append(ev.update))
    sock = tmp_path / "db.sock"
    async with open_ovsdb_server({"Merge": served}, [Remote.parse(f"punix:{sock}")]):
        client = Client(await trio.open_unix_socket(str(sock)))
        initial = await client.call("monitor_cond", ["Merge", "m", {"Parent": [{}]}])
        assert initial == {}
        # A wait for a row that only the peer will create, with no timeout: it blocks.
        waiting = await client.send("transact", ["Merge", {
            "op": "wait", "table": "Parent", "where": [["name", "==", "p"]],
            "columns": ["name"], "until": "!=", "rows": []}])
        p = ok(txn(peer, {"op": "insert", "table": "Parent",
                          "row": {"name": "p", "n": 4}}))[0]["uuid"][1]
        served.apply_update(out[0])
        note = await client.notification()
        assert note.method == "update2"
        row = note.params[1]["Parent"][p]["insert"]
        assert {k: v for k, v in row.items() if k != "_version"} == {"name": "p", "n": 4}
        while True:
            ev = await client.next()
            if isinstance(ev, Reply) and ev.id == waiting:
                assert ev.result == [{}]
                break
        ok(txn(peer, {"op": "update", "table": "Parent", "where": where_uuid(p),
                      "row": {"n": 5}}))
        served.apply_update(out[1])
        note = await client.notification()
        change = note.params[1]["Parent"][p]["modify"]
        assert {k: v for k, v in change.items() if k != "_version"} == {"n": 5}
        await client.stream.aclose()


@pytest.mark.trio
async def test_merges_of_one_turn_go_out_together_in_order(tmp_path: Path,
                                                           monkeypatch: Any) -> None:
    """Changes merged without yielding (a hub's batch of peers' frames) reach a monitor as
    one notification each, in merge order, in one write; a reply the client asks for next
    comes after them."""
    from crdtdb.ovsdb.server import OvsdbServer
    queued: list[list[Any]] = []
    real_queue = OvsdbServer._queue

    def spy(self: OvsdbServer, conn: Any, events: list[Any]) -> None:
        queued.append(list(events))
        real_queue(self, conn, events)

    monkeypatch.setattr(OvsdbServer, "_queue", spy)
    served = make_replica(1, 1)
    peer = make_replica(2, 2)
    out: list[bytes] = []
    peer.add_listener(lambda ev: ev.update and out.append(ev.update))
    sock = tmp_path / "db.sock"
    async with open_ovsdb_server({"Merge": served}, [Remote.parse(f"punix:{sock}")]):
        client = Client(await trio.open_unix_socket(str(sock)))
        assert await client.call("monitor_cond", ["Merge", "m", {"Parent": [{}]}]) == {}
        names = ["a", "b", "c"]
        for name in names:
            ok(txn(peer, {"op": "insert", "table": "Parent", "row": {"name": name}}))
        queued.clear()
        for update in out:
            served.apply_update(update)
        assert queued == []  # nothing sent before this task yields
        echoed = await client.send("echo", ["after"])
        seen = []
        while True:
            ev = await client.next()
            if isinstance(ev, Reply):
                assert ev.id == echoed
                break
            assert ev.method == "update2"
            (row,) = ev.params[1]["Parent"].values()
            seen.append(row["insert"]["name"])
        assert seen == names
        # One write for the three (the echo's reply joins it if the reader got there first).
        assert [type(ev) for ev in queued[0][:3]] == [Notification] * 3
        await client.stream.aclose()
