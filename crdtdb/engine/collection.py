"""Pausing Python's cyclic garbage collector around one large transaction, and setting it
up for a long-running server.

A transaction of many operations (a bulk load's 1000-row inserts, northd writing a
recomputed table) allocates tens of thousands of containers (parsed rows, datums, changes)
that reference counting frees on its own; the collections those allocations trigger only
walk them again. Paused for the transaction and restored after (the next young collection
examines what it left, once): 100k Logical_Flow rows in 1000-row transactions took
0.92-1.01 s instead of 1.13-1.18 s in the engine (three alternating runs). The collector
is only off while the transaction runs, and only if it was on.

Two uses change more than that, on purpose: ``collector_paused(promote=True)`` (a whole
document read, a large monitor dump) leaves the process's young objects in the oldest
generation, and :func:`settle_for_serving` sets a server's young threshold.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

#: Transactions of at least this many operations run with the collector paused.
LARGE_TRANSACTION_OPS = 32


def collection_paused(n_operations: int) -> contextlib.AbstractContextManager[None]:
    """Pause the cyclic collector inside if ``n_operations`` makes a large transaction."""
    if n_operations < LARGE_TRANSACTION_OPS:
        return contextlib.nullcontext()
    return collector_paused()


@contextlib.contextmanager
def collector_paused(*, promote: bool = False) -> Iterator[None]:
    """No cyclic collection inside, if the collector was on (else nothing changes).

    ``promote``: afterwards every tracked object of the process goes to the oldest
    generation unexamined (``gc.freeze()`` then ``gc.unfreeze()``), for code that made a
    million long-lived objects (a replica reading a whole document): the young collection
    the next allocation triggers would walk them all at once. Nothing becomes
    uncollectable, unlike ``gc.freeze()`` alone; young cyclic garbage of the whole process
    waits for the next full collection."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if promote:
            gc.freeze()
            gc.unfreeze()
        gc.enable()


#: The young generation's threshold in a server (CPython's default: 700 allocations net of
#: deallocations). A served commit leaves objects that live for its burst (replies, update
#: notifications, held change events) or for the transaction history (100 commits): at 700
#: the young collections walk them all, and the middle generation's again; at 10,000 most
#: are gone first. sims/serve_harness.py (callgrind): 406.9k -> 399.9k instructions a pipelined
#: insert; 50,000 saved 1% more, but each young collection then walks ~5x as much at once
#: (a pause of milliseconds, which commit-to-update latency would show).
SERVING_YOUNG_THRESHOLD = 10_000


def settle_for_serving() -> None:
    """Collector settings for a server whose databases are loaded: what loading made goes
    to the oldest generation unexamined (as ``collector_paused(promote=True)``), and young
    collections run less often (:data:`SERVING_YOUNG_THRESHOLD`). Nothing becomes
    uncollectable."""
    gc.freeze()
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(SERVING_YOUNG_THRESHOLD, middle, old)
