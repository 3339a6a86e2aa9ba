"""The iteration order of OVS's ``shash`` (string hash map), reproduced.

Where ovsdb-server reports only the first of several problems, "first" is the order in which it
walks a JSON object or a table's columns: the order of an ``hmap`` keyed by
``hash_string(name, 0)`` (murmur-style ``mhash``, as built for generic x86-64 and for Debian's
packages), grown and rehashed exactly as ``lib/hmap.c`` does. Reproducing it makes the engine
pick the same error, and name the same "First row" of an index conflict, as ovsdb-server.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

_M32 = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mhash_add(h: int, data: int) -> int:
    if data:
        data = (data * 0xCC9E2D51) & _M32
        data = _rot(data, 15)
        data = (data * 0x1B873593) & _M32
        h ^= data
    h = _rot(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def _mhash_finish(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def hash_bytes(b: bytes, basis: int = 0) -> int:
    h = basis
    n = len(b)
    whole = n - n % 4
    for i in range(0, whole, 4):
        h = _mhash_add(h, int.from_bytes(b[i:i + 4], "little"))
    if n % 4:
        h = _mhash_add(h, int.from_bytes(b[whole:] + b"\0" * (4 - n % 4), "little"))
    return _mhash_finish(h ^ n)


def hash_string(s: str, basis: int = 0) -> int:
    return hash_bytes(s.encode("utf-8"), basis)


def _calc_mask(capacity: int) -> int:
    mask = capacity // 2
    for shift in (1, 2, 4, 8, 16, 32):
        mask |= mask >> shift
    return mask | ((mask & 1) << 1)


@lru_cache(maxsize=4096)
def _order(names: tuple[str, ...]) -> tuple[str, ...]:
    mask = 0
    buckets: list[list[tuple[int, str]]] = [[]]
    for n, name in enumerate(names, 1):
        h = hash_string(name)
        buckets[h & mask].insert(0, (h, name))
        if n // 2 > mask:
            new_mask = _calc_mask(n)
            if new_mask > mask:
                new: list[list[tuple[int, str]]] = [[] for _ in range(new_mask + 1)]
                for bucket in buckets:
                    for node in bucket:
                        new[node[0] & new_mask].insert(0, node)
                buckets, mask = new, new_mask
    return tuple(name for bucket in buckets for _, name in bucket)


def shash_order(names: Iterable[str]) -> tuple[str, ...]:
    """The order ``SHASH_FOR_EACH`` visits ``names`` after they were added in this order."""
    return _order(tuple(names))


def hash_int(x: int, basis: int = 0) -> int:
    """``hash_int`` (``hash_2words`` in the mhash build)."""
    return _mhash_finish(_mhash_add(_mhash_add(x & _M32, 0), basis & _M32) ^ 8)


def _hash_3words(a: int, b: int, c: int) -> int:
    return _mhash_finish(_mhash_add(_mhash_add(_mhash_add(a, 0), b), c) ^ 12)


_JSON_TYPE = {type(None): 0, bool: 1, dict: 3, list: 4, int: 5, float: 6, str: 7}


def json_hash(value: object, basis: int = 0) -> int:
    """``json_hash``: how ovsdb-server hashes a JSON value (monitor ids, request ids)."""
    import struct

    basis &= _M32
    if value is None:
        return hash_int(0 << 8, basis)
    if value is False or value is True:
        return hash_int((2 if value else 1) << 8, basis)
    if isinstance(value, str):
        return hash_string(value, basis)
    if isinstance(value, int):
        return hash_int(value, basis)
    if isinstance(value, float):
        if value.is_integer() and -(2**63) <= value < 2**63:
            return hash_int(int(value), basis)  # OVS parsed it as an integer
        lo, hi = struct.unpack("<II", struct.pack("<d", value))
        return _hash_3words(lo, hi, basis)
    if isinstance(value, list | tuple):
        basis = hash_int(len(value), basis)
        for v in value:
            basis = json_hash(v, basis)
        return basis
    if isinstance(value, dict):
        for k in sorted(value):
            basis = hash_string(k, basis)
            basis = json_hash(value[k], basis)
        return basis
    raise TypeError(f"not a JSON value: {type(value).__name__}")


class OvsHmap:
    """Keys in the iteration order of an OVS ``hmap`` that saw the same inserts and removes."""

    def __init__(self) -> None:
        self._mask = 0
        self._buckets: list[list[tuple[int, object]]] = [[]]
        self._n = 0
        #: The keys in order, kept until the next insert or remove (a server iterates a
        #: session's monitors at every commit).
        self._order: tuple[object, ...] | None = ()

    def insert(self, h: int, key: object) -> None:
        self._order = None
        self._buckets[h & self._mask].insert(0, (h, key))
        self._n += 1
        if self._n // 2 > self._mask:
            new_mask = _calc_mask(self._n)
            if new_mask > self._mask:
                new: list[list[tuple[int, object]]] = [[] for _ in range(new_mask + 1)]
                for bucket in self._buckets:
                    for node in bucket:
                        new[node[0] & new_mask].insert(0, node)
                self._buckets, self._mask = new, new_mask

    def remove(self, h: int, key: object) -> None:
        self._order = None
        bucket = self._buckets[h & self._mask]
        for i, (_, k) in enumerate(bucket):
            if k == key:
                del bucket[i]
                self._n -= 1
                return
        raise KeyError(key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        order = self._order
        if order is None:
            order = self._order = tuple(k for bucket in self._buckets for _, k in bucket)
        return iter(order)

    def __len__(self) -> int:
        return self._n


def ovs_object(pairs: Iterable[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose members serialize in the order ovsdb-server would write them.

    OVS keeps a JSON object in a shash and writes it in hash-table order, which depends on the
    order members were added: ``pairs`` must come in that order.
    """
    items = dict(pairs)
    return {k: items[k] for k in shash_order(items)}
