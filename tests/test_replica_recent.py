"""The kept commits that answer pulls (crdtdb.replica.recent).

The end-to-end check (a pull answered from kept commits leaves the puller where pycrdt's whole
diff does) is in tests/test_replica_merge.py's state machine; these pin the bookkeeping.
"""

from __future__ import annotations

import itertools
from collections import deque

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from crdtdb.replica.recent import RecentUpdates


def upd(client: int, start: int, end: int) -> bytes:
    return f"{client}:{start}:{end}".encode()


def ranges(parts: list[bytes] | None) -> list[tuple[int, int, int]]:
    assert parts is not None
    return [(int(c), int(s), int(e)) for c, s, e in (p.decode().split(":") for p in parts)]


def held_bytes(r: RecentUpdates) -> int:
    """The bytes of every update ``r`` still references, wherever it keeps them."""
    seen: set[int] = set()
    total = 0
    stack: list[object] = [r.__dict__]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, bytes):
            total += len(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | deque):
            stack.extend(obj)
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, s) for s in obj.__slots__)  # type: ignore[attr-defined]
    return total


def test_a_contiguous_run_answers_any_clock_inside_it() -> None:
    r = RecentUpdates()
    for start, end in ((0, 3), (3, 4), (4, 9)):
        r.add((7, start, end - start), upd(7, start, end))
    assert ranges(r.covering({7: 0}, {7: 9})) == [(7, 0, 3), (7, 3, 4), (7, 4, 9)]
    assert ranges(r.covering({7: 5}, {7: 9})) == [(7, 4, 9)]
    assert ranges(r.covering({7: 3}, {7: 9})) == [(7, 3, 4), (7, 4, 9)]
    assert r.covering({7: 9}, {7: 9}) is None  # nothing to send: pycrdt's (empty) diff


def test_a_hole_a_big_update_or_clocks_moved_elsewhere_fall_back() -> None:
    r = RecentUpdates(max_update_bytes=8)
    r.add((1, 0, 2), upd(1, 0, 2))
    r.add((1, 5, 1), upd(1, 5, 6))  # 2..5 came some other way: the run restarts at 5
    assert r.covering({1: 0}, {1: 6}) is None
    assert ranges(r.covering({1: 5}, {1: 6})) == [(1, 5, 6)]
    r.add((1, 6, 1), b"x" * 9)  # too big to keep: the run ends
    assert r.covering({1: 6}, {1: 7}) is None and len(r) == 0
    r.add((2, 0, 1), upd(2, 0, 1))
    assert r.covering({}, {2: 3}) is None  # the replica has more of 2 than is kept
    assert r.covering({}, {2: 1, 3: 4}) is None  # and nothing at all of 3


def test_overlaps_and_repeats_keep_the_run() -> None:
    r = RecentUpdates()
    r.add((1, 0, 4), upd(1, 0, 4))
    r.add((1, 2, 2), upd(1, 2, 4))  # nothing new: not kept
    r.add((1, 2, 4), upd(1, 2, 6))  # partly new
    assert len(r) == 2
    assert ranges(r.covering({1: 3}, {1: 6})) == [(1, 2, 6)]
    assert ranges(r.covering({1: 1}, {1: 6})) == [(1, 0, 4), (1, 2, 6)]


def test_bounds_evict_the_oldest() -> None:
    r = RecentUpdates(max_updates=3, max_bytes=1000)
    for i in range(5):
        r.add((1, i, 1), upd(1, i, i + 1))
    assert len(r) == 3
    assert r.covering({1: 1}, {1: 5}) is None  # 1..2 was evicted
    assert ranges(r.covering({1: 2}, {1: 5})) == [(1, 2, 3), (1, 3, 4), (1, 4, 5)]
    small = RecentUpdates(max_bytes=12)
    for i in range(4):
        small.add((2, i, 1), upd(2, i, i + 1))  # 5 bytes each
    assert small.total_bytes <= 12 and len(small) == 2


def test_dropped_runs_let_go_of_their_bytes() -> None:
    """A run ended by an update too big to keep, again and again: what is kept, and what
    is still referenced at all, stays within max_bytes (the eviction order holds keys)."""
    r = RecentUpdates(max_bytes=64 * 1024, max_update_bytes=4096)
    for clock in range(6000):
        size = 5000 if clock % 50 == 49 else 2000  # every 50th is too big: the run restarts
        r.add((1, clock, 1), bytes(size))
        assert r.total_bytes <= 64 * 1024
    assert held_bytes(r) == r.total_bytes <= 64 * 1024


@settings(max_examples=300, deadline=None)
@given(adds=st.lists(st.tuples(st.integers(1, 3), st.integers(0, 12), st.integers(1, 4)),
                     max_size=40),
       theirs=st.dictionaries(st.integers(1, 3), st.integers(0, 16)),
       max_updates=st.integers(1, 10))
def test_what_covering_returns_covers_exactly(
        adds: list[tuple[int, int, int]], theirs: dict[int, int], max_updates: int) -> None:
    """Whatever is added (holes, overlaps, repeats), an answer holds, per writer, updates
    that chain without a hole from at most the peer's clock to exactly the replica's, and
    the counts stay within bounds."""
    r = RecentUpdates(max_updates=max_updates)
    mine: dict[int, int] = {}
    for client, start, n in adds:
        if start > mine.get(client, 0):
            mine[client] = start  # clocks that came some other way (a diff of many writers)
        r.add((client, start, n), upd(client, start, start + n))
        mine[client] = max(mine.get(client, 0), start + n)
        assert len(r) <= max_updates
        assert r.total_bytes == held_bytes(r) <= r.max_bytes
    parts = r.covering(theirs, mine)
    event("covered" if parts is not None else "not covered")
    if parts is None:
        return
    by_client: dict[int, list[tuple[int, int]]] = {}
    for client, start, end in ranges(parts):
        by_client.setdefault(client, []).append((start, end))
    for client, clock in mine.items():
        have = theirs.get(client, 0)
        if have >= clock:
            assert client not in by_client
            continue
        got = by_client[client]
        assert got[0][0] <= have and got[-1][1] == clock
        for (_, end), (start, _) in itertools.pairwise(got):
            assert start <= end


def test_a_longer_history_allows_longer_answers() -> None:
    """pycrdt's diff costs more the more items the document has; a merged answer does not."""
    r = RecentUpdates(max_covering=2, history_items_per_part=10)
    for c in range(5):
        r.add((7, c, 1), upd(7, c, c + 1))
    assert r.covering({7: 0}, {7: 5}) is None  # 5 updates > 2 + 5 // 10
    # The same 5 updates in a document of 35 items: 2 + 35 // 10 = 5 allowed.
    assert ranges(r.covering({7: 0, 8: 30}, {7: 5, 8: 30})) == [(7, c, c + 1) for c in range(5)]
    assert r.covering({7: 0, 8: 24}, {7: 5, 8: 24}) is None  # 29 items: 2 + 2 < 5
    with pytest.raises(ValueError):
        RecentUpdates(history_items_per_part=0)
