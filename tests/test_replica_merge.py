"""k replicas, random transactions, hostile delivery, compaction, then anti-entropy.

After every step each replica's view satisfies the schema and equals a from-scratch view of
its raw rows. At the end, after anti-entropy, every replica shows the same rows, hides the same
rows for the same reasons, and holds every update it ever acknowledged.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from crdtdb.replica import EpochMismatchError, Replica
from crdtdb.replica.envelope import decode_state_vector, seal
from tests.replica_support import check_reload, check_view, make_replica, shown, where_uuid

NAMES = ("a", "b", "c")
TAGS = ("x", "y", "z")


def _rows(replica: Replica, table: str) -> list[str]:
    return sorted(u for u, _ in replica.iter_rows(table))


class Transactions:
    """Draws a transaction against one replica's view (the engine may still refuse it)."""

    def __init__(self, data: Any, replica: Replica):
        self.d = data
        self.r = replica

    def pick(self, table: str) -> str | None:
        rows = _rows(self.r, table)
        return self.d.draw(st.sampled_from(rows)) if rows else None

    def draw(self) -> list[dict[str, Any]]:
        kind = self.d.draw(st.sampled_from([
            "insert_parent", "insert_parent", "update_parent", "tags", "opts", "small",
            "delete_parent", "insert_link", "delete_link", "link_by", "add_child",
            "drop_child", "child_peer", "friends", "global_"]))
        return getattr(self, kind)()

    def insert_parent(self) -> list[dict[str, Any]]:
        row: dict[str, Any] = {"name": self.d.draw(st.sampled_from(NAMES)),
                               "n": self.d.draw(st.integers(-3, 3))}
        ops: list[dict[str, Any]] = []
        if self.d.draw(st.booleans()):
            ops.append({"op": "insert", "table": "Child", "uuid-name": "c",
                        "row": {"label": "new"}})
            row["children"] = ["named-uuid", "c"]
        if self.d.draw(st.booleans()):
            row["tags"] = ["set", sorted(self.d.draw(st.sets(st.sampled_from(TAGS))))]
        return [*ops, {"op": "insert", "table": "Parent", "row": row}]

    def _mutate_parent(self, mutations: list[Any]) -> list[dict[str, Any]]:
        p = self.pick("Parent")
        if p is None:
            return self.insert_parent()
        return [{"op": "mutate", "table": "Parent", "where": where_uuid(p),
                 "mutations": mutations}]

    def update_parent(self) -> list[dict[str, Any]]:
        p = self.pick("Parent")
        if p is None:
            return self.insert_parent()
        row: dict[str, Any] = {"n": self.d.draw(st.integers(-3, 3))}
        if self.d.draw(st.booleans()):
            row["name"] = self.d.draw(st.sampled_from(NAMES))
        return [{"op": "update", "table": "Parent", "where": where_uuid(p), "row": row}]

    def tags(self) -> list[dict[str, Any]]:
        op = self.d.draw(st.sampled_from(["insert", "delete"]))
        return self._mutate_parent([["tags", op, self.d.draw(st.sampled_from(TAGS))]])

    def opts(self) -> list[dict[str, Any]]:
        k = self.d.draw(st.sampled_from(TAGS))
        if self.d.draw(st.booleans()):
            return self._mutate_parent([["opts", "delete", ["set", [k]]]])
        p = self.pick("Parent")
        if p is None:
            return self.insert_parent()
        v = self.d.draw(st.sampled_from(["1", "2"]))
        return [{"op": "mutate", "table": "Parent", "where": where_uuid(p),
                 "mutations": [["opts", "delete", ["set", [k]]],
                               ["opts", "insert", ["map", [[k, v]]]]]}]

    def small(self) -> list[dict[str, Any]]:
        op = self.d.draw(st.sampled_from(["insert", "delete"]))
        return self._mutate_parent([["small", op, self.d.draw(st.integers(0, 4))]])

    def delete_parent(self) -> list[dict[str, Any]]:
        p = self.pick("Parent")
        if p is None:
            return self.insert_parent()
        return [{"op": "delete", "table": "Parent", "where": where_uuid(p)}]

    def insert_link(self) -> list[dict[str, Any]]:
        p = self.pick("Parent")
        if p is None:
            return self.insert_parent()
        return [{"op": "insert", "table": "Link",
                 "row": {"target": ["uuid", p], "note": "n"}}]

    def delete_link(self) -> list[dict[str, Any]]:
        link = self.pick("Link")
        if link is None:
            return self.insert_link()
        return [{"op": "delete", "table": "Link", "where": where_uuid(link)}]

    def link_by(self) -> list[dict[str, Any]]:
        link, p = self.pick("Link"), self.pick("Parent")
        if link is None or p is None:
            return self.insert_link()
        k = self.d.draw(st.sampled_from(TAGS))
        return [{"op": "mutate", "table": "Link", "where": where_uuid(link),
                 "mutations": [["by", "delete", ["set", [k]]],
                               ["by", "insert", ["map", [[k, ["uuid", p]]]]]]}]

    def add_child(self) -> list[dict[str, Any]]:
        p = self.pick("Parent")
        if p is None:
            return self.insert_parent()
        return [{"op": "insert", "table": "Child", "uuid-name": "c", "row": {"label": "c"}},
                {"op": "mutate", "table": "Parent", "where": where_uuid(p),
                 "mutations": [["children", "insert", ["set", [["named-uuid", "c"]]]]]}]

    def drop_child(self) -> list[dict[str, Any]]:
        c = self.pick("Child")
        if c is None:
            return self.add_child()
        return [{"op": "mutate", "table": "Parent", "where": [],
                 "mutations": [["children", "delete", ["uuid", c]]]}]

    def child_peer(self) -> list[dict[str, Any]]:
        c, p = self.pick("Child"), self.pick("Parent")
        if c is None or p is None:
            return self.add_child()
        return [{"op": "update", "table": "Child", "where": where_uuid(c),
                 "row": {"peer": ["uuid", p]}}]

    def friends(self) -> list[dict[str, Any]]:
        p, q = self.pick("Parent"), self.pick("Parent")
        if p is None or q is None:
            return self.insert_parent()
        op = self.d.draw(st.sampled_from(["insert", "delete"]))
        return [{"op": "mutate", "table": "Parent", "where": where_uuid(p),
                 "mutations": [["friends", op, ["uuid", q]]]}]

    def global_(self) -> list[dict[str, Any]]:
        g = self.pick("Global")
        if g is None:
            return [{"op": "insert", "table": "Global", "row": {"counter": 0}}]
        return [{"op": "mutate", "table": "Global", "where": where_uuid(g),
                 "mutations": [["counter", "+=", 1]]}]


class Replicas(RuleBasedStateMachine):
    @initialize(k=st.integers(2, 4), seed=st.integers(0, 2**16))
    def setup(self, k: int, seed: int) -> None:
        self.replicas = [make_replica(i + 1, seed * 10 + i) for i in range(k)]
        #: messages in flight: (destination, sealed update)
        self.network: list[tuple[int, bytes]] = []
        #: every update a replica acknowledged in the current epoch
        self.acked: list[bytes] = []
        self.steps = 0
        for i, r in enumerate(self.replicas):
            r.add_listener(self._sender(i))

    def _sender(self, i: int) -> Any:
        def send(ev: Any) -> None:
            if ev.update is not None:
                self.acked.append(ev.update)
                for j in range(len(self.replicas)):
                    if j != i:
                        self.network.append((j, ev.update))
        return send

    @rule(data=st.data(), i=st.integers(0, 3))
    def transact_more(self, data: Any, i: int) -> None:
        self.transact(data, i)

    @rule(data=st.data(), i=st.integers(0, 3))
    def transact(self, data: Any, i: int) -> None:
        self.steps += 1
        r = self.replicas[i % len(self.replicas)]
        results = r.transact(Transactions(data, r).draw())
        event("transaction " + ("failed" if any(
            isinstance(x, dict) and "error" in x for x in results) else "committed"))

    @precondition(lambda self: self.network)
    @rule(data=st.data(), duplicate=st.booleans())
    def deliver(self, data: Any, duplicate: bool) -> None:
        n = data.draw(st.integers(0, len(self.network) - 1))
        dest, update = self.network[n] if duplicate else self.network.pop(n)
        self.replicas[dest].apply_update(update)

    @precondition(lambda self: self.network)
    @rule(data=st.data(), i=st.integers(0, 3))
    def deliver_burst(self, data: Any, i: int) -> None:
        """As a node's pump: a burst of updates under hold_changes, those that follow their
        writer's clock queued and merged into the document together; with duplicates, a
        local transaction or a pull answered by the receiver in the middle."""
        dest = i % len(self.replicas)
        r = self.replicas[dest]
        r.hold_changes()
        try:
            for _ in range(data.draw(st.integers(1, 8))):
                mine = [n for n, (d, _) in enumerate(self.network) if d == dest]
                what = data.draw(st.sampled_from(["deliver", "duplicate", "transact", "pull"]))
                if what in ("deliver", "duplicate") and mine:
                    n = data.draw(st.sampled_from(mine))
                    _, update = self.network[n] if what == "duplicate" else self.network.pop(n)
                    r.apply_update(update)
                    if r._queued:
                        event("burst: updates queued")
                elif what == "transact":
                    r.transact(Transactions(data, r).draw())
                elif what == "pull":
                    other = self.replicas[(dest + 1) % len(self.replicas)]
                    other.apply_update(r.diff(other.state_vector()), self_contained=True)
        finally:
            r.release_changes()

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def drop(self, data: Any) -> None:
        self.network.pop(data.draw(st.integers(0, len(self.network) - 1)))

    @rule(i=st.integers(0, 3), keep=st.booleans())
    def keep_recent(self, i: int, keep: bool) -> None:
        """A replica stops (or starts again) keeping its last commits (crdtdb serve
        without peers): pulls from it still end where pycrdt's whole diff does."""
        self.replicas[i % len(self.replicas)].keep_recent = keep

    @rule(i=st.integers(0, 3), j=st.integers(0, 3))
    def anti_entropy(self, i: int, j: int) -> None:
        """As gossip does it: a pull's answer, applied as self-contained. When the answer
        is made of kept commits (Replica.diff), a copy of the puller takes pycrdt's whole
        diff instead, and both end with the same document."""
        a = self.replicas[i % len(self.replicas)]
        b = self.replicas[j % len(self.replicas)]
        recent = a.statistics().recent_diffs
        d = a.diff(b.state_vector())
        if a.statistics().recent_diffs == recent:
            b.apply_update(d, self_contained=True)
            return
        event("pull answered from kept commits")
        twin = Replica.in_memory(b.schema, client_id=b.client_id + 100, epoch=b.epoch,
                                 base=b.base)
        twin.apply_update(b.full_state(), self_contained=True)
        for held in b._parked.values():  # what b holds back goes in with the diff
            twin.apply_update(seal(b.schema_digest, b.epoch, 1, held.update, base=b.base))
        whole = seal(a.schema_digest, a.epoch, a.client_id,
                     a.doc.get_update(b.state_vector()), base=a.base)
        b.apply_update(d, self_contained=True)
        twin.apply_update(whole, self_contained=True)
        assert decode_state_vector(b.state_vector()) == decode_state_vector(
            twin.state_vector())
        assert b.view.raw == twin.view.raw and shown(b) == shown(twin)
        assert b.doc.get_update() == twin.doc.get_update()

    @precondition(lambda self: self.steps >= 12)
    @rule()
    def compact(self) -> None:
        self.steps = 0
        self._converge()
        epoch = self.replicas[0].epoch + 1
        before = [shown(r) for r in self.replicas]
        for r in self.replicas:
            r.rebuild(epoch, release_memory=False)
        for r, rows in zip(self.replicas, before, strict=True):
            assert shown(r) == rows
        # Every replica rebuilt the byte-identical document.
        assert len({r.doc.get_update() for r in self.replicas}) == 1
        # Updates of the old epoch still in flight are refused, never applied.
        for dest, update in self.network:
            with pytest.raises(EpochMismatchError):
                self.replicas[dest].apply_update(update)
        self.network.clear()
        self.acked.clear()

    @precondition(lambda self: self.steps >= 12)
    @rule(data=st.data())
    def compact_by_adoption(self, data: Any) -> None:
        """What a compaction round ends in: one replica cuts, the others take its state."""
        self.steps = 0
        self._converge()
        before = shown(self.replicas[0])
        cutter = self.replicas[data.draw(st.integers(0, len(self.replicas) - 1))]
        cutter.rebuild(release_memory=False)
        for r in self.replicas:
            if r is not cutter:
                heard: list[Any] = []
                r.add_listener(heard.append)
                r.adopt(cutter.full_state())
                r.remove_listener(heard.append)
                assert r.epoch_id == cutter.epoch_id and not heard  # nothing to show
        for r in self.replicas:
            assert shown(r) == before
            assert r.view.raw == cutter.view.raw
        for dest, update in self.network:
            with pytest.raises(EpochMismatchError):
                self.replicas[dest].apply_update(update)
        self.network.clear()
        self.acked.clear()

    def _converge(self) -> None:
        for _ in range(2):
            for a in self.replicas:
                for b in self.replicas:
                    if a is not b:
                        b.apply_update(a.diff(b.state_vector()))

    @invariant()
    def views_are_sound(self) -> None:
        for r in self.replicas:
            check_view(r)

    @invariant()
    def equal_state_vectors_mean_equal_documents(self) -> None:
        """What lets gossip answer a pull between equal state vectors with nothing."""
        for i, a in enumerate(self.replicas):
            for b in self.replicas[i + 1:]:
                if a.in_sync_with(b.state_vector()):
                    assert a.view.raw == b.view.raw, "equal state vectors, other documents"

    def teardown(self) -> None:
        if not hasattr(self, "replicas"):
            return
        self._converge()
        first = self.replicas[0]
        for r in self.replicas[1:]:
            assert shown(r) == shown(first)
            assert r.view.hidden() == first.view.hidden()
            assert sorted(map(str, r.conflicts.active())) == \
                sorted(map(str, first.conflicts.active()))
        for r in self.replicas:
            for update in self.acked:  # nothing acknowledged is missing anywhere
                assert not r.apply_update(update).new
        check_reload(first)
        for kind, n in first.conflicts.seen.items():
            if n:
                event(f"conflict seen: {kind.value}")


TestReplicas = Replicas.TestCase
TestReplicas.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                 derandomize=True, report_multiple_bugs=False,
                                 suppress_health_check=[HealthCheck.too_slow,
                                                        HealthCheck.data_too_large])


@pytest.mark.slow
def test_replicas_explore() -> None:
    """The same machine, not derandomized and much longer (``--slow``)."""
    Machine = type("Explore", (Replicas,), {})
    Machine.TestCase.settings = settings(max_examples=1000, stateful_step_count=80,
                                         deadline=None,
                                         suppress_health_check=list(HealthCheck))
    Machine.TestCase().runTest()


def test_a_replica_that_keeps_no_commits_answers_pulls_with_whole_diffs() -> None:
    a, b = make_replica(1, 1), make_replica(2, 2)
    a.keep_recent = False
    a.transact([{"op": "insert", "table": "Parent", "row": {"name": "x"}}])
    b.apply_update(a.diff(b.state_vector()), self_contained=True)
    assert (a.statistics().recent_diffs, a.statistics().full_diffs) == (0, 1)
    assert shown(a) == shown(b)
    a.keep_recent = True  # kept from here on
    a.transact([{"op": "insert", "table": "Parent", "row": {"name": "y"}}])
    b.apply_update(a.diff(b.state_vector()), self_contained=True)
    assert (a.statistics().recent_diffs, a.statistics().full_diffs) == (1, 1)
    assert shown(a) == shown(b)
