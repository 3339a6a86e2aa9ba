"""Group commit: a served replica logs a pipelined burst's commits with one write, and
acknowledges none of them (nor sends their monitor updates) before that write."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.engine.snapshot import Changeset
from crdtdb.ovsdb.jsonrpc import JsonRpcConnection, Notification, Reply, Request, Sentinel
from crdtdb.ovsdb.server import Remote, open_ovsdb_server
from crdtdb.replica import Replica
from crdtdb.replica.replica import ChangeEvent, ReplicaFailedError
from tests.replica_support import MERGE_SCHEMA, check_view, ok, shown, txn


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
    # One pycrdt transaction, so one update and one record, for the burst; its update
    # goes with the last commit's event.
    assert (after.records - before.records, after.batches - before.batches) == (1, 1)
    assert [ev.local for ev in heard] == [True] * 3
    assert [ev.update is not None for ev in heard] == [False, False, True]
    assert heard[2].span is not None and heard[2].span[2] >= 3
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
        # (one record in one write, unless the burst arrived split: a record per burst)
        assert after.records - before.records == after.batches - before.batches < 8
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


# --- a burst's commits share one pycrdt transaction (Replica._commit_in_burst) -------------

_NAMES = ["a", "b", "c"]


def _step_ops(step: tuple[Any, ...]) -> list[dict[str, Any]]:
    """One transaction of the property below, on rows found by name (so that it means the
    same to every replica running it)."""
    kind, name, x = step
    where = [["name", "==", name]]
    if kind == "insert":
        return [{"op": "insert", "table": "Parent",
                 "row": {"name": name, "n": x, "tags": ["set", [f"t{x % 3}"]],
                         "opts": ["map", [["k", str(x)]]], "small": ["set", [x % 4]]}}]
    if kind == "n":
        return [{"op": "update", "table": "Parent", "where": where, "row": {"n": x}}]
    if kind == "tags":
        return [{"op": "mutate", "table": "Parent", "where": where,
                 "mutations": [["tags", "insert" if x % 2 else "delete",
                                ["set", [f"t{x % 3}"]]]]}]
    if kind == "opts":
        return [{"op": "mutate", "table": "Parent", "where": where,
                 "mutations": [["opts", "delete", ["set", ["k"]]],
                               ["opts", "insert", ["map", [["k", str(x)], [f"o{x % 2}", "v"]]]]]}]
    if kind == "small":
        return [{"op": "update", "table": "Parent", "where": where,
                 "row": {"small": ["set", sorted({x % 4, (x + 1) % 4})[:x % 3]]}}]
    if kind == "small+":  # (concurrent ones merge past the maximum of 2: a conflict)
        return [{"op": "mutate", "table": "Parent", "where": where,
                 "mutations": [["small", "delete", ["set", [(x + 2) % 4]]],
                               ["small", "insert", x % 4]]}]
    if kind == "link":
        return [{"op": "insert", "table": "Parent", "row": {"name": f"{name}{x}"},
                 "uuid-name": "p"},
                {"op": "insert", "table": "Link",
                 "row": {"target": ["named-uuid", "p"], "note": str(x)}}]
    if kind == "counter":
        return [{"op": "delete", "table": "Global", "where": []},
                {"op": "insert", "table": "Global", "row": {"counter": x}}]
    assert kind == "delete"
    return [{"op": "delete", "table": "Parent", "where": where},
            {"op": "delete", "table": "Link", "where": [["note", "==", str(x)]]}]


_STEP = st.tuples(st.sampled_from(["insert", "n", "tags", "opts", "small", "small+", "link",
                                   "counter", "delete"]),
                  st.sampled_from(_NAMES), st.integers(0, 9))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("txn"), _STEP),
    st.tuples(st.just("txn"), _STEP),
    st.tuples(st.just("txn"), _STEP),
    st.tuples(st.just("peer"), _STEP),  # a peer's commit, merged by both
    st.tuples(st.just("sync"), st.none()),  # the peer merges what was committed here
    st.tuples(st.just("release"), st.none())), min_size=5, max_size=60))
def test_held_commits_show_log_and_tell_what_commits_of_their_own_do(
        steps: list[tuple[str, Any]]) -> None:
    """A burst's commits go into one pycrdt transaction and update the view from the
    engine's changesets alone: every commit's results and changes, what listeners hear, the
    view, its conflicts and the key bookkeeping must be those of commits made one by one,
    with peers' updates (and so conflicts, where a burst commit falls back to a commit of
    its own) merged in between; and the log replays to the same."""
    import tempfile

    from crdtdb.replica.replica import Replica as R
    from tests.replica_support import make_replica, replica_state, seeded_uuids

    with tempfile.TemporaryDirectory() as tmp:
        held = R.open(Path(tmp) / "held", MERGE_SCHEMA, fsync=False,
                      rng=random.Random(5), new_uuid=seeded_uuids(random.Random(6)))
        alone = R.open(Path(tmp) / "alone", MERGE_SCHEMA, fsync=False,
                       rng=random.Random(5), new_uuid=seeded_uuids(random.Random(6)))
        # Each has a peer of its own (the same client id: equal documents, but not equal
        # items, since a burst is one update), which runs the same transactions.
        peers = {"held": make_replica(7, 77), "alone": make_replica(7, 77)}
        out: dict[str, list[bytes]] = {"held": [], "alone": []}
        to_peer: dict[str, list[bytes]] = {"held": [], "alone": []}
        heard: dict[str, list[Any]] = {"held": [], "alone": []}
        for r, name in ((held, "held"), (alone, "alone")):
            peers[name].add_listener(
                lambda ev, name=name: ev.update and out[name].append(ev.update))
            r.add_listener(lambda ev, name=name: ev.update and to_peer[name].append(ev.update))
            r.add_listener(lambda ev, name=name: heard[name].append(
                (ev.local, ev.changes.tables)))
        replicas = {"held": held, "alone": alone}
        held.hold_commits()
        for what, step in steps:
            if what == "release":
                held.release_commits()
                held.hold_commits()
            elif what == "peer":
                results = [peers[name].transact(_step_ops(step)) for name in replicas]
                assert results[0] == results[1]
                got = []
                for name, r in replicas.items():
                    got.append([r.apply_update(u).changes.tables for u in out[name]])
                    out[name].clear()
                assert got[0] == got[1]
            elif what == "sync":
                held.release_commits()  # (what a peer may see: see hold_commits)
                held.hold_commits()
                for name, peer in peers.items():
                    for u in to_peer[name]:
                        peer.apply_update(u)
                    to_peer[name].clear()
                assert shown(peers["held"]) == shown(peers["alone"])
            else:
                a, b = held.execute(_step_ops(step)), alone.execute(_step_ops(step))
                assert a.results == b.results
                assert (a.changeset or Changeset()).tables == (b.changeset or Changeset()).tables
        held.release_commits()
        assert heard["held"] == heard["alone"]
        skip = {"state", "clocks", "statistics"}  # (one update per burst: fewer items)
        want = {k: v for k, v in replica_state(alone).items() if k not in skip}
        assert {k: v for k, v in replica_state(held).items() if k not in skip} == want
        assert held.statistics().local_commits == alone.statistics().local_commits
        check_view(held)
        own = {k: [w[1] for w in v] for k, v in (alone._own_writes or {}).items()}
        assert {k: [w[1] for w in v] for k, v in (held._own_writes or {}).items()} == own
        # The document holds what the view was computed from.
        other = Replica.in_memory(MERGE_SCHEMA, client_id=999)
        other.apply_update(held.full_state())
        assert other.view.raw == alone.view.raw
        held.close()
        alone.close()
        again = R.open(Path(tmp) / "held", MERGE_SCHEMA, fsync=False)
        assert shown(again) == shown(alone)
        assert {k: [w[1] for w in v] for k, v in (again._own_writes or {}).items()} == own
        again.close()


def test_a_held_update_of_a_row_shown_otherwise_than_stored_is_a_commit_of_its_own(
        tmp_path: Path) -> None:
    """A row in conflict (its set merged past its maximum) is shown cut: its new raw value
    is not the engine's row, so that commit does not go into the burst's transaction; the
    burst before it is committed first, and the one after it goes on."""
    from tests.replica_support import where_uuid

    r, heard = _open(tmp_path / "db")
    peer = Replica.in_memory(MERGE_SCHEMA, client_id=42)
    p = ok(txn(r, {"op": "insert", "table": "Parent", "row": {"name": "p", "small": 1}}))
    uuid = p[0]["uuid"][1]
    peer.apply_update(r.full_state())
    ok(txn(r, {"op": "mutate", "table": "Parent", "where": where_uuid(uuid),
               "mutations": [["small", "insert", 3]]}))
    out: list[bytes] = []
    peer.add_listener(lambda ev: ev.update and out.append(ev.update))
    ok(txn(peer, {"op": "mutate", "table": "Parent", "where": where_uuid(uuid),
                  "mutations": [["small", "insert", 2]]}))
    r.apply_update(out[0])
    assert r.conflicts.any_active() and r.view.raw["Parent"][uuid] != r.get_row("Parent", uuid)
    del heard[:]
    r.hold_commits()
    ok(txn(r, _insert("a")))
    assert r._burst is not None
    ok(txn(r, {"op": "update", "table": "Parent", "where": where_uuid(uuid),
               "row": {"n": 5}}))
    assert r._burst is None  # (committed before the commit of its own)
    ok(txn(r, _insert("b")))
    assert r._burst is not None
    r.release_commits()
    assert [ev.update is not None for ev in heard] == [True, True, True]
    row = r.get_row("Parent", uuid)
    assert row is not None and row[r.schema.tables["Parent"].columns["n"].index] == (5,)
    check_view(r)
    state = shown(r)
    r.close()
    again, _ = _open(tmp_path / "db")
    assert shown(again) == state
    again.close()
