"""Group commit: a served replica logs a pipelined burst's commits with one write, and
acknowledges none of them (nor sends their monitor updates) before that write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from crdtdb.ovsdb.jsonrpc import JsonRpcConnection, Notification, Reply, Request, Sentinel
from crdtdb.ovsdb.server import Remote, open_ovsdb_server
from crdtdb.replica import Replica
from crdtdb.replica.replica import ChangeEvent, ReplicaFailedError
from tests.replica_support import MERGE_SCHEMA, ok, shown, txn


def _insert(name: str) -> dict[str, Any]:
    return {"op": "insert", "table": "Parent", "row": {"name": name, "n": 1}}


def _open(path: Path) -> tuple[Replica, list[ChangeEvent]]:
    r = Replica.open(path, MERGE_SCHEMA, fsync=False)
    heard: list[ChangeEvent] = []
    r.add_listener(heard.append)
    return r, heard


def test_held_commits_are_logged_in_one_write_and_heard_on_release(tmp_path: Path) -> None:
    r, heard = _open(tmp_path / "db")
    before = r._log.statistics()  # type: ignore[union-attr]
    r.hold_commits()
    for name in ("a", "b", "c"):
        ok(txn(r, _insert(name)))
    # Shown at once (the next transaction of the burst runs against them), but neither
    # written nor told.
    assert sorted(row[2][0] for row in shown(r)["Parent"].values()) == ["a", "b", "c"]
    assert heard == []
    assert r._log.statistics().records == before.records  # type: ignore[union-attr]
    r.release_commits()
    after = r._log.statistics()  # type: ignore[union-attr]
    assert (after.records - before.records, after.batches - before.batches) == (3, 1)
    assert [ev.local and ev.update is not None for ev in heard] == [True] * 3
    assert [len(ev.changes.tables["Parent"]) for ev in heard] == [1, 1, 1]
    # Not holding any more: the next commit is logged and heard as it happens.
    ok(txn(r, _insert("d")))
    assert len(heard) == 4
    state = shown(r)
    r.close()
    again, _ = _open(tmp_path / "db")
    assert shown(again) == state
    again.close()


def test_reading_the_document_writes_held_commits_first(tmp_path: Path) -> None:
    """What a peer could see of the document (a diff, the full state) is durable first."""
    r, heard = _open(tmp_path / "db")
    r.hold_commits()
    ok(txn(r, _insert("a")))
    r.full_state()
    assert len(heard) == 1
    ok(txn(r, _insert("b")))  # still holding
    assert len(heard) == 1
    r.close()  # closing writes what is held
    again, _ = _open(tmp_path / "db")
    assert sorted(row[2][0] for row in shown(again)["Parent"].values()) == ["a", "b"]
    again.close()


def test_a_failed_group_write_fails_the_replica_and_tells_no_one(tmp_path: Path,
                                                                monkeypatch: Any) -> None:
    r, heard = _open(tmp_path / "db")
    r.hold_commits()
    ok(txn(r, _insert("a")))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(r._log, "append_many", broken)
    with pytest.raises(ReplicaFailedError):
        r.release_commits()
    assert heard == []
    with pytest.raises(ReplicaFailedError):
        txn(r, _insert("b"))


class _Client:
    def __init__(self, stream: trio.abc.Stream):
        self.stream = stream
        self.codec = JsonRpcConnection()

    async def next(self) -> Any:
        while True:
            ev = self.codec.next_event()
            if ev is not Sentinel.NEED_DATA:
                return ev
            data = await self.stream.receive_some(65536)
            if not data:
                return Sentinel.CLOSED
            self.codec.receive_data(data)


@pytest.mark.trio
async def test_a_pipelined_burst_is_one_log_write_and_each_update_precedes_its_reply(
        tmp_path: Path) -> None:
    served, _ = _open(tmp_path / "db")
    sock = tmp_path / "db.sock"
    async with open_ovsdb_server({"Merge": served}, [Remote.parse(f"punix:{sock}")]):
        client = _Client(await trio.open_unix_socket(str(sock)))
        await client.stream.send_all(client.codec.send(Request(
            0, "monitor_cond", ["Merge", "m", {"Parent": [{"columns": ["name"]}]}])))
        assert isinstance(await client.next(), Reply)
        before = served._log.statistics()  # type: ignore[union-attr]
        burst = b"".join(client.codec.send(Request(i, "transact", ["Merge", _insert(str(i))]))
                         for i in range(1, 9))
        await client.stream.send_all(burst)
        seen: set[str] = set()
        for i in range(1, 9):
            note = await client.next()
            assert isinstance(note, Notification) and note.method == "update2"
            (uuid, row), = note.params[1]["Parent"].items()
            assert row == {"insert": {"name": str(i)}}
            seen.add(uuid)
            reply = await client.next()
            assert isinstance(reply, Reply) and reply.id == i
            assert reply.result[0]["uuid"][1] in seen
        after = served._log.statistics()  # type: ignore[union-attr]
        assert after.records - before.records == 8
        assert after.batches - before.batches < 8  # (one, unless the burst arrived split)
        await client.stream.aclose()
    served.close()


@pytest.mark.trio
async def test_commits_that_could_not_be_logged_are_never_acknowledged(
        tmp_path: Path, monkeypatch: Any) -> None:
    served, _ = _open(tmp_path / "db")

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(served._log, "append_many", broken)
    monkeypatch.setattr(served._log, "append", broken)
    sock = tmp_path / "db.sock"
    async with open_ovsdb_server({"Merge": served}, [Remote.parse(f"punix:{sock}")]):
        client = _Client(await trio.open_unix_socket(str(sock)))
        burst = b"".join(json.dumps({"method": "transact", "params": ["Merge", _insert(str(i))],
                                     "id": i}).encode() for i in range(3))
        await client.stream.send_all(burst)
        with trio.fail_after(10):
            ev = await client.next()
        assert ev is Sentinel.CLOSED  # disconnected, no reply
        await client.stream.aclose()
    with pytest.raises(ReplicaFailedError):
        txn(served, _insert("x"))
