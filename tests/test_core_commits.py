"""The server core's consensus path, step by step (sans-I/O: the test plays the plugin).

The plugins themselves are tested against real engines (test_consensus_etcd.py); here the
test decides each commit's outcome to pin down the core's ordering rules: replies wait for
the commit, monitors hear of it first, one commit per database in flight, Retry re-runs on
the newer cache, locks owned only while the cluster-wide gate holds them.
"""

from __future__ import annotations

from typing import Any

import pytest

from crdtdb.consensus.commit import Applied, CommitRequest, Failed, Retry
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.engine import DatabaseSchema, MemoryDatabase
from crdtdb.ovsdb.core import MAX_COMMIT_RETRIES, ServerCore
from crdtdb.ovsdb.jsonrpc import Notification, Reply, Request

SCHEMA = DatabaseSchema.from_json({
    "name": "db", "version": "1.0.0",
    "tables": {"T": {"columns": {"name": {"type": "string"}, "n": {"type": "integer"}},
                     "indexes": [["name"]], "isRoot": True}}})


class Unused:
    async def commit(self, db: LinearizableDatabase, request: CommitRequest) -> Any:
        raise AssertionError("the test completes commits itself")


def setup() -> tuple[ServerCore, LinearizableDatabase]:
    db = LinearizableDatabase(SCHEMA, MemoryDatabase(SCHEMA), Unused())
    core = ServerCore({"db": db}, now_ms=lambda: 0)
    db.add_listener(lambda ev: core.publish("db", ev.changes))
    return core, db


def land(core: ServerCore, db: LinearizableDatabase) -> None:
    """Commit the in-flight transaction as a plugin would: feed first, then the answer."""
    pending = core.commits.pop(0)
    if pending.request.changeset:
        db.apply_feed(db.revision + 1, pending.request.changeset)
    core.commit_finished(pending, Applied())


def insert(name: str, n: int = 0) -> dict[str, Any]:
    return {"op": "insert", "table": "T", "row": {"name": name, "n": n}}


def test_reply_waits_for_the_commit_and_monitors_hear_first() -> None:
    core, db = setup()
    s = core.open_session()
    core.handle(s, Request(1, "monitor_cond", ["db", "m", {"T": [{"columns": ["name"]}]}]))
    s.drain()
    core.handle(s, Request(2, "transact", ["db", insert("a")]))
    assert s.drain() == [] and len(core.commits) == 1
    assert db.row_count("T") == 0  # nothing applied before the plugin says so
    land(core, db)
    out = s.drain()
    assert [type(e) for e in out] == [Notification, Reply]
    assert out[0].method == "update2" and out[1].id == 2
    assert db.row_count("T") == 1


def test_one_commit_in_flight_per_database_and_the_next_sees_it() -> None:
    core, db = setup()
    s = core.open_session()
    core.handle(s, Request(1, "transact", ["db", insert("a")]))
    # Same name: must see the first insert and fail on the index, not run on stale state.
    core.handle(s, Request(2, "transact", ["db", insert("a")]))
    assert len(core.commits) == 1
    assert core.statistics()["commits_in_flight"] == 1
    land(core, db)
    assert len(core.commits) == 1  # the second ran once the first was in
    land(core, db)
    replies = [e for e in s.drain() if isinstance(e, Reply)]
    assert [r.id for r in replies] == [1, 2]
    assert "error" not in replies[0].result[0]
    assert replies[1].result[-1]["error"] == "constraint violation"


def test_retry_runs_again_on_the_newer_cache() -> None:
    core, db = setup()
    s = core.open_session()
    core.handle(s, Request(1, "transact", ["db", {"op": "mutate", "table": "T", "where": [],
                                                  "mutations": [["n", "+=", 1]]}]))
    first = core.commits.pop(0)
    assert first.outcome.results == [{"count": 0}]
    # Meanwhile another node inserted a row: the plugin says Retry.
    other = MemoryDatabase(SCHEMA)
    changes = other.execute([insert("b", 10)]).changeset
    db.apply_feed(db.revision + 1, changes)
    core.commit_finished(first, Retry("T changed"))
    assert core.commits[0].outcome.results == [{"count": 1}]
    land(core, db)
    assert [e.result for e in s.drain() if isinstance(e, Reply)] == [[{"count": 1}]]
    assert next(iter(db.iter_rows("T")))[1][SCHEMA.tables["T"].columns["n"].index] == (11,)


def test_reads_are_linearized_through_the_plugin_too() -> None:
    core, db = setup()
    s = core.open_session()
    core.handle(s, Request(1, "transact", ["db", {"op": "select", "table": "T", "where": []}]))
    assert s.drain() == [] and core.commits[0].request.read_only
    land(core, db)
    assert [e.result for e in s.drain()] == [[{"rows": []}]]


def test_failed_commit_appends_the_error_like_ovsdb_server() -> None:
    core, db = setup()
    s = core.open_session()
    core.handle(s, Request(1, "transact", ["db", insert("a")]))
    pending = core.commits.pop(0)
    core.commit_finished(pending, Failed({"error": "commit failed", "details": "x"}))
    (reply,) = s.drain()
    assert len(reply.result) == 2 and reply.result[1]["error"] == "commit failed"
    assert db.row_count("T") == 0


def test_endless_conflicts_end_with_try_again() -> None:
    core, _ = setup()
    s = core.open_session()
    core.handle(s, Request(1, "transact", ["db", insert("a")]))
    for _ in range(MAX_COMMIT_RETRIES + 1):
        core.commit_finished(core.commits.pop(0), Retry("busy"))
    (reply,) = s.drain()
    assert reply.result[-1]["error"] == "try again"
    assert not core.commits


def test_client_gone_mid_commit_frees_the_database() -> None:
    core, db = setup()
    s1, s2 = core.open_session(), core.open_session()
    core.handle(s1, Request(1, "transact", ["db", insert("a")]))
    core.handle(s2, Request(1, "transact", ["db", insert("b")]))
    pending = core.commits.pop(0)
    core.close_session(s1)
    db.apply_feed(db.revision + 1, pending.request.changeset)
    core.commit_finished(pending, Applied())  # committed all the same; nobody to tell
    land(core, db)
    assert [e.id for e in s2.drain() if isinstance(e, Reply)] == [1]
    assert db.row_count("T") == 2


class Gate:
    def __init__(self) -> None:
        self.held_names: set[str] = set()
        self.wanted: list[tuple[str, bool]] = []
        self.released: list[str] = []

    def held(self, name: str) -> bool:
        return name in self.held_names

    def want(self, name: str, *, steal: bool) -> None:
        self.wanted.append((name, steal))

    def release(self, name: str) -> None:
        self.released.append(name)


def test_locks_are_owned_only_while_the_gate_holds_them() -> None:
    gate = Gate()
    db = MemoryDatabase(SCHEMA)
    core = ServerCore({"db": db}, now_ms=lambda: 0, lock_gate=gate)
    s = core.open_session()
    assert_op = {"op": "assert", "lock": "L"}
    core.handle(s, Request(1, "lock", ["L"]))
    assert s.drain() == [Reply(1, {"locked": False})] and gate.wanted == [("L", False)]
    core.handle(s, Request(2, "transact", ["db", assert_op]))
    assert s.drain()[0].result[0]["error"] == "not owner"
    gate.held_names.add("L")
    core.lock_changed("L", True)
    assert s.drain() == [Notification("locked", ["L"])]
    core.handle(s, Request(3, "transact", ["db", assert_op]))
    assert s.drain() == [Reply(3, [{}])]
    gate.held_names.clear()
    core.lock_changed("L", False)  # another node stole it, or the lease expired
    assert s.drain() == [Notification("stolen", ["L"])]
    assert gate.wanted[-1] == ("L", False)  # and this node contends again
    core.handle(s, Request(4, "unlock", ["L"]))
    assert s.drain() == [Reply(4, {})] and gate.released == ["L"]


class Gated:
    """A committer that holds every commit until the test opens the gate."""

    def __init__(self) -> None:
        import trio

        self.open = trio.Event()
        self.n = 0

    async def commit(self, db: LinearizableDatabase, request: CommitRequest) -> Any:
        await self.open.wait()
        if request.changeset:
            db.apply_feed(db.revision + 1, request.changeset)
        self.n += 1
        return Applied()


@pytest.mark.trio
async def test_a_pipelining_client_is_paused_at_max_pending_commits() -> None:
    import trio

    from crdtdb.ovsdb.client import open_ovsdb_client
    from crdtdb.ovsdb.server import Limits, Remote, open_ovsdb_server

    gate = Gated()
    db = LinearizableDatabase(SCHEMA, MemoryDatabase(SCHEMA), gate)
    limits = Limits(max_pending_commits=5)
    async with open_ovsdb_server({"db": db}, [Remote.parse("ptcp:0:127.0.0.1")],
                                 limits=limits) as server:
        host, port = server.listeners[0].socket.getsockname()[:2]
        async with open_ovsdb_client(f"tcp:{host}:{port}") as client, \
                trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(client.transact, "db", [insert(f"r{i}")])
            await trio.sleep(0.5)  # everything sent; the server reads what it may
            assert server.core.statistics()["pending_transactions"] <= 5
            gate.open.set()
        assert gate.n == 40 and db.row_count("T") == 40


def test_a_wait_that_blocks_after_a_commit_gets_its_timer() -> None:
    core, db = setup()
    s1, s2 = core.open_session(), core.open_session()
    core.handle(s1, Request(1, "transact", ["db", insert("a")]))
    core.waits_changed = False
    core.handle(s2, Request(1, "transact", ["db", {
        "op": "wait", "table": "T", "where": [], "columns": ["name"], "until": "==",
        "rows": [{"name": "zzz"}], "timeout": 1000}]))
    assert core.next_deadline_ms() is None  # queued behind the commit: no timer yet
    core.waits_changed = False
    land(core, db)  # now it runs, and blocks
    assert core.waits_changed and core.next_deadline_ms() == 1000


def test_on_a_relay_an_assert_of_someone_elses_lock_is_answered_here() -> None:
    db = LinearizableDatabase(SCHEMA, MemoryDatabase(SCHEMA), Unused(), forwards=True)
    core = ServerCore({"db": db}, now_ms=lambda: 0)
    owner, other = core.open_session(), core.open_session()
    core.handle(owner, Request(1, "lock", ["L"]))
    core.handle(other, Request(2, "transact", ["db", {"op": "assert", "lock": "L"},
                                               insert("x")]))
    # Not forwarded (the cluster would check the node's shared session, which holds L).
    (pending,) = core.commits
    assert not pending.request.forward and pending.outcome.results[0]["error"] == "not owner"
    core.handle(owner, Request(3, "transact", ["db", {"op": "assert", "lock": "L"},
                                               insert("y")]))
    assert core.commits[-1].request.forward


def test_a_blocked_wait_that_writes_runs_once_when_another_commit_frees_it() -> None:
    """A ``wait`` with a timeout, then a write: when another session's commit satisfies the
    wait, the transaction runs once. (Its own commit retries the database's waits; it used
    to run again from there: two inserts, two replies.)"""
    db = MemoryDatabase(SCHEMA)
    core = ServerCore({"db": db}, now_ms=lambda: 0)
    waiter, writer = core.open_session(), core.open_session()
    core.handle(waiter, Request(1, "transact", [
        "db", {"op": "wait", "table": "T", "where": [["name", "==", "go"]], "columns": ["name"],
               "until": "==", "rows": [{"name": "go"}], "timeout": 10_000},
        insert("after")]))
    assert waiter.drain() == []
    core.handle(writer, Request(1, "transact", ["db", insert("go")]))
    replies = [e for e in waiter.drain() if isinstance(e, Reply)]
    assert [r.id for r in replies] == [1] and "error" not in str(replies[0].result)
    assert db.row_count("T") == 2
