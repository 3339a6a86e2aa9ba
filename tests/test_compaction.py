"""Compaction epochs: one node cuts a new epoch, the others move to it, nothing is lost.

Replica level: a base names where it was cut, a replica moves to a newer epoch only if that
loses none of its writes (else it is stranded and keeps them), and a frozen replica holds
local writes. Gossip level (the sans-I/O core on the simulated network): a round freezes
every node, cuts once it has every writer's writes, and every node ends in the new epoch with
the same rows; faults during a round strand at most the nodes that wrote past the cut.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from crdtdb.engine.snapshot import Changeset
from crdtdb.engine.transaction import execute
from crdtdb.errors import WouldBlock
from crdtdb.gossip import Gossip, GossipConfig, Send
from crdtdb.gossip import messages as m
from crdtdb.gossip.protocol import CompactionRefusedError
from crdtdb.replica import (
    ChangeEvent,
    CorruptUpdateError,
    EpochId,
    EpochMismatchError,
    EpochOrigin,
    Replica,
    ReplicaFrozenError,
    StrandedError,
)
from crdtdb.replica.epoch import covers
from sims.simnet import SimNet
from tests.replica_support import (
    MERGE_SCHEMA,
    check_view,
    make_replica,
    ok,
    shown,
    txn,
    where_uuid,
)


def _insert(r: Replica, name: str) -> str:
    return ok(txn(r, {"op": "insert", "table": "Parent", "row": {"name": name}}))[0]["uuid"][1]


def _sync(*replicas: Replica) -> None:
    for _ in range(2):
        for a in replicas:
            for b in replicas:
                if a is not b:
                    b.apply_update(a.diff(b.state_vector()))


# --- replica ------------------------------------------------------------------------------------

def test_a_replica_moves_to_a_newer_epoch_and_its_readers_hear_the_difference() -> None:
    a, b = make_replica(1, 1), make_replica(2, 2)
    p = _insert(a, "p")
    _sync(a, b)
    q = _insert(a, "q")  # b has not seen it
    epoch = a.rebuild()
    assert epoch.number == 1 and len(epoch.base) == 16
    assert a.origin is not None and a.origin.previous == EpochId(0)
    heard: list[ChangeEvent] = []
    b.add_listener(heard.append)
    diff = b.adopt(a.full_state())
    assert b.epoch_id == a.epoch_id and shown(b) == shown(a)
    assert set(diff.tables["Parent"]) == {q} and diff.tables["Parent"][q].old is None
    assert [ev.changes for ev in heard] == [diff]
    check_view(b)
    # The two now replicate: b's next write reaches a, in the new epoch.
    r = _insert(b, "r")
    a.apply_update(b.diff(a.state_vector()))
    assert {u for u, _ in a.iter_rows("Parent")} == {p, q, r}


def test_a_replica_that_wrote_past_the_cut_moves_and_makes_those_writes_again() -> None:
    a, b = make_replica(1, 1), make_replica(2, 2)
    _insert(a, "p")
    _sync(a, b)
    late = _insert(b, "late")  # after the state a cuts at
    a.rebuild()
    heard: list[ChangeEvent] = []
    b.add_listener(heard.append)
    b.adopt(a.full_state())
    assert b.epoch_id == a.epoch_id and late in shown(b)["Parent"]
    assert b.recommits == [(EpochId(0), 1, a.epoch_id)]  # (b's clock after its one write)
    # Made again: a local commit whose update is pushed; readers hear the move once, and
    # the row never left.
    assert [(ev.local, bool(ev.update), bool(ev.changes)) for ev in heard] == [
        (True, True, False)]
    a.apply_update(heard[0].update)
    assert shown(a) == shown(b)


def test_writes_made_again_win_column_by_column_and_deletes_stand() -> None:
    a, b = make_replica(1, 1), make_replica(2, 2)
    p, q, r = _insert(a, "p"), _insert(a, "q"), _insert(a, "r")
    _sync(a, b)
    a.rebuild()
    # Past the cut, on b: p.n = 5, q deleted, s inserted, r.n = 9.
    ok(txn(b, {"op": "update", "table": "Parent", "where": where_uuid(p), "row": {"n": 5}},
           {"op": "delete", "table": "Parent", "where": where_uuid(q)},
           {"op": "insert", "table": "Parent", "row": {"name": "s"}},
           {"op": "update", "table": "Parent", "where": where_uuid(r), "row": {"n": 9}}))
    # In the new epoch, on a: p's other column, and r deleted.
    ok(txn(a, {"op": "update", "table": "Parent", "where": where_uuid(p),
               "row": {"name": "p2"}},
           {"op": "delete", "table": "Parent", "where": where_uuid(r)}))
    b.adopt(a.full_state())
    a.apply_update(b.diff(a.state_vector()))
    assert shown(a) == shown(b)
    [result] = txn(b, {"op": "select", "table": "Parent", "where": [],
                       "columns": ["name", "n"]})
    assert sorted((row["name"], row["n"]) for row in result["rows"]) == [("p2", 5), ("s", 0)]


def test_a_replica_reopened_after_writing_past_the_cut_still_makes_them_again(
        tmp_path: Any) -> None:
    """Which rows its commits wrote is in the log (and kept by a log compaction)."""
    a = make_replica(1, 1)
    b = Replica.open(tmp_path / "b", MERGE_SCHEMA, fsync=False)
    _insert(a, "p")
    _sync(a, b)
    _insert(b, "late")
    a.rebuild()
    b._rewrite_log()  # a log compaction in between
    _insert(b, "later")
    b.close()
    b = Replica.open(tmp_path / "b", MERGE_SCHEMA, fsync=False)
    b.adopt(a.full_state())
    assert _names(b) == {"p", "late", "later"} and b.epoch_id == a.epoch_id


def test_a_replica_that_wrote_too_much_to_track_is_stranded(tmp_path: Any) -> None:
    from unittest import mock

    a = make_replica(1, 1)
    _insert(a, "p")
    with mock.patch("crdtdb.replica.replica.MAX_TRACKED_WRITES", 2):
        b = Replica.open(tmp_path / "b", MERGE_SCHEMA, fsync=False)
        _sync(a, b)
        for i in range(4):  # the fourth is past the bound: logged as not tracked
            _insert(b, f"late{i}")
    a.rebuild()
    b.close()
    b = Replica.open(tmp_path / "b", MERGE_SCHEMA, fsync=False)  # (untracked, on disk too)
    before = shown(b)
    with pytest.raises(StrandedError, match="wrote up to") as info:
        b.adopt(a.full_state())
    assert info.value.theirs == a.epoch_id and info.value.mine == EpochId(0)
    assert b.epoch_id == EpochId(0) and shown(b) == before


def test_writes_below_the_cut_do_not_strand() -> None:
    a, b = make_replica(1, 1), make_replica(2, 2)
    _insert(b, "mine")
    _sync(a, b)
    a.rebuild()
    b.adopt(a.full_state())
    assert shown(b) == shown(a)


def test_a_replica_epochs_behind_moves_and_makes_its_writes_past_the_cut_again() -> None:
    a, quiet, writer = make_replica(1, 1), make_replica(2, 2), make_replica(3, 3)
    _insert(writer, "early")
    _sync(a, quiet, writer)
    _insert(writer, "w")  # in epoch 0, past the cut of epoch 1
    a.rebuild()
    _insert(a, "q")
    a.rebuild()  # epoch 2: its origin remembers where epoch 0 was cut
    assert a.origin is not None and a.origin.cut_of(EpochId(0)) is not None
    quiet.adopt(a.full_state())
    assert quiet.epoch_id == a.epoch_id and shown(quiet) == shown(a)
    writer.adopt(a.full_state())
    assert writer.epoch_id == a.epoch_id and _names(writer) == {"early", "w", "q"}
    assert writer.recommits == [(EpochId(0), 2, a.epoch_id)]


def test_what_a_move_may_lose_is_judged_from_the_origins() -> None:
    e0, a1, b1 = EpochId(0), EpochId(1, b"a" * 16), EpochId(1, b"b" * 16)
    cut_a = EpochOrigin(e0, {7: 5})  # a1: cut from epoch 0 with client 7's writes up to 5
    cut_b = EpochOrigin(e0, {7: 3})
    # A child of the replica's epoch: its own writes there must be below the cut.
    assert covers(cut_a, e0, None, 7, 5)
    assert not covers(cut_a, e0, None, 7, 6)
    assert covers(cut_a, e0, None, 8, 0)  # wrote nothing ever
    # A sibling (two concurrent rounds): the replica's epoch-0 writes are in its own base,
    # up to its cut; the other must reach as far, and it must not have written since.
    assert not covers(cut_b, a1, cut_a, 7, 0)
    assert covers(cut_a, b1, cut_b, 7, 0)
    assert not covers(cut_a, b1, cut_b, 7, 1)
    # Anything off the new epoch's lineage cannot be judged: refused.
    assert not covers(EpochOrigin(EpochId(1, b"c" * 16), {7: 9}), a1, cut_a, 7, 0)
    # Two epochs on: the lineage says where epoch 0 was left.
    two = cut_a.next(a1, {7: 0, 8: 4})
    assert two.cut_of(e0) == {7: 5} and two.cut_of(a1) == {7: 0, 8: 4}
    assert covers(two, e0, None, 7, 5) and not covers(two, e0, None, 7, 6)


def test_same_number_different_bases_refuse_each_other() -> None:
    a, b = make_replica(1, 1), make_replica(2, 2)
    _insert(a, "p")
    a.rebuild()
    b.rebuild()  # epoch 1 too, from another state
    assert a.epoch == b.epoch == 1 and a.base != b.base
    _insert(b, "q")
    with pytest.raises(EpochMismatchError):
        a.apply_update(b.diff(a.state_vector()))
    # The tie-break: the larger base wins, and the other side may move to it.
    low, high = sorted([a, b], key=lambda r: r.epoch_id)
    with pytest.raises(EpochMismatchError, match="not newer"):
        high.adopt(low.full_state())


def test_adopt_refuses_what_is_not_a_newer_epoch() -> None:
    a, b = make_replica(1, 1), make_replica(2, 2)
    _insert(a, "p")
    with pytest.raises(EpochMismatchError, match="not newer"):
        b.adopt(a.full_state())
    a.rebuild()
    state = bytearray(a.full_state())
    state[len(state) // 2] ^= 0x08
    with pytest.raises(CorruptUpdateError):
        b.adopt(bytes(state))
    assert b.epoch_id == EpochId(0)


def test_a_state_holding_the_adopters_own_client_id_is_refused() -> None:
    c = make_replica(3, 3)
    _insert(c, "p")
    c.rebuild()
    twin = make_replica(1, 9)  # a second replica under client id 1: a misconfiguration
    twin.adopt(c.full_state())
    _insert(twin, "t")
    a = make_replica(1, 1)
    with pytest.raises(CorruptUpdateError, match="client id 1"):
        a.adopt(twin.full_state())
    assert a.epoch_id == EpochId(0)


def test_the_epoch_survives_a_restart(tmp_path: Any) -> None:
    a, b = make_replica(1, 1), Replica.open(tmp_path / "b", MERGE_SCHEMA, fsync=False)
    _insert(a, "p")
    a.rebuild()
    b.adopt(a.full_state())
    mine = _insert(b, "mine")
    epoch, rows = b.epoch_id, shown(b)
    b.close()
    again = Replica.open(tmp_path / "b", MERGE_SCHEMA, fsync=False)
    assert again.epoch_id == epoch and shown(again) == rows and mine in rows["Parent"]
    assert again.origin == a.origin
    a.apply_update(again.diff(a.state_vector()))
    assert shown(a) == rows


def test_a_frozen_replica_holds_writes_and_serves_reads() -> None:
    r = make_replica(1, 1)
    p = _insert(r, "p")
    insert = {"op": "insert", "table": "Parent", "row": {"name": "q"}}
    change = execute(r.view.rows, [insert]).changeset
    assert change
    r.freeze()
    out = r.execute([insert])
    assert out.blocked and out.results is None
    with pytest.raises(WouldBlock):
        txn(r, {"op": "delete", "table": "Parent", "where": where_uuid(p)})
    with pytest.raises(ReplicaFrozenError):
        r.commit(change)
    assert _names(r) == {"p"}
    heard: list[ChangeEvent] = []
    r.add_listener(heard.append)
    r.thaw()
    assert [ev.changes for ev in heard] == [Changeset()]
    _insert(r, "q")
    assert _names(r) == {"p", "q"}


def _names(r: Replica) -> set[str]:
    [result] = txn(r, {"op": "select", "table": "Parent", "where": [], "columns": ["name"]})
    return {row["name"] for row in result["rows"]}


# --- gossip -------------------------------------------------------------------------------------

def _cluster(n: int, seed: int, **cfg: Any) -> SimNet:
    replicas = {f"n{i}": make_replica(i + 1, seed * 100 + i) for i in range(n)}
    return SimNet(replicas, seed=seed, config=GossipConfig(**cfg) if cfg else None)


def _write(r: Replica, txn_ops: list[dict[str, Any]]) -> list[Any] | None:
    """What a server does: a frozen replica's writes wait (here: are not made)."""
    out = r.execute(txn_ops)
    return None if out.blocked else out.results


def test_a_round_moves_every_node_to_the_new_epoch() -> None:
    net = _cluster(5, 3)
    net.run_for(0.5)
    for i, r in enumerate(net.replicas.values()):
        _insert(r, f"p{i}")
    net.run_for(0.01)  # some writes still on their way when the round starts
    net.compact("n2")
    net.run_for(3.0)
    epochs = {r.epoch_id for r in net.replicas.values()}
    assert len(epochs) == 1 and next(iter(epochs)).number == 1
    assert net.converged() and len(shown(net.replicas["n0"])["Parent"]) == 5
    stats = {nid: g.statistics() for nid, g in net.gossip.items()}
    assert stats["n2"].rounds_cut == 1
    assert sum(s.adoptions for s in stats.values()) == 4
    assert not any(s.strandings or s.holding for s in stats.values())
    assert not any(r.frozen for r in net.replicas.values())
    # Writes go on in the new epoch.
    _insert(net.replicas["n4"], "after")
    net.run_until_converged(limit_s=5)
    assert len(shown(net.replicas["n0"])["Parent"]) == 6


def test_concurrent_rounds_strand_only_a_node_whose_writes_the_winner_lacks() -> None:
    """Two rounds started before either freeze arrived cut two epochs 1; the larger wins.
    The node whose only copy of its write is in the losing base is stranded with it."""
    net = _cluster(2, 0)
    net.run_for(0.5)
    net.faults.loss, net.faults.latency_s = 0.6, (0.001, 0.2)
    _insert(net.replicas["n0"], "w0")
    net.compact("n0")
    _insert(net.replicas["n1"], "w2")
    net.compact("n1")
    net.faults.loss = 0.0
    net.run_for(45.0)
    n0, n1 = net.replicas["n0"], net.replicas["n1"]
    assert n0.epoch == n1.epoch == 1 and n0.epoch_id != n1.epoch_id
    winner, loser = ("n0", "n1") if n0.epoch_id > n1.epoch_id else ("n1", "n0")
    assert net.gossip[loser].stranded == {"Merge": net.replicas[winner].epoch_id}
    assert _names(net.replicas[loser]) == {"w2" if loser == "n1" else "w0"}


def test_a_second_round_while_one_runs_is_refused() -> None:
    net = _cluster(3, 4)
    net.run_for(0.5)
    net.compact("n0")
    with pytest.raises(CompactionRefusedError):
        net.compact("n0")
    net.run_for(0.01)
    with pytest.raises(CompactionRefusedError):
        net.compact("n1")  # n1 holds its writes for n0's round


def test_a_node_cut_off_during_the_round_that_writes_moves_and_loses_nothing() -> None:
    net = _cluster(4, 5)
    ids = sorted(net.replicas)
    net.run_for(0.5)
    _insert(net.replicas["n1"], "before")
    net.run_for(0.5)
    net.faults.groups = [{"n3"}, set(ids[:3])]
    net.compact("n0")
    late = _insert(net.replicas["n3"], "late")  # n3 never heard the freeze
    net.run_for(8.0)  # the round is cut without n3's report at its deadline
    net.faults.groups = None
    net.run_for(10.0)
    assert {r.epoch for r in net.replicas.values()} == {1}
    assert net.converged() and late in shown(net.replicas["n0"])["Parent"]
    assert net.replicas["n3"].recommits and not net.gossip["n3"].stranded
    assert net.gossip["n0"].statistics().rounds_cut == 1


def test_a_node_cut_off_during_the_round_that_stays_quiet_moves_after_the_heal() -> None:
    net = _cluster(4, 6)
    ids = sorted(net.replicas)
    net.run_for(0.5)
    for i in ids:
        _insert(net.replicas[i], i)
    net.run_for(1.0)
    net.faults.groups = [{"n3"}, set(ids[:3])]
    net.compact("n0")
    net.run_for(8.0)
    net.faults.groups = None
    net.run_for(15.0)
    assert {r.epoch for r in net.replicas.values()} == {1}
    assert net.converged() and len(shown(net.replicas["n3"])["Parent"]) == 4


def test_a_writer_whose_writes_never_reached_the_coordinator_makes_them_again() -> None:
    net = _cluster(3, 7)
    net.run_for(0.5)
    # Nobody hears n2 (it hears everyone): its write and its report never arrive, so n0
    # does not know n2 wrote, and cuts without it.
    net.faults.one_way = {("n2", "n0"), ("n2", "n1")}
    _insert(net.replicas["n2"], "unseen")
    net.compact("n0")
    net.run_for(8.0)
    assert net.gossip["n0"].statistics().rounds_cut == 1
    net.faults.one_way = set()
    net.run_for(40.0)
    assert {r.epoch for r in net.replicas.values()} == {1}
    assert net.converged() and _names(net.replicas["n0"]) == {"unseen"}
    assert net.gossip["n2"].statistics().strandings == 0
    assert not any(r.frozen for r in net.replicas.values())


def _connected_pair() -> tuple[Gossip, Gossip, Replica, Replica]:
    """Two gossip cores past their hellos; nothing else delivered."""
    ra, rb = make_replica(1, 1), make_replica(2, 2)
    ga = Gossip("a", {"Merge": ra}, rng=random.Random(1))
    gb = Gossip("b", {"Merge": rb}, rng=random.Random(2))
    [hello_a], [hello_b] = ga.connected("b", 0.0), gb.connected("a", 0.0)
    assert isinstance(hello_a, Send) and isinstance(hello_b, Send)
    gb.receive("a", hello_a.frame, 0.0)
    ga.receive("b", hello_b.frame, 0.0)
    return ga, gb, ra, rb


def _frames(out: list[Any], kind: type) -> list[bytes]:
    return [o.frame for o in out if isinstance(o, Send) and isinstance(m.decode(o.frame), kind)]


def test_a_round_missing_reported_writes_is_given_up_and_everyone_thaws() -> None:
    ga, gb, ra, rb = _connected_pair()
    _insert(rb, "unseen")  # never sent to a
    [freeze] = _frames(ga.start_compaction("Merge", 1.0), m.Freeze)
    assert ra.frozen
    [frozen] = _frames(gb.receive("a", freeze, 1.0), m.Frozen)
    assert rb.frozen and m.decode(frozen) == m.Frozen("Merge", m.decode(freeze).round_id,
                                                      2, rb.own_clock())
    ga.receive("b", frozen, 1.1)
    ga.tick(1.5)
    assert ra.frozen and ra.epoch == 0  # b's writes are missing: no cut
    out = ga.tick(1.0 + ga.config.round_timeout_s + 0.01)
    [thaw] = _frames(out, m.Thaw)
    assert not ra.frozen and ra.epoch == 0
    assert ga.statistics().rounds_given_up == 1
    gb.receive("a", thaw, 6.1)
    assert not rb.frozen


def test_a_hold_ends_by_itself_if_the_round_never_ends() -> None:
    ga, gb, _ra, rb = _connected_pair()
    [freeze] = _frames(ga.start_compaction("Merge", 1.0), m.Freeze)
    gb.receive("a", freeze, 1.0)
    assert rb.frozen and gb.statistics().holding == ["Merge"]
    gb.tick(1.0 + gb.config.freeze_timeout_s + 0.01)
    assert not rb.frozen and gb.statistics().holding == []


def test_fetch_is_answered_only_to_older_peers_and_not_again_at_once() -> None:
    ga, gb, ra, rb = _connected_pair()
    assert ga.receive("b", m.encode(m.Fetch("Merge")), 1.0) == []  # b is not behind
    _insert(ra, "p")
    ra.rebuild()
    out = ga._announce("Merge")
    [epoch] = _frames(out, m.Epoch)
    [fetch] = _frames(gb.receive("a", epoch, 1.0), m.Fetch)
    [state] = _frames(ga.receive("b", fetch, 1.0), m.State)
    assert ga.receive("b", fetch, 1.0) == []  # not again at once...
    again = ga.receive("b", fetch, 1.0 + ga.config.fetch_timeout_s / 2)
    assert _frames(again, m.State) == [state]  # ...but when the first may have gone missing
    gb.receive("a", state, 1.0)
    assert rb.epoch_id == ra.epoch_id and shown(rb) == shown(ra)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n=st.integers(2, 5), seed=st.integers(0, 10_000),
       loss=st.sampled_from([0.0, 0.05, 0.3]),
       partition=st.sampled_from(["none", "isolate", "flap"]))
def test_rounds_under_faults_lose_no_write_and_converge(data: Any, n: int, seed: int,
                                                        loss: float, partition: str) -> None:
    """Writes on random nodes and compaction rounds from random nodes while frames are lost
    and partitions come and go; after the heal, every node that is not stranded ends in one
    epoch with the same rows, and every acknowledged write is either there or on the
    stranded node that made it."""
    net = _cluster(n, seed)
    ids = sorted(net.replicas)
    net.run_for(0.5)
    net.faults.loss, net.faults.latency_s = loss, (0.001, 0.2)
    acked: dict[str, list[tuple[str, str]]] = {i: [] for i in ids}
    for step in range(data.draw(st.integers(1, 20), label="steps")):
        nid = data.draw(st.sampled_from(ids), label="node")
        r = net.replicas[nid]
        if data.draw(st.integers(0, 5), label="compact?") == 0:
            with contextlib.suppress(CompactionRefusedError):
                net.compact(nid)
        else:
            name = f"w{step}"
            results = _write(r, [{"op": "insert", "table": "Parent", "row": {"name": name}}])
            if results is not None and "error" not in results[0]:
                acked[nid].append((name, results[0]["uuid"][1]))
        if partition == "isolate" and step == 2:
            net.faults.groups = [{ids[0]}, set(ids[1:])]
        elif partition == "flap" and step % 3 == 0:
            net.faults.groups = None if net.faults.groups else [{ids[-1]}, set(ids[:-1])]
        net.run_for(data.draw(st.sampled_from([0.0, 0.05, 0.5, 3.0]), label="pause"))
    net.faults.groups, net.faults.loss = None, 0.0
    net.run_for(45.0)  # past every round's and hold's deadline, then fetches
    stranded = {i for i in ids if net.gossip[i].stranded}
    live = [net.replicas[i] for i in ids if i not in stranded]
    event(f"stranded: {len(stranded)}; epoch {max(r.epoch for r in net.replicas.values())}")
    assert not any(r.frozen for r in net.replicas.values())
    if live:
        assert len({r.epoch_id for r in live}) == 1, [str(r.epoch_id) for r in live]
        assert all(r.view.raw == live[0].view.raw for r in live)
        for r in live:
            check_view(r)
    names = {i: _names(net.replicas[i]) for i in ids}
    for nid, writes in acked.items():
        where = names[nid] if nid in stranded else names[next(
            (i for i in ids if i not in stranded), nid)]
        for name, _ in writes:
            # A stranded node keeps its own; everyone else's writes are on every live node
            # unless their writer is stranded and wrote them past the cut.
            if nid in stranded or name in where:
                continue
            raise AssertionError(f"acknowledged write {name} of {nid} lost "
                                 f"(reproduce with seed={seed})")


@pytest.mark.slow
@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), n=st.integers(2, 8), seed=st.integers(0, 10_000),
       loss=st.sampled_from([0.0, 0.05, 0.3, 0.6]),
       partition=st.sampled_from(["none", "isolate", "flap"]))
def test_rounds_under_faults_lose_no_write_and_converge_long(data: Any, n: int, seed: int,
                                                             loss: float,
                                                             partition: str) -> None:
    test_rounds_under_faults_lose_no_write_and_converge.hypothesis.inner_test(  # type: ignore[attr-defined]
        data, n, seed, loss, partition)


def test_a_configured_node_starts_rounds_by_itself() -> None:
    net = _cluster(3, 8, compact_after_updates=10)
    for g in list(net.gossip.values())[1:]:
        g.config = GossipConfig()  # only n0 coordinates
    net.run_for(0.5)
    for i in range(25):
        r = net.replicas[f"n{i % 3}"]
        while r.frozen:  # what a server does with the write: hold it until the thaw
            net.run_for(0.05)
        _insert(r, f"p{i}")
        net.run_for(0.3)
    net.run_for(5.0)
    epochs = {r.epoch_id for r in net.replicas.values()}
    assert len(epochs) == 1 and next(iter(epochs)).number >= 2
    assert net.converged() and len(_names(net.replicas["n2"])) == 25
    assert net.gossip["n0"].statistics().rounds_cut >= 2


# --- real nodes ---------------------------------------------------------------------------------

@pytest.mark.trio
async def test_nodes_over_tcp_compact_and_keep_replicating(tmp_path: Any) -> None:
    import trio

    import crdtdb

    schema = "tests/schemas/merge.ovsschema"
    async with crdtdb.open_node([schema], listen=["127.0.0.1:0"],
                                data_dir=tmp_path / "a") as a:
        host, port = a.node.transport.listen_addresses[0]
        async with crdtdb.open_node([schema], peers=[f"{host}:{port}"],
                                    data_dir=tmp_path / "b") as b, \
                crdtdb.open_node([schema], peers=[f"{host}:{port}"],
                                 data_dir=tmp_path / "c") as c:
            nodes = [a, b, c]
            for i, n in enumerate(nodes):
                n.database("Merge").insert("Parent", {"name": f"p{i}"})

            async def until(cond: Any) -> None:
                with trio.fail_after(20):
                    while not cond():
                        await trio.sleep(0.05)

            def rows(n: Any) -> set[str]:
                return {r["name"] for r in n.database("Merge").select("Parent")}

            await until(lambda: all(len(rows(n)) == 3 for n in nodes))
            a.compact("Merge")
            await until(lambda: all(n.database("Merge").replica.epoch == 1 for n in nodes))
            assert len({n.database("Merge").replica.epoch_id for n in nodes}) == 1
            assert all(n.status()["gossip"]["holding"] == [] for n in nodes)
            c.database("Merge").insert("Parent", {"name": "after"})
            await until(lambda: all("after" in rows(n) for n in nodes))
    # The epoch is durable: b reopens in it, with every row.
    async with crdtdb.open_node([schema], data_dir=tmp_path / "b") as b2:
        assert b2.database("Merge").replica.epoch == 1
        assert len(b2.database("Merge").select("Parent")) == 4


# --- the server holding writes ------------------------------------------------------------------

def test_a_held_write_runs_once_when_the_replica_thaws() -> None:
    """Found by the sandbox: the retried transaction's own commit retried waits again, and
    ran the same transaction a second time (two rows, two replies)."""
    from crdtdb.ovsdb.core import ServerCore
    from crdtdb.ovsdb.jsonrpc import Reply, Request

    r = make_replica(1, 1)
    core = ServerCore({"Merge": r}, now_ms=lambda: 0)
    r.add_listener(lambda ev: None if ev.local else core.publish("Merge", ev.changes))
    s = core.open_session()
    r.freeze()
    core.handle(s, Request(1, "transact", ["Merge", {"op": "insert", "table": "Parent",
                                                     "row": {"name": "held"}}]))
    core.handle(s, Request(2, "transact", ["Merge", {"op": "select", "table": "Parent",
                                                     "where": []}]))
    assert [e.id for e in s.drain() if isinstance(e, Reply)] == [2]  # reads go on
    r.thaw()
    replies = [e for e in s.drain() if isinstance(e, Reply)]
    assert [e.id for e in replies] == [1] and "uuid" in replies[0].result[0]
    assert len(list(r.iter_rows("Parent"))) == 1


def test_a_log_that_cannot_be_rewritten_keeps_the_old_epoch_whole(tmp_path: Any) -> None:
    from unittest import mock

    from crdtdb.replica import ReplicaFailedError

    r = Replica.open(tmp_path / "r", MERGE_SCHEMA, fsync=False)
    _insert(r, "p")
    rows = shown(r)
    with mock.patch.object(r._log, "rewrite", side_effect=OSError("disk full")), \
            pytest.raises(ReplicaFailedError, match="disk full"):
        r.rebuild()
    with pytest.raises(ReplicaFailedError):
        _insert(r, "refused")
    peer = make_replica(9, 9)
    peer.adopt(r.full_state())
    _insert(peer, "from a peer")
    r.apply_update(peer.diff(r.state_vector()))  # peers' updates go on, in memory
    assert _names(r) == {"p", "from a peer"}
    r.close()
    again = Replica.open(tmp_path / "r", MERGE_SCHEMA, fsync=False)
    assert again.epoch_id == EpochId(0) and shown(again) == rows


@pytest.mark.trio
async def test_a_node_down_during_a_round_moves_when_it_comes_back(tmp_path: Any) -> None:
    """b wrote, then went down; a's round waits for b's report until its deadline, cuts
    without it (b's writes are all in a's state), and b, reopened from its log, moves."""
    import trio

    import crdtdb
    from crdtdb.gossip import GossipConfig as Config

    schema = "tests/schemas/merge.ovsschema"
    quick = Config(round_timeout_s=1.0)

    def rows(n: Any) -> set[str]:
        return {r["name"] for r in n.database("Merge").select("Parent")}

    async def until(cond: Any) -> None:
        with trio.fail_after(20):
            while not cond():
                await trio.sleep(0.05)

    async with crdtdb.open_node([schema], listen=["127.0.0.1:0"], data_dir=tmp_path / "a",
                                gossip_config=quick) as a:
        host, port = a.node.transport.listen_addresses[0]
        async with crdtdb.open_node([schema], peers=[f"{host}:{port}"],
                                    data_dir=tmp_path / "b") as b:
            b.database("Merge").insert("Parent", {"name": "b's"})
            await until(lambda: rows(a) == {"b's"})
        a.compact("Merge")  # b is down: no report from a writer of the epoch
        await until(lambda: a.database("Merge").replica.epoch == 1)
        assert a.status()["gossip"]["rounds_cut"] == 1
        async with crdtdb.open_node([schema], peers=[f"{host}:{port}"],
                                    data_dir=tmp_path / "b") as b:
            assert b.database("Merge").replica.epoch == 0  # from its log
            await until(lambda: b.database("Merge").replica.epoch == 1)
            assert rows(b) == {"b's"} and b.status()["gossip"]["stranded"] == {}
            b.database("Merge").insert("Parent", {"name": "after"})
            await until(lambda: rows(a) == {"b's", "after"})


def test_what_a_replica_tracks_of_its_writes_stays_small() -> None:
    from crdtdb.replica.replica import _tracked

    own: Any = {}
    for clock in range(1, 1001):  # one column rewritten a thousand times
        own = _tracked([[clock, "Parent", "u", [3]]], own)
    assert own == {("Parent", "u"): [[1000, [3]]]}
    for clock, cols in ((1001, [1]), (1002, [2]), (1003, [4]), (1004, [5])):
        own = _tracked([[clock, "Parent", "u", cols]], own)
    # Past four kinds of change the row is one entry, every column it changed included.
    assert own == {("Parent", "u"): [[1004, [1, 2, 3, 4, 5]]]}
    own = _tracked([[1005, "Parent", "u", "delete"]], own)
    assert own[("Parent", "u")][-1] == [1005, "delete"]
