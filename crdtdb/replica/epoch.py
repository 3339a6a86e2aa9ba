"""Compaction epochs: which history a document belongs to, and what a new one's base covers.

An epoch is named by its number *and* the digest of its base document. Two nodes that rebuilt
under the same number from different states hold documents whose items have the same ids
(the base writer's) and different content; pycrdt would merge them without complaint, so
every sealed update carries the full name and such documents refuse each other.

A base records where it was cut: the epoch it replaced and that epoch's state vector at the
cut (its *origin*). A node still in the old epoch may move to the new one by taking its full
state only if every write of its own that its document holds is in the new one
(:func:`covers`); otherwise those writes exist nowhere in the new epoch, and moving would
lose them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from crdtdb.replica.envelope import CorruptUpdateError

BASE_DIGEST_BYTES = 16
#: The key of a base's origin in the document's meta map (writers' keys there are numbers).
ORIGIN_KEY = "epoch"
#: Epochs a base remembers the cuts of (its origin's and this many before).
MAX_LINEAGE = 32


@dataclass(frozen=True, slots=True, order=True)
class EpochId:
    """An epoch's name; ordered by number, then base digest (the tie-break when two nodes
    started the same number: every node ends up in the same one)."""

    number: int
    #: The digest of the base document; empty for epoch 0 (the empty document).
    base: bytes = b""

    def __str__(self) -> str:
        return f"{self.number}" + (f"/{self.base[:4].hex()}" if self.base else "")


@dataclass(frozen=True, slots=True)
class EpochOrigin:
    """Where a base was cut: the epoch it replaced and that epoch's clocks at the cut; and
    ``earlier``, the same for the epochs before (newest first, at most MAX_LINEAGE), so that
    a replica several epochs behind can tell where its own epoch was cut."""

    previous: EpochId
    cut: Mapping[int, int]
    earlier: tuple[tuple[EpochId, Mapping[int, int]], ...] = ()

    def next(self, previous: EpochId, cut: Mapping[int, int]) -> EpochOrigin:
        """The origin of the epoch cut from this one's at ``cut``."""
        return EpochOrigin(previous, cut,
                           ((self.previous, self.cut), *self.earlier)[:MAX_LINEAGE])

    def cut_of(self, epoch: EpochId) -> Mapping[int, int] | None:
        """The clocks at which ``epoch`` was left on the way to this one (None: not on it)."""
        if epoch == self.previous:
            return self.cut
        return next((cut for e, cut in self.earlier if e == epoch), None)

    def pack(self, number: int) -> bytes:
        return msgpack.packb([number, self.previous.number, self.previous.base,
                              sorted(self.cut.items()),
                              [[e.number, e.base, sorted(c.items())] for e, c in self.earlier]],
                             use_bin_type=True)

    @classmethod
    def unpack(cls, value: Any, number: int) -> EpochOrigin:
        """The origin stored in a base of epoch ``number``; :class:`CorruptUpdateError` if
        it is malformed or names another epoch."""
        try:
            obj = msgpack.unpackb(bytes(value), raw=False, max_ext_len=0, strict_map_key=True)
            own, prev_number, prev_base, cut, earlier = obj
            pairs = {int(c): int(k) for c, k in cut}
            lineage = tuple((EpochId(int(n), bytes(b)), {int(c): int(k) for c, k in cuts})
                            for n, b, cuts in earlier)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptUpdateError(f"malformed epoch origin: {exc}") from None
        if own != number or not isinstance(prev_base, bytes) \
                or not isinstance(prev_number, int) or prev_number >= number \
                or len(lineage) > MAX_LINEAGE:
            raise CorruptUpdateError(f"the base of epoch {number} names epoch {own} "
                                     f"cut from {prev_number}")
        return cls(EpochId(prev_number, prev_base), pairs, lineage)


def base_digest(base_update: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=BASE_DIGEST_BYTES, person=b"crdtdb-base")
    h.update(base_update)
    return h.digest()


def covers(origin: EpochOrigin, current: EpochId, current_origin: EpochOrigin | None,
           client: int, own_clock: int) -> bool:
    """Whether a replica of ``client`` in epoch ``current`` (cut at ``current_origin``) whose
    own writes there reach ``own_clock`` loses nothing by moving to the epoch cut at
    ``origin``. Yes if ``current`` is on the new epoch's lineage and was left at or past
    ``own_clock``. Else only if it wrote nothing in ``current`` and either ``current`` is
    epoch 0 (it never wrote anything) or the new epoch descends from a sibling of
    ``current``, cut from the same epoch at least as far into this replica's writes there as
    ``current`` was (those writes are in ``current``'s base). Anything else is refused:
    whether it holds what ``current``'s base carries of this replica's older writes cannot
    be told."""
    cut = origin.cut_of(current)
    if cut is not None:
        return own_clock <= cut.get(client, 0)
    if own_clock:
        return False
    if current_origin is None:
        return current.number == 0
    theirs = origin.cut_of(current_origin.previous)
    return theirs is not None and \
        theirs.get(client, 0) >= current_origin.cut.get(client, 0)
