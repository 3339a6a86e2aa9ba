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
