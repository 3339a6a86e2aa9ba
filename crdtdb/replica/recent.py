"""The last updates of each writer, kept to answer a peer's pull without a full diff.

A diff from pycrdt (``Doc.get_update(state_vector)``) walks the whole block store and carries
the document's whole delete set, however little the peer lacks: after a few thousand
overwrites that is most of its cost and size, and a hub answers several pulls a second
(py-spy on the central node of a 20-chassis OVN sandbox: 11% of its CPU in
``get_update``; a chassis node's answer to the central node's pull, usually one commit of
its own, took 0.9 ms and 800 bytes). Most pulls lack only the last few commits of a few
writers. Those commits' own updates, merged, are a diff just as good (that answer: ~10 us,
~100 bytes):

* every item past the peer's state vector is in them, when for every writer that is ahead
  they cover its clocks without a hole from the peer's clock to this replica's;
* every delete the peer lacks is in them: a delete travels in the update of the commit that
  made it, and a replica applies an update's items and deletes together (pushes only once
  it has what they delete, see ``Replica._ready``; diffs whole), so a peer that has a
  writer's items up to a clock has the deletes of that writer's commits up to it;
* whatever they delete is in them or already at the peer (the same argument, one writer at
  a time), so the answer is self-contained, as a pull's answer must be.

Where the kept updates do not cover a writer (it arrived in a diff of many writers, was too
big to keep, or was evicted), :meth:`RecentUpdates.covering` says so and the replica asks
pycrdt. Bounded in updates and bytes; the oldest go first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

#: A kept update: ``(first clock, end clock, update, seq)``, a plain tuple (made for every
#: merged update: a NamedTuple's ``__new__`` is a Python call, ~2/3 of ``add``'s time).
_START, _END, _UPDATE, _SEQ = range(4)
_Kept = tuple[int, int, bytes, int]


class RecentUpdates:
    """Single-writer updates by writer, each writer's contiguous in clocks.

    ``max_updates`` and ``max_bytes`` bound what is kept in all; an update over
    ``max_update_bytes`` is not kept (and breaks its writer's run).
    """

    def __init__(self, *, max_updates: int = 4096, max_bytes: int = 8 * 1024 * 1024,
                 max_update_bytes: int = 64 * 1024, max_covering: int = 32,
                 history_items_per_part: int = 256):
        if history_items_per_part < 1:
            raise ValueError(f"history_items_per_part must be >= 1, not {history_items_per_part}")
        self.max_updates = max_updates
        self.max_bytes = max_bytes
        self.max_update_bytes = max_update_bytes
        #: An answer of more updates than this (plus the history's share, below) is left
        #: to pycrdt: merging costs ~10-17 us an update, pycrdt's diff of a short-lived
        #: Southbound ~0.4-0.9 ms whatever the peer lacks (measured on the nodes of a
        #: 20-chassis sandbox), so past a few dozen it is not cheaper (its bytes neither:
        #: the delete set compresses into ranges).
        self.max_covering = max_covering
        #: ...but pycrdt's diff walks every item of the document, deleted ones included, and
        #: carries the whole delete set, which the peer walks again to apply it: its cost
        #: grows with the history, a merged answer's with its updates only. So one more
        #: update is allowed per this many items the replica has (the sum of its clocks).
        #: sims/pull_cost.py (20 writers, a leaf pulling 57 updates' worth): a pycrdt
        #: answer cost the hub ~47 ns and the leaf ~25 ns more per item of history (0.47 ms
        #: and 0.90 ms after 6k items, 5.9 and 3.8 ms after 120k); a merged one ~24 us per
        #: update for both together, whatever the history (0.52 + 0.85 ms for 57 at 6k
        #: items, 0.57 + 1.29 ms at 120k): even at ~42 + items / 330 updates; 32 + items /
        #: 256 leans to merged answers, whose cost stays flat.
        self.history_items_per_part = history_items_per_part
        self._by_client: dict[int, deque[_Kept]] = {}
        #: (writer, seq) of every kept update in the order kept, with those already dropped
        #: (skipped when met): keys only, so a dropped update's bytes go at once.
        self._order: deque[tuple[int, int]] = deque()
        self._count = 0
        self._bytes = 0
        self._seq = 0

    def __len__(self) -> int:
        return self._count

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def add(self, span: tuple[int, int, int], update: bytes) -> None:
        """Keep a single writer's update: ``span`` is (writer, first clock, count)."""
        self.add_all((span,), (update,))

    def add_all(self, spans: Sequence[tuple[int, int, int]], updates: Sequence[bytes]) -> None:
        """:meth:`add` of each update in turn, then the oldest dropped while over the bounds
        (a burst a replica merged: once for all, with the counts in locals, where an
        ``add`` each was ~8% of a merged update's time)."""
        by_client = self._by_client
        order = self._order
        max_update_bytes = self.max_update_bytes
        seq = self._seq
        for (client, start, n), update in zip(spans, updates, strict=True):
            end = start + n
            run = by_client.get(client)
            if run:
                last = run[-1][_END]
                if end <= last:
                    continue  # nothing past what is kept
                if start > last:
                    self._drop_run(client)  # a hole: the kept run no longer leads here
                    run = None
            size = len(update)
            if size > max_update_bytes or n <= 0:
                self._drop_run(client)
                continue
            if run is None:
                run = by_client[client] = deque()
            seq += 1
            run.append((start, end, update if type(update) is bytes else bytes(update), seq))
            order.append((client, seq))
            self._count += 1
            self._bytes += size
        self._seq = seq
        count, total = self._count, self._bytes
        while (count > self.max_updates or total > self.max_bytes) and order:
            oldest, oldest_seq = order.popleft()
            oldest_run = by_client.get(oldest)
            if oldest_run and oldest_run[0][_SEQ] == oldest_seq:
                count -= 1
                total -= len(oldest_run.popleft()[_UPDATE])
                if not oldest_run:
                    del by_client[oldest]
        self._count, self._bytes = count, total
        if len(order) > 2 * self.max_updates:
            self._order = deque(k for k in order if self._is_kept(*k))

    def covering(self, theirs: Mapping[int, int], mine: Mapping[int, int]
                 ) -> list[bytes] | None:
        """The kept updates that hold everything of ``mine`` (this replica's clocks) past
        ``theirs`` (a peer's), oldest first per writer; ``None`` if they do not (or would be
        more than ``max_covering`` and the history's share, see ``history_items_per_part``),
        and for a peer that lacks nothing."""
        limit = self.max_covering + sum(mine.values()) // self.history_items_per_part
        out: list[bytes] = []
        for client, clock in mine.items():
            have = theirs.get(client, 0)
            if have >= clock:
                continue
            run = self._by_client.get(client)
            if not run or run[-1][_END] != clock:
                return None
            picked: list[bytes] = []
            for kept in reversed(run):
                picked.append(kept[_UPDATE])
                if kept[_START] <= have:
                    break
                if len(out) + len(picked) > limit:
                    return None  # too many: pycrdt's diff is as cheap
            else:
                return None  # the run starts past the peer's clock: a hole
            if len(out) + len(picked) > limit:
                return None
            out.extend(reversed(picked))
        return out or None

    def clear(self) -> None:
        self._by_client.clear()
        self._order.clear()
        self._count = 0
        self._bytes = 0

    def _is_kept(self, client: int, seq: int) -> bool:
        run = self._by_client.get(client)
        return run is not None and len(run) > 0 and run[0][_SEQ] <= seq <= run[-1][_SEQ]

    def _drop_run(self, client: int) -> None:
        run = self._by_client.pop(client, None)
        if run:
            self._count -= len(run)
            self._bytes -= sum(len(k[_UPDATE]) for k in run)
