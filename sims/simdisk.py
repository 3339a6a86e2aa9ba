"""A simulated disk for a replica's log: a crash loses whatever was not synced.

It offers what :class:`~crdtdb.replica.Replica` uses of a
:class:`~crdtdb.storage.RecordLog` (``append``, ``replay``, ``rewrite``, ``statistics``,
``close``, ``path``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePath


@dataclass
class _Stats:
    bytes: int


class SimLog:
    def __init__(self, name: str):
        self.path = PurePath(f"simdisk:{name}")
        self._records: list[bytes] = []
        self._synced = 0
        self._bytes = 0
        self.closed = False

    def append(self, payload: bytes | bytearray | memoryview, *, sync: bool = True) -> int:
        if self.closed:
            raise OSError(f"{self.path}: closed")
        self._records.append(bytes(payload))
        self._bytes += len(payload)
        if sync:
            self._synced = len(self._records)
        return len(payload)

    def replay(self) -> Iterator[bytes]:
        return iter(list(self._records))

    def rewrite(self, records: Iterable[bytes | bytearray | memoryview]) -> None:
        self._records = [bytes(r) for r in records]
        self._synced = len(self._records)
        self._bytes = sum(len(r) for r in self._records)

    def statistics(self) -> _Stats:
        return _Stats(self._bytes)

    def close(self) -> None:
        self.closed = True

    def crash(self) -> None:
        """The machine lost power: records appended since the last sync are gone."""
        del self._records[self._synced:]
        self._bytes = sum(len(r) for r in self._records)
        self.closed = True

    def reopen(self) -> None:
        self.closed = False
