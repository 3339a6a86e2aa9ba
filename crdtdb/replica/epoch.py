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
    """Where a base was cut: the epoch it replaced and that epoch's clocks at the cut."""

    previous: EpochId
    cut: Mapping[int, int]

    def pack(self, number: int) -> bytes:
        return msgpack.packb([number, self.previous.number, self.previous.base,
                              sorted(self.cut.items())], use_bin_type=True)

    @classmethod
    def unpack(cls, value: Any, number: int) -> EpochOrigin:
        """The origin stored in a base of epoch ``number``; :class:`CorruptUpdateError` if
        it is malformed or names another epoch."""
        try:
            obj = msgpack.unpackb(bytes(value), raw=False, max_ext_len=0, strict_map_key=True)
            own, prev_number, prev_base, cut = obj
            pairs = {int(c): int(k) for c, k in cut}
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptUpdateError(f"malformed epoch origin: {exc}") from None
        if own != number or not isinstance(prev_base, bytes) \
                or not isinstance(prev_number, int) or prev_number >= number:
            raise CorruptUpdateError(f"the base of epoch {number} names epoch {own} "
                                     f"cut from {prev_number}")
        return cls(EpochId(prev_number, prev_base), pairs)


def base_digest(base_update: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=BASE_DIGEST_BYTES, person=b"crdtdb-base")
    h.update(base_update)
    return h.digest()


def covers(origin: EpochOrigin, current: EpochId, current_origin: EpochOrigin | None,
           client: int, own_clock: int) -> bool:
    """Whether a replica of ``client`` in epoch ``current`` (cut at ``current_origin``) whose
    own writes there reach ``own_clock`` loses nothing by moving to the epoch cut at
    ``origin``. Yes if that epoch was cut from ``current`` at or past ``own_clock``. Else
    only if it wrote nothing in ``current`` and either ``current`` is epoch 0 (it never wrote
    anything) or the new epoch is a sibling, cut from the same epoch at least as far into
    this replica's writes there as ``current`` was (those writes are in ``current``'s base).
    Anything further away is refused: whether it holds what ``current``'s base carries of
    this replica's older writes cannot be told from one origin."""
    if origin.previous == current:
        return own_clock <= origin.cut.get(client, 0)
    if own_clock:
        return False
    if current_origin is None:
        return current.number == 0
    return (origin.previous == current_origin.previous
            and origin.cut.get(client, 0) >= current_origin.cut.get(client, 0))
