"""The etcd plugin in-process against a real etcd: the cases a whole-system test rarely hits.

* a read computed on a cache older than its barrier is never acknowledged (Retry), even
  though the cache has caught up by the time the plugin answers;
* a commit under a lock this node no longer holds (the key now has another token) fails its
  fence: Retry, and the gate reports the lock lost;
* a write conflicting with a commit made through another node is answered Retry, and the
  retried transaction sees that commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from crdtdb.consensus.commit import Applied, CommitRequest, Failed, Retry
from crdtdb.consensus.etcd import EtcdOptions, EtcdPlugin, open_etcd_plugin
from crdtdb.consensus.etcd_client import open_etcd_client
from crdtdb.engine import DatabaseSchema
from crdtdb.testing.etcd_server import EtcdCluster, find_etcd

pytestmark = [pytest.mark.etcd,
              pytest.mark.skipif(find_etcd() is None, reason="etcd not installed")]

SCHEMA = DatabaseSchema.from_json({
    "name": "db", "version": "1.0.0",
    "tables": {"T": {"columns": {"name": {"type": "string"}, "n": {"type": "integer"}},
                     "isRoot": True},
               "Ref": {"columns": {"to": {"type": {"key": {
                   "type": "uuid", "refTable": "T"}}}}, "isRoot": True}}})


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(1, tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster


def request_of(db, ops: list) -> CommitRequest:  # type: ignore[no-untyped-def]
    out = db.execute(ops)
    return CommitRequest("db", ops, out.changeset or None, out.read_set, db.revision)


async def commit(plugin: EtcdPlugin, ops: list) -> list:
    """As the server core does: run on the cache, commit, run again on Retry."""
    db = plugin.databases["db"]
    while True:
        out = db.execute(ops)
        req = CommitRequest("db", ops, out.changeset or None, out.read_set, db.revision)
        result = await plugin.commit(db, req)
        if isinstance(result, Applied):
            return out.results
        assert isinstance(result, Retry)


@pytest.mark.trio
async def test_stale_read_is_retried_not_acknowledged(etcd: EtcdCluster, tmp_path: Path
                                                      ) -> None:
    prefix = f"/{tmp_path.name}/"
    async with trio.open_nursery() as nursery:
        a = await nursery.start(_start, etcd, "a", prefix)
        b = await nursery.start(_start, etcd, "b", prefix)
        db_b = b.databases["db"]
        select = [{"op": "select", "table": "T", "where": [], "columns": ["name"]}]
        stale = request_of(db_b, select)  # computed now, on an empty cache
        await commit(a, [{"op": "insert", "table": "T", "row": {"name": "x"}}])
        # b's feed catches up during the barrier; the read computed before must not stand.
        assert isinstance(await b.commit(db_b, stale), Retry)
        assert await commit(b, select) == [{"rows": [{"name": "x"}]}]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_write_conflict_retries_on_the_newer_state(etcd: EtcdCluster, tmp_path: Path
                                                         ) -> None:
    prefix = f"/{tmp_path.name}/"
    async with trio.open_nursery() as nursery:
        a = await nursery.start(_start, etcd, "a", prefix)
        b = await nursery.start(_start, etcd, "b", prefix)
        await commit(a, [{"op": "insert", "table": "T", "row": {"name": "c", "n": 0}}])
        await b.databases["db"].wait_for_revision(a.databases["db"].revision)
        bump = [{"op": "mutate", "table": "T", "where": [["name", "==", "c"]],
                 "mutations": [["n", "+=", 1]]}]
        first = request_of(b.databases["db"], bump)
        await commit(a, bump)  # a commits first
        assert isinstance(await b.commit(b.databases["db"], first), Retry)
        await commit(b, bump)
        rows = await commit(a, [{"op": "select", "table": "T", "where": [],
                                 "columns": ["n"]}])
        assert rows == [{"rows": [{"n": 2}]}]
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_a_delete_racing_a_new_reference_never_leaves_it_dangling(
        etcd: EtcdCluster, tmp_path: Path) -> None:
    prefix = f"/{tmp_path.name}/"
    async with trio.open_nursery() as nursery:
        a = await nursery.start(_start, etcd, "a", prefix)
        b = await nursery.start(_start, etcd, "b", prefix)
        (insert,) = await commit(a, [{"op": "insert", "table": "T", "row": {"name": "r"}}])
        r = insert["uuid"][1]
        await b.databases["db"].wait_for_revision(a.databases["db"].revision)
        delete = request_of(a.databases["db"], [{"op": "delete", "table": "T",
                                                  "where": [["_uuid", "==", ["uuid", r]]]}])
        await commit(b, [{"op": "insert", "table": "Ref", "row": {"to": ["uuid", r]}}])
        # a's delete ran before b's reference existed: it must not commit as it is.
        assert isinstance(await a.commit(a.databases["db"], delete), Retry)
        again = await commit(a, [{"op": "delete", "table": "T",
                                  "where": [["_uuid", "==", ["uuid", r]]]}])
        assert again[-1]["error"] == "referential integrity violation"
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_fence_fails_once_the_lock_key_changed_hands(etcd: EtcdCluster, tmp_path: Path
                                                           ) -> None:
    prefix = f"/{tmp_path.name}/"
    async with trio.open_nursery() as nursery:
        a = await nursery.start(_start, etcd, "a", prefix)
        changes: list[tuple[str, bool]] = []
        a.locks.on_change = lambda name, held: changes.append((name, held))
        a.locks.want("L", steal=False)
        with trio.fail_after(5):
            while not a.locks.held("L"):
                await trio.sleep(0.01)
        db = a.databases["db"]
        ops = [{"op": "insert", "table": "T", "row": {"name": "fenced"}}]
        out = db.execute(ops)
        req = CommitRequest("db", ops, out.changeset, out.read_set, db.revision, ("L",))
        # Another node overwrites the lock key (a steal, or our lease expired and someone
        # else took it) before this node has heard of it.
        await a.client.put(a.lock_key("L"), b"someone-else")
        result = await a.commit(db, req)
        if isinstance(result, Applied):
            pytest.fail("a commit under a lock held by someone else was acknowledged")
        assert ("L", False) in changes or not a.locks.held("L")
        assert db.row_count("T") == 0
        nursery.cancel_scope.cancel()


async def _start(etcd: EtcdCluster, node_id: str, prefix: str,
                 task_status: trio.TaskStatus[EtcdPlugin] = trio.TASK_STATUS_IGNORED) -> None:
    """A node's plugin, running until cancelled."""
    async with open_etcd_client(etcd.endpoints) as client, open_etcd_plugin(
            client, [SCHEMA], node_id=node_id, options=EtcdOptions(prefix=prefix)) as plugin:
        task_status.started(plugin)
        await trio.sleep_forever()


def test_the_number_of_contended_locks_is_bounded() -> None:
    """No etcd needed: past max_locks, a want is refused before any task starts."""
    from types import SimpleNamespace

    from crdtdb.consensus.etcd import EtcdLockGate

    gate = EtcdLockGate(SimpleNamespace(options=EtcdOptions(max_locks=2)))  # type: ignore
    gate._tasks = {"a": trio.CancelScope(), "b": trio.CancelScope()}
    gate.want("c", steal=False)  # refused (logged), not a RuntimeError for a missing nursery
    assert set(gate._tasks) == {"a", "b"} and not gate.held("c")


@pytest.mark.trio
async def test_a_transaction_too_large_for_etcd_fails_cleanly(etcd: EtcdCluster,
                                                              tmp_path: Path) -> None:
    """This etcd runs with its defaults (128 operations per Txn): a 200-row insert is
    refused whole, answered as an OVSDB error, and nothing is committed."""
    prefix = f"/{tmp_path.name}/"
    async with trio.open_nursery() as nursery:
        a = await nursery.start(_start, etcd, "a", prefix)
        db = a.databases["db"]
        ops = [{"op": "insert", "table": "T", "row": {"name": f"r{i}"}} for i in range(200)]
        out = db.execute(ops)
        result = await a.commit(db, CommitRequest("db", ops, out.changeset, out.read_set,
                                                  db.revision))
        assert isinstance(result, Failed), result
        assert result.error["error"] == "commit failed" and "etcd" in result.error["details"]
        assert db.row_count("T") == 0
        nursery.cancel_scope.cancel()
