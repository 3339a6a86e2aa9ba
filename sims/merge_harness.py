"""A replica merging peers' single-column updates, for instruction counts (issue 4).

What sims/bench_replica.py's ``child_merge`` measures, at a size callgrind can run: replica
``a`` holds ``--rows`` Logical_Flow rows and makes single-column overwrites (priority, and
the row's ``_version``), one commit each; replica ``b`` joins from ``a``'s full state, then
applies ``--warm`` of those updates (so its kept recent updates are full and every measured
update evicts one, as in the 20k bench), then ``--updates`` more, one ``apply_update`` at a
time (or ``--hold`` at a time under ``hold_changes``, as a node's receive pump does).

The rows ``b`` ends with, and with ``--check`` every change event it emits, are hashed:
random bytes are seeded, so a change that keeps behaviour keeps the digests.

Per-update instructions: the difference of two runs under callgrind, which leaves start-up,
the load and the warm-up out::

    for n in 500 2000; do PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/cg.$n python -m sims.merge_harness --updates $n; done
    # (total of cg.2000 - total of cg.500) / 1500

Held merges: ``--hold 32 --warm 4480`` and ``--updates 512``/``2048`` (whole bursts), the
difference over 1536. ``--gossip``: the updates go in as push frames through a gossip core
with one peer (a leaf), as a node's pump takes them (without the transport).

The updates are made once and kept in a file in the temporary directory (making them costs
more than merging them): run the largest ``--warm`` + ``--updates`` once outside callgrind
first, or the run that needs more updates makes them under it. ``--profile`` prints
cProfile's view of the measured updates; ``--gc-stats`` the collector's passes over them.

Session 12 (issue 4), instructions per merged update: 206.0k at the start, 157.5k after
(held: 192.2k -> 154.4k). Session 17, ``--gossip --hold 32 --warm 4480``: 170.0k -> 129.4k
(docs/benchmarks.md says what cut it).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import pickle
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crdtdb.engine import DatabaseSchema
from crdtdb.replica import Replica
from crdtdb.testing.ovsdb_server import find_sb_schema
from sims.bench_replica import _load, _overwrite
from sims.serve_harness import _GcStats
from sims.workload import DB


def _updates(schema: DatabaseSchema, rows: int, n: int) -> tuple[bytes, list[bytes]]:
    """``a``'s full state after the load, and ``n`` sealed single-column updates after it."""
    cache = Path(tempfile.gettempdir(), f"merge-harness-{rows}.pickle")
    try:
        full, updates = pickle.loads(cache.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError):
        pass
    else:
        if len(updates) >= n:  # (seeded: a longer run's first n are these n)
            return full, updates[:n]
    a = _load(schema, rows, 1000)
    full = a.full_state()
    updates: list[bytes] = []
    a.add_listener(lambda ev: ev.update and updates.append(ev.update))
    uuids = sorted(u for u, _ in a.iter_rows("Logical_Flow"))
    _overwrite(a, uuids, n, 1, schema.tables["Logical_Flow"].columns["priority"].index)
    assert len(updates) == n
    cache.write_bytes(pickle.dumps((full, updates)))
    return full, updates


def _apply(b: Replica, updates: list[bytes], hold: int,
           merge: Callable[[bytes], object] | None = None) -> None:
    """``hold`` at a time between hold_changes and release_changes (1: neither, unless
    ``merge`` is a gossip core's: a node's pump holds even a batch of one)."""
    if merge is None and hold <= 1:
        for u in updates:
            b.apply_update(u)
        return
    merge = merge or b.apply_update
    hold = max(hold, 1)
    for first in range(0, len(updates), hold):
        b.hold_changes()
        try:
            for u in updates[first:first + hold]:
                merge(u)
        finally:
            b.release_changes()


def _gossip_receiver(schema: DatabaseSchema, b: Replica) -> Callable[[bytes], object]:
    """``merge(frame)``: a push frame into a gossip core replicating ``b`` with one peer
    (a leaf: nothing forwarded), as a node takes it in."""
    from crdtdb.gossip import messages as m
    from crdtdb.gossip.protocol import Gossip

    core = Gossip("receiver", {DB: b}, rng=random.Random(3))
    sender = Gossip("sender", {DB: Replica.in_memory(schema, client_id=9)},
                    rng=random.Random(4))
    core.connected("sender", 0.0)
    core.receive("sender", m.encode(sender.hello()), 0.0)
    receive = core.receive

    def merge(frame: bytes) -> object:
        if receive("sender", frame, 0.0):
            raise RuntimeError("a push was answered (a gap, or a protocol error)")
        return None
    return merge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=10000,
                    help="Logical_Flow rows (more than the updates: each is a first overwrite of "
                    "its row, as in the 20k bench)")
    ap.add_argument("--warm", type=int, default=4500, help="updates merged before measuring")
    ap.add_argument("--updates", type=int, default=2000, help="updates measured")
    ap.add_argument("--hold", type=int, default=1,
                    help="updates merged per hold_changes/release_changes (1: none)")
    ap.add_argument("--gossip", action="store_true",
                    help="updates go in as push frames through a gossip core, --hold at a "
                    "time between hold_changes and release_changes (a node's way)")
    ap.add_argument("--check", action="store_true", help="also hash every change event")
    ap.add_argument("--profile", action="store_true", help="cProfile the measured updates")
    ap.add_argument("--sort", default="tottime", help="cProfile's sort key")
    ap.add_argument("--gc-stats", action="store_true",
                    help="count and time the collector's passes over the measured updates")
    args = ap.parse_args(argv)
    seeded = random.Random(0)
    os.urandom = seeded.randbytes  # uuids, births: the same every run
    path = find_sb_schema()
    if path is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    schema = DatabaseSchema.from_file(path).stored()
    full, updates = _updates(schema, args.rows, args.warm + args.updates)
    b = Replica.in_memory(schema, client_id=2, rng=random.Random(2))
    b.apply_update(full)
    events = hashlib.sha256()
    n_events = 0
    if args.check:
        def on_change(ev: Any) -> None:
            nonlocal n_events
            n_events += 1
            for tname, rows in sorted(ev.changes.tables.items()):
                for uuid, change in sorted(rows.items()):
                    events.update(repr((tname, uuid, change.old, change.new)).encode())
        b.add_listener(on_change)
    merge = None
    if args.gossip:
        from crdtdb.gossip import messages as m

        merge = _gossip_receiver(schema, b)
        updates = [m.encode(m.Push(DB, u, 0)) for u in updates]
    _apply(b, updates[:args.warm], args.hold, merge)
    measured = updates[args.warm:]
    gc.collect()
    passes = _GcStats() if args.gc_stats else None
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    _apply(b, measured, args.hold, merge)
    if passes is not None:
        passes.stop()
    if args.profile:
        prof.disable()
        pstats.Stats(prof).sort_stats(args.sort).print_stats(50)
    rows = hashlib.sha256(repr(sorted(b.iter_rows("Logical_Flow"))).encode())
    print(f"updates {len(measured)} rows {rows.hexdigest()[:16]} "
          f"stats {b.statistics()}")
    if args.check:
        print(f"events {n_events} {events.hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
