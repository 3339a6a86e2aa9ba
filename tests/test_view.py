"""The view's shortcuts (plain changes, direct changes) against its rules alone."""

from __future__ import annotations

import random
from typing import Any
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.engine.schema import ColumnSchema
from crdtdb.engine.snapshot import Changeset
from crdtdb.replica import View
from crdtdb.replica.view import RowKey
from tests.replica_support import MERGE_SCHEMA

VERSION = "00000000-0000-4000-8000-999999999999"
POOL = {t: [f"0000000{i}-0000-4000-8000-{n:012d}" for n in range(6)]
        for i, t in enumerate(sorted(MERGE_SCHEMA.tables))}


def _datum(col: ColumnSchema, rng: random.Random, uuid: str, existing: set[RowKey],
           clean: bool = False) -> tuple:
    """A random value; ``clean``: one that breaks no rule (references to rows that exist,
    sets within their maximum, hardly ever a duplicate name)."""
    t = col.type

    def atom(base: Any) -> Any:
        if base.ref_table is not None:
            have = sorted(u for (tt, u) in existing if tt == base.ref_table)
            if have and (clean or rng.random() < 0.8):
                return rng.choice(have)
            return rng.choice(POOL[base.ref_table])
        if base.type.value == "integer":
            return rng.randrange(4)
        return rng.choice("abcdefghijklmnop" if clean else "abc")

    if col.name == "_uuid":
        return (uuid,)
    if col.name == "_version":
        return (VERSION,)
    n_max = min(t.n_max, 3)
    n = rng.randint(t.n_min, n_max + (1 if t.n_max == 2 and not clean else 0))
    if clean and t.key.ref_table is not None and not any(
            tt == t.key.ref_table for tt, _ in existing):
        n = 0
    if t.value is None:
        return tuple(sorted({atom(t.key) for _ in range(n)}))
    pairs = {atom(t.key): atom(t.value) for _ in range(n)}
    return tuple(sorted(pairs.items()))


def _row(table: str, uuid: str, rng: random.Random, existing: set[RowKey],
         clean: bool = False) -> tuple:
    return tuple(_datum(c, rng, uuid, existing, clean)
                 for c in MERGE_SCHEMA.tables[table].ordered)


def _batch(rng: random.Random, raw: dict[RowKey, tuple]) -> dict[RowKey, tuple | None]:
    """Random changes, often all clean (then, from a view without conflicts, many of them
    can go direct)."""
    existing = set(raw)
    clean = rng.random() < 0.7
    out: dict[RowKey, tuple | None] = {}
    for _ in range(rng.randint(1, 8)):
        t = rng.choice(sorted(MERGE_SCHEMA.tables))
        u = rng.choice(POOL[t])
        key = (t, u)
        what = rng.random()
        if key in existing and what < 0.3:
            out[key] = None
        elif key in existing and what < 0.6:
            # Change one column only (often a plain one).
            row = list(raw[key])
            i = rng.randrange(2, len(row))
            row[i] = _datum(MERGE_SCHEMA.tables[t].ordered[i], rng, u,
                            existing | set(out), clean)
            out[key] = tuple(row)
        else:
            out[key] = _row(t, u, rng, existing | set(out), clean)
    return out


def _repair(v: View, raw: dict[RowKey, tuple]) -> dict[RowKey, tuple | None]:
    """A batch deleting every row hidden or in conflict (so that the next batch may start
    from a view with none)."""
    bad = set(v.hidden()) | {(c.table, c.uuid) for c in v.conflicts.active()}
    return {key: None for key in sorted(bad) if key in raw}


def _state(v: View) -> Any:
    """Everything the view derives, with the orders readers can see (rows, a target's
    weak referrers)."""
    db = v.rows
    return (v.raw, v._in, v._groups, v.hidden(),
            {t: list(db.iter_rows(t)) for t in MERGE_SCHEMA.tables}, db._indexes, db._strong,
            {k: list(refs.items()) for k, refs in db._weak.items()},
            sorted(map(str, v.conflicts.active())))


def _in_order(c: Changeset) -> list[Any]:
    return [(t, list(rows.items())) for t, rows in c.tables.items()]


def _rules_only(v: View, changes: dict[RowKey, tuple | None]) -> Changeset:
    """What :meth:`View.update` returned before it had shortcuts: one pass of the rules."""
    return v._update_rules(changes)


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_shortcuts_give_what_the_rules_alone_give(seed: int) -> None:
    """Batch after batch of random raw changes: the view with its shortcuts returns the
    changesets (in order) the rules alone return, and ends in the same state, which is
    also what a fresh computation of the raw rows gives."""
    rng = random.Random(seed)
    fast, rules = View(MERGE_SCHEMA), View(MERGE_SCHEMA)
    raw: dict[RowKey, tuple] = {}
    for i in range(10):
        changes = _batch(rng, raw) if i % 2 == 0 else _repair(fast, raw)
        got = fast.update(dict(changes))
        want = _rules_only(rules, dict(changes))
        assert _in_order(got) == _in_order(want)
        assert _state(fast) == _state(rules)
        for key, row in changes.items():
            if row is None:
                raw.pop(key, None)
            else:
                raw[key] = row
    fresh = View(MERGE_SCHEMA)
    fresh.update(raw)
    # (Rows in the order of this history, not of one fresh pass.)
    assert _state(fast)[:4] == _state(fresh)[:4]
    assert {t: dict(r) for t, r in _state(fast)[4].items()} == \
        {t: dict(r) for t, r in _state(fresh)[4].items()}
    assert _state(fast)[8] == _state(fresh)[8]


def test_the_shortcuts_are_taken() -> None:
    """The property above is not vacuous: batches of its kind go direct."""
    rng = random.Random(7)
    v = View(MERGE_SCHEMA)
    raw: dict[RowKey, tuple] = {}
    taken = 0
    real = View._direct

    def counting(self: View, *a: Any) -> bool:
        nonlocal taken
        ok = real(self, *a)
        taken += ok
        return ok

    with mock.patch.object(View, "_direct", counting):
        for i in range(200):
            changes = _batch(rng, raw) if i % 2 == 0 else _repair(v, raw)
            v.update(changes)
            for key, row in changes.items():
                if row is None:
                    raw.pop(key, None)
                else:
                    raw[key] = row
    assert taken >= 50
