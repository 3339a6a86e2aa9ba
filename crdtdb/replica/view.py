"""The deterministic, schema-valid view of a merged replica: what readers actually see.

The merged document holds *raw* rows (:mod:`crdtdb.replica.encoding`), and a merge of
concurrent transactions, each valid on its own, can leave them breaking the schema. The view
is a pure function of the raw rows, computed the same way on every node, that always satisfies
the schema. It is defined in two strata, so that it has exactly one answer:

1. From raw values alone: in each index, among rows with the same index values, only the
   smallest uuid may be shown; in a table with ``maxRows``, only the ``maxRows`` smallest
   uuids may be shown.
2. Among the remaining rows, the *greatest* set ``V`` such that every row of ``V`` still
   holds after cleaning its values against ``V``. A row's *shown* value is its raw value with
   each set or map cut to the column's maximum (keeping the first elements in OVSDB order),
   then with every reference to a row outside ``V`` dropped (map pairs whose key or value is
   such a reference go). A row holds when: every column still has its minimum number of
   elements; every index column is shown unchanged (else its uniqueness is unknown); and, in a
   non-root table, some other row of ``V`` references it strongly in its shown values.

Every rule only ever hides more rows as fewer rows are shown, so the greatest ``V`` exists, is
unique, and is found by starting from all rows and removing violators in any order.

Maintenance is incremental and exact: after a batch of raw changes, hidden rows connected to
a changed row through references are put back, then violators are removed from a worklist
seeded with the changed rows, the rows put back and their neighbours. A row outside that region
keeps its status: its inputs either did not change or only gained shown rows.

Shortcuts, while no row is hidden or in conflict (the usual state): a change of no reference,
index value or existence (*plain*), and one that provably hides or changes no row (*direct*:
see ``View._direct``), are made without the rules; the rest of the batch goes through them
afterwards. Each step leaves what a fresh computation gives, so the result is the same
(tests/test_view.py checks it against the rules alone).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter

from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import ColumnSchema, DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import Changeset, Row, RowChange, inserts
from crdtdb.engine.types import UNLIMITED
from crdtdb.replica.conflicts import Conflict, ConflictKind, ConflictLog

RowKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class _Checked:
    """A column whose shown value can differ from its raw value."""

    col: ColumnSchema
    key_table: str | None
    value_table: str | None
    key_strong: bool
    value_strong: bool
    n_max: int
    in_index: bool


class _TableInfo:
    def __init__(self, table: TableSchema):
        self.table = table
        self.index_cols = [tuple(table.columns[c].index for c in ix) for ix in table.indexes]
        in_index = {i for cols in self.index_cols for i in cols}
        checked = []
        for col in table.ordered[2:]:
            t = col.type
            kt = t.key.ref_table
            vt = t.value.ref_table if t.value is not None else None
            limited = t.n_max > 1 and t.n_max < UNLIMITED
            if kt is None and vt is None and not limited:
                continue
            checked.append(_Checked(col, kt, vt, t.key.is_strong_ref, bool(
                t.value is not None and t.value.is_strong_ref), t.n_max, col.index in in_index))
        self.checked = tuple(checked)
        self.refs = tuple(c for c in checked if c.key_table or c.value_table)
        self.is_root = table.is_root
        self.max_rows = table.max_rows


class View:
    """Raw rows in, shown rows out. ``rows`` is the :class:`~crdtdb.engine.Snapshot` to read."""

    def __init__(self, schema: DatabaseSchema, conflicts: ConflictLog | None = None):
        self.schema = schema
        self.conflicts = conflicts if conflicts is not None else ConflictLog()
        #: What readers, monitors and transactions see.
        self.rows = MemoryDatabase(schema)
        self.raw: dict[str, dict[str, Row]] = {t: {} for t in schema.tables}
        self._info = {name: _TableInfo(t) for name, t in schema.tables.items()}
        #: Raw references, reversed: target -> referring table -> uuids of the rows whose raw
        #: value names it. Uuids, not (table, uuid) keys: a target can have 100k referrers
        #: (every logical flow of a datapath), and a key tuple each would cost 56 bytes.
        self._in: dict[RowKey, dict[str, set[str]]] = {}
        #: Rows stratum 1 hides, and why.
        self._s1: dict[RowKey, ConflictKind] = {}
        #: Rows stratum 2 hides, and why.
        self._hidden: dict[RowKey, ConflictKind] = {}
        #: table -> per index: raw index values -> uuids holding them.
        self._groups: dict[str, list[dict[tuple, set[str]]]] = {
            name: [{} for _ in info.index_cols] for name, info in self._info.items()}

    # --- queries ----------------------------------------------------------------------------

    def hidden(self) -> dict[RowKey, ConflictKind]:
        """Rows present in the merged state but not shown, with the reason."""
        return {**self._s1, **self._hidden}

    def is_empty(self) -> bool:
        # The raw tables last: asked on every merged update (Replica._apply_raw), where the
        # walk to the first non-empty one of a Southbound's ~30 was ~1% of its instructions.
        return not (self._in or self._s1 or self._hidden or any(self.raw.values()))

    def is_shown(self, table: str, uuid: str) -> bool:
        return self.rows.get_row(table, uuid) is not None

    # --- the update -------------------------------------------------------------------------

    def update(self, changes: Mapping[RowKey, Row | None], *,
               engine_checked: bool = False) -> Changeset:
        """Take new raw rows (``None``: the row is gone); return what readers saw change.

        ``engine_checked``: the changes are a transaction the engine ran against this view.
        When the view shows every raw row unchanged (no conflict anywhere), the new raw state
        is then the engine's valid result, so the rules are not re-evaluated.
        """
        quiet = not self._s1 and not self._hidden and not self.conflicts.any_active()
        if quiet and not engine_checked:
            if len(changes) == 1:  # (most merged updates: no comprehension for one row)
                [(k, new)] = changes.items()
                if self._plain(k, new):
                    return self._update_plain(changes)
                plain = []
            else:
                plain = [k for k, new in changes.items() if self._plain(k, new)]
                if len(plain) == len(changes):
                    return self._update_plain(changes)
            # The batch in three steps: the plain changes (no rule reacts to them), the
            # direct ones (see _update_direct), then the rest through the rules. Each
            # leaves the raw rows and what the rules keep of them (hidden rows, references,
            # index groups) as a fresh computation would; the rows readers see move once,
            # at the end, by the three changesets merged, in the order one pass of the
            # rules would have moved them (rows and weak referrers keep that order). A
            # pull's answer of 19 chassis reports and a port claim, or a push of a few new
            # flows, mostly skips the rules.
            rest = dict(changes)
            for k in plain:
                del rest[k]
            parts = [self._update_plain({k: changes[k] for k in plain}, apply=False)]
            parts.append(self._update_direct(rest))
            ruled: set[RowKey] = set()
            if rest:
                # Its rules read the rows shown before the batch, as in one pass: a row the
                # steps before changed is, to them, one more changed row of the batch, and
                # where they look at a row, what they find is its change.
                parts.append(self._update_rules(rest, apply=False, touched=ruled))
            out = _in_order(parts, ruled)
            if out:
                self.rows.apply(out)
            return out
        if quiet and engine_checked:
            return self._update_checked(changes)
        return self._update_rules(changes)

    def update_row(self, key: RowKey, new: Row | None) -> Changeset:
        """``update({key: new})``: one row's change (most merged updates), the plain case
        (see :meth:`_update_plain`) without the mapping and the calls around it."""
        t, u = key
        raw = self.raw[t]
        old = raw.get(u)
        if self._s1 or self._hidden or self.conflicts.any_active() or old is None or \
                new is None or not self._plain_change(self._info[t], old, new):
            return self.update({key: new})
        out = Changeset()
        if old is not new and old != new:
            raw[u] = new  # type: ignore[assignment]  (not None: _plain)
            out.tables[t] = {u: RowChange(old, new)}
            self.rows.replace_row(t, u, new)  # type: ignore[arg-type]
        return out

    def _update_checked(self, changes: Mapping[RowKey, Row | None]) -> Changeset:
        """:meth:`_update_rules`'s first pass alone (no rule re-evaluated: see
        :meth:`update`'s ``engine_checked``), for a commit's few rows: the raw rows, the
        reversed references and the index groups kept as there, without what only the rules
        read (the rows that gained or lost a referrer, the touched groups and maxRows
        tables)."""
        olds: dict[RowKey, Row | None] = {}
        raws = self.raw
        infos = self._info
        for key, new in changes.items():
            t, u = key
            raw = raws[t]
            old = raw.get(u)
            if old is new or (old is not None and new is not None and old == new):
                continue
            olds[key] = old
            info = infos[t]
            if info.refs:
                if old is None:
                    # An insert: every target gains this referrer (twice is once).
                    for target in self._targets(info, new):  # type: ignore[arg-type]
                        self._link(target, t, u)
                else:
                    old_targets = set(self._targets(info, old))
                    new_targets = set(self._targets(info, new)) if new is not None else set()
                    for target in old_targets - new_targets:
                        self._unlink(target, t, u)
                    for target in new_targets - old_targets:
                        self._link(target, t, u)
            if new is not None:
                raw[u] = new
            else:
                del raw[u]
                self._hidden.pop(key, None)
            if info.index_cols:
                self._regroup(t, info, u, old, new)
        if not olds:
            return Changeset()
        out = Changeset()
        tables = out.tables
        for key in (sorted(olds) if len(olds) > 1 else olds):
            t, u = key
            rows = tables.get(t)
            if rows is None:
                rows = tables[t] = {}
            rows[u] = RowChange(olds[key], raws[t].get(u))
        self.rows.apply(out)
        return out

    def _update_rules(self, changes: Mapping[RowKey, Row | None], *,
                      apply: bool = True, touched: set[RowKey] | None = None) -> Changeset:
        """:meth:`update` through the rules; ``apply=False``: the rows readers see are left
        to the caller; ``touched``: gets the rows whose shown value was computed (changed
        or not)."""
        olds: dict[RowKey, Row | None] = {}
        dirty: set[RowKey] = set()
        extra: set[RowKey] = set()  # rows the old raw values referenced
        touched_groups: set[tuple[str, int, tuple]] = set()
        max_rows_tables: set[str] = set()
        for key, new in changes.items():
            t, u = key
            raw = self.raw[t]
            old = raw.get(u)
            if old is new or (old is not None and new is not None and old == new):
                continue
            olds[key] = old
            info = self._info[t]
            if info.refs:
                old_targets = set(self._targets(info, old)) if old is not None else set()
                new_targets = set(self._targets(info, new)) if new is not None else set()
                for target in old_targets - new_targets:
                    self._unlink(target, t, u)
                for target in new_targets - old_targets:
                    self._link(target, t, u)
                # Rows that gained or lost this referrer (GC may hide or show them).
                extra.update(old_targets ^ new_targets)
            if new is not None:
                raw[u] = new
            else:
                del raw[u]
                self._hidden.pop(key, None)
            self._regroup(t, info, u, old, new, touched_groups)
            if (old is None) != (new is None) and info.max_rows < UNLIMITED:
                max_rows_tables.add(t)
            dirty.add(key)
        if not dirty:
            return Changeset()

        # Stratum 1: index duplicates and maxRows, from raw values.
        candidates = set(dirty)
        for t, i, k in touched_groups:
            candidates.update((t, u) for u in self._groups[t][i].get(k, ()))
        winners: dict[str, set[str]] = {}
        for t in max_rows_tables:
            winners[t] = set(sorted(self.raw[t])[:self._info[t].max_rows])
            candidates.update((t, u) for u in self.raw[t])
            candidates.update(k for k in self._s1 if k[0] == t)
        for key in candidates:
            kind = self._s1_reason(key, winners)
            if kind != self._s1.get(key):
                if kind is None:
                    del self._s1[key]
                else:
                    self._s1[key] = kind
                dirty.add(key)

        # Stratum 2: put back the hidden rows connected to a change, then remove violators.
        seeds = dirty | extra
        reset = self._reset_region(seeds)
        work = seeds | reset
        for x in seeds | reset:
            t, u = x
            shown_before = self.rows.get_row(t, u) is not None
            candidate = self._candidate(x)
            if not shown_before or not candidate:
                # Maybe shown now, or not any more: its referrers' shown values change
                # (and, in the second case, may now break).
                work.update(self._referrers(x))
            if shown_before and not candidate and u in self.raw[t]:
                # Hidden by stratum 1: the rows it references lost a shown referrer.
                work.update(self._targets(self._info[t], self.raw[t][u]))
        touched = set(work) if touched is None else touched
        touched.update(work)
        clean = self._hide_violators(work, touched)

        # What readers see now, for every row whose shown value may have changed.
        out = Changeset()
        for key in sorted(touched):
            t, u = key
            old_row = self.rows.get_row(t, u)
            if key in clean and self._candidate(key):
                row, conflicts = self.raw[t][u], []
            else:
                row, conflicts = self._shown(key)
            self.conflicts.set_row(t, u, conflicts)
            if row != old_row:
                out.tables.setdefault(t, {})[u] = RowChange(old_row, row)
        if out and apply:
            self.rows.apply(out)
        return out

    def _update_plain(self, changes: Mapping[RowKey, Row | None], *,
                      apply: bool = True) -> Changeset:
        """:meth:`update` for changes that all pass :meth:`_plain` while nothing is hidden or
        in conflict (most remote merges: a column that is no reference and in no index):
        references, index groups and the shown rows' keys stay, so the new raw rows are
        what readers see, swapped in without re-deriving any of it."""
        out = Changeset()
        changed = False  # (what bool(out) would say, without its call and walk)
        # (Most merged updates change one row: no list of it to sort.)
        for key in sorted(changes) if len(changes) > 1 else changes:
            t, u = key
            raw = self.raw[t]
            old, new = raw[u], changes[key]
            if old is new or old == new:
                continue
            raw[u] = new  # type: ignore[assignment]  (not None: _plain)
            out.tables.setdefault(t, {})[u] = RowChange(old, new)
            changed = True
        if changed and apply:
            self.rows.replace(out)
        return out

    def _update_direct(self, rest: dict[RowKey, Row | None]) -> Changeset:
        """Of a batch's changes while nothing is hidden or in conflict, make those whose
        outcome is known without the rules (see :meth:`_direct`), one at a time, each
        checked against the raw rows the ones before it left; they leave ``rest``. The
        rows readers see are left to the caller.
        Inserts first (an update may name a row inserted with it), deletes last (an update
        may drop the last reference to a row deleted with it)."""
        raw = self.raw
        inserts: list[tuple[RowKey, Row]] = []
        updates: list[tuple[RowKey, Row, Row]] = []
        deletes: list[tuple[RowKey, Row]] = []
        for key, new in rest.items():
            old = raw[key[0]].get(key[1])
            if old is None:
                if new is not None:
                    inserts.append((key, new))
            elif new is None:
                deletes.append((key, old))
            else:
                updates.append((key, old, new))
        done: dict[RowKey, RowChange] = {}
        for _ in range(3):  # again while an insert may name one inserted after it
            left = []
            for key, new in inserts:
                if self._direct(key, None, new):
                    done[key] = RowChange(None, new)
                else:
                    left.append((key, new))
            if len(left) == len(inserts):
                break
            inserts = left
        for key, old, new in updates:
            if self._direct(key, old, new):
                done[key] = RowChange(old, new)
        for key, old in deletes:
            if self._direct(key, old, None):
                done[key] = RowChange(old, None)
        out = Changeset()
        for key in sorted(done):
            del rest[key]
            out.tables.setdefault(key[0], {})[key[1]] = done[key]
        return out

    def _direct(self, key: RowKey, old: Row | None, new: Row | None) -> bool:
        """Make one raw change, while nothing is hidden or in conflict, if no rule can hide
        or change any row because of it: then it is shown as stored, and nothing else
        changes. Such a change is an insert into a root table of a row nothing references
        yet, with targets that all exist (a target of any row is shown then) and unique
        index values; an update that keeps its index values and whose new targets exist;
        a delete of a row nothing references. It stops naming no row of a non-root table
        (that row might lose its last strong referrer), keeps its sets within their
        maximum, and its table has no maxRows. False (nothing done) otherwise."""
        t, u = key
        info = self._info[t]
        if info.max_rows < UNLIMITED:
            return False
        groups = self._groups[t]
        raw = self.raw
        if old is None:
            assert new is not None
            if not info.is_root or key in self._in:
                return False
            for cols, g in zip(info.index_cols, groups, strict=True):
                if tuple(new[c] for c in cols) in g:
                    return False
        elif new is None:
            if key in self._in:
                return False
        else:
            for cols in info.index_cols:
                for c in cols:
                    if old[c] != new[c]:
                        return False
        if new is not None:
            for c in info.checked:
                if len(new[c.col.index]) > c.n_max:
                    return False
        if info.refs:
            old_targets = set(self._targets(info, old)) if old is not None else set()
            new_targets = set(self._targets(info, new)) if new is not None else set()
            gained = new_targets - old_targets
            lost = old_targets - new_targets
            for tt, tu in gained:
                if tu not in raw[tt] or tu == u:
                    return False
            for tt, _ in lost:
                if not self._info[tt].is_root:
                    return False
            for target in lost:
                self._unlink(target, t, u)
            for target in gained:
                self._link(target, t, u)
        if new is None:
            del raw[t][u]
        else:
            raw[t][u] = new
        if old is None or new is None:  # (an update keeps its index values, see above)
            self._regroup(t, info, u, old, new)
        return True

    def _link(self, target: RowKey, t: str, u: str) -> None:
        """Reverse references: row ``u`` of table ``t`` now refers to ``target``."""
        by_table = self._in.get(target)
        if by_table is None:
            by_table = self._in[target] = {}
        srcs = by_table.get(t)
        if srcs is None:
            srcs = by_table[t] = set()
        srcs.add(u)

    def _unlink(self, target: RowKey, t: str, u: str) -> None:
        """Reverse references: row ``u`` of table ``t`` no longer refers to ``target``."""
        by_table = self._in.get(target)
        srcs = by_table.get(t) if by_table is not None else None
        if srcs is None:
            return
        srcs.discard(u)
        if not srcs:
            del by_table[t]  # type: ignore[union-attr]
            if not by_table:
                del self._in[target]

    def _regroup(self, t: str, info: _TableInfo, u: str, old: Row | None, new: Row | None,
                 touched: set[tuple[str, int, tuple]] | None = None) -> None:
        """Index groups: row ``u`` of table ``t`` moves from ``old``'s index values to
        ``new``'s (``touched`` gets each group key it left or joined)."""
        groups = self._groups[t]
        for i, cols in enumerate(info.index_cols):
            if old is not None:
                k = tuple(old[c] for c in cols)
                g = groups[i].get(k)
                if g is not None:
                    g.discard(u)
                    if not g:
                        del groups[i][k]
                if touched is not None:
                    touched.add((t, i, k))
            if new is not None:
                k = tuple(new[c] for c in cols)
                groups[i].setdefault(k, set()).add(u)
                if touched is not None:
                    touched.add((t, i, k))

    def _hide_violators(self, work: Iterable[RowKey], touched: set[RowKey]) -> set[RowKey]:
        """Stratum 2's worklist: hide each candidate in ``work`` that violates a rule, and
        recheck its neighbours (adding them to ``touched``) until nothing changes. Returns
        the rows found clean (shown as stored)."""
        queue = deque(work)
        queued = set(queue)
        # Rows whose last check found every column as stored (so shown = raw, no conflict).
        # A row that loses a target later is checked again: hiding a row queues its
        # neighbours, referrers included.
        clean: set[RowKey] = set()
        while queue:
            x = queue.popleft()
            queued.discard(x)
            if not self._candidate(x):
                continue
            kind = self._violation(x, clean)
            if kind is not None:
                self._hidden[x] = kind
                for y in self._neighbors(x):
                    touched.add(y)
                    if y not in queued:
                        queued.add(y)
                        queue.append(y)
        return clean

    def load(self, rows: Mapping[str, dict[str, Row]]) -> Changeset:
        """Fill an empty view with ``rows`` (table -> uuid -> raw row; the dicts are taken
        over, not copied): the same view, conflicts and changeset as :meth:`update` with
        every row inserted at once, in passes over each table instead of a worklist entry per
        row (a node joining from a full state, a replica reopened from its log).

        Only the rows a cheap check cannot clear (stratum 1 candidates, rows of non-root
        tables, rows with a missing target or an oversized set) go through :meth:`update`'s
        worklist; a row the check clears is one that :meth:`update` finds holding, as stored,
        before anything is hidden, so clearing it first is one of the orders its worklist
        may take.
        """
        if not self.is_empty():
            raise ValueError("View.load() needs an empty view")
        # (each table's reference columns grouped once, for _index_raw and _unclear)
        grouped = {t: _Grouped(trows) for t, trows in rows.items()}
        for t, trows in rows.items():
            if trows:
                self.raw[t] = trows  # taken, not copied (100k rows: a dict of 5 MB)
                self._index_raw(t, trows, grouped[t])

        # Stratum 1, on the only rows it can hide.
        candidates: list[RowKey] = []
        winners: dict[str, set[str]] = {}
        for t, trows in rows.items():
            info = self._info[t]
            if len(trows) > info.max_rows:
                winners[t] = set(sorted(self.raw[t])[:info.max_rows])
                candidates.extend((t, u) for u in trows)
                continue
            for groups in self._groups[t]:
                for g in groups.values():
                    if len(g) > 1:
                        candidates.extend((t, u) for u in g)
        for key in candidates:
            kind = self._s1_reason(key, winners)
            if kind is not None:
                self._s1[key] = kind

        # Stratum 2: the cheap check, then update()'s worklist for whatever it leaves.
        work = [key for t, trows in rows.items()
                for key in self._unclear(t, trows, grouped[t])]
        touched = set(work)
        touched.update(self._s1)
        clean = self._hide_violators(work, touched)
        # Rows (or missing targets) with conflicts from before: update() revisits them too.
        touched.update(k for k in self.conflicts.row_keys()
                       if k in self._in or k[1] in self.raw.get(k[0], ()))

        # What readers see: the raw row, except where the worklist or a conflict was.
        special: dict[str, dict[str, Row | None]] = {}
        for key in sorted(touched):
            t, u = key
            if key in clean and self._candidate(key):
                row, conflicts = self.raw[t][u], []
            else:
                row, conflicts = self._shown(key)
            self.conflicts.set_row(t, u, conflicts)
            special.setdefault(t, {})[u] = row
        out = Changeset()
        loaded: dict[str, dict[str, Row]] = {}
        for t in sorted(rows):
            trows = rows[t]
            if not trows:
                continue
            order = sorted(trows)
            shown = special.get(t)
            if shown is None and order == list(trows):
                new_rows = trows.copy()  # already in order (Replica reads it so): a memcpy
            elif shown is None:
                new_rows = dict(zip(order, map(trows.__getitem__, order), strict=True))
            else:
                new_rows = {}
                for u in order:
                    row = shown.get(u, trows[u])
                    if row is not None:
                        new_rows[u] = row
            if new_rows:
                loaded[t] = new_rows
                out.tables[t] = dict(zip(new_rows, inserts(new_rows.values()), strict=True))
        if loaded:
            self.rows.load_rows(loaded)
        return out

    def _index_raw(self, t: str, rows: Mapping[str, Row], grouped: _Grouped) -> None:
        """Reverse references and index groups of rows new to the view (see update()):
        ``grouped``, the rows' uuids by value of each reference column."""
        info = self._info[t]
        for c in info.refs:
            is_set = c.col.type.value is None
            # One lookup of a target's referrer set per distinct target, not per reference,
            # and one set update per distinct value, not per row: most rows of a table refer
            # to the same few rows (every logical flow to its datapath).
            ksets: dict[str, set[str]] = {}
            vsets: dict[str, set[str]] = {}
            for d, uuids in grouped.by_value(c.col.index).items():
                for x in d:
                    k, v = (x, None) if is_set else x
                    if c.key_table is not None:
                        srcs = ksets.get(k)
                        if srcs is None:
                            srcs = ksets[k] = self._referrers_of(c.key_table, k, t)
                        srcs.update(uuids)
                    if c.value_table is not None:
                        srcs = vsets.get(v)
                        if srcs is None:
                            srcs = vsets[v] = self._referrers_of(c.value_table, v, t)
                        srcs.update(uuids)
        for cols, groups in zip(info.index_cols, self._groups[t], strict=True):
            for u, row in rows.items():
                k = tuple(row[c] for c in cols)
                g = groups.get(k)
                if g is None:
                    groups[k] = {u}
                else:
                    g.add(u)

    def _referrers_of(self, target_table: str, target: str, t: str) -> set[str]:
        """The set of ``t``'s rows whose raw value references the target (made if need be)."""
        return self._in.setdefault((target_table, target), {}).setdefault(t, set())

    def _unclear(self, t: str, rows: Mapping[str, Row], grouped: _Grouped) -> list[RowKey]:
        """The rows of ``t`` that :meth:`_violation` might not find holding as stored while
        no row is hidden by stratum 2 yet (its cheap, exact converse: every checked column
        within its maximum and minimum, every target a stratum-1 candidate); ``grouped``,
        the rows' uuids by value of each checked column."""
        info = self._info[t]
        if not info.is_root:
            return [(t, u) for u in rows]
        out = [key for key in self._s1 if key[0] == t]
        if not info.checked:
            return out
        empty: frozenset[str] = frozenset()

        def targets(table: str | None) -> tuple[Mapping[str, Row] | None, Container[str]]:
            if table is None:
                return None, empty
            return self.raw[table], {u for (st, u) in self._s1 if st == table} or empty
        # Per check, one pass over the distinct values of the column (an empty one is never
        # checked): a value clear whatever row holds it (every target there, without the
        # exception for a row's reference to itself) is checked once; only the rows holding
        # another value are checked one by one.
        blocked = {u for _, u in out}
        bad: set[str] = set()
        for c in info.checked:
            n_min, n_max = c.col.type.n_min, c.n_max
            is_set = c.col.type.value is None
            kraw, kbad = targets(c.key_table)
            vraw, vbad = targets(c.value_table)
            for d, uuids in grouped.by_value(c.col.index).items():
                if n_min <= len(d) <= n_max:
                    if _clear(d, None, is_set, kraw, kbad, vraw, vbad):
                        continue
                    bad.update(u for u in uuids
                               if not _clear(d, u, is_set, kraw, kbad, vraw, vbad))
                else:
                    bad.update(uuids)
        if bad:
            out.extend((t, u) for u in rows if u in bad and u not in blocked)
        return out

    def _plain(self, key: RowKey, new: Row | None) -> bool:
        """A change no rule can react to: a row that stays, with the same references and
        index values, and no set over its maximum."""
        t, u = key
        old = self.raw[t].get(u)
        if old is None or new is None:
            return False
        return self._plain_change(self._info[t], old, new)

    @staticmethod
    def _plain_change(info: _TableInfo, old: Row, new: Row) -> bool:
        """:meth:`_plain` of a row that stays, from ``old`` to ``new``."""
        for c in info.checked:
            i = c.col.index
            if (c.key_table or c.value_table or c.in_index) and old[i] != new[i]:
                return False
            if len(new[i]) > c.n_max:
                return False
        for cols in info.index_cols:
            for i in cols:
                if old[i] != new[i]:
                    return False
        return True

    def _reset_region(self, seeds: set[RowKey]) -> set[RowKey]:
        """Un-hide the stratum-2-hidden rows reachable from ``seeds`` through hidden rows."""
        if not self._hidden:
            return set()
        seen = set(seeds)
        region = {x for x in seeds if x in self._hidden}
        grew = True
        while grew:
            grew = False
            for h in self._hidden:
                if h in seen:
                    continue
                t, u = h
                if any(r in seen for r in self._referrers(h)) or any(
                        x in seen for x in self._targets(self._info[t], self.raw[t][u])):
                    seen.add(h)
                    region.add(h)
                    grew = True
        for h in region:
            del self._hidden[h]
        return region

    # --- rules ------------------------------------------------------------------------------

    def _s1_reason(self, key: RowKey, winners: Mapping[str, set[str]]) -> ConflictKind | None:
        t, u = key
        row = self.raw[t].get(u)
        if row is None:
            return None
        info = self._info[t]
        if info.max_rows < UNLIMITED:
            w = winners.get(t)
            if w is None:
                w = set(sorted(self.raw[t])[:info.max_rows])
            if u not in w:
                return ConflictKind.MAX_ROWS
        for i, cols in enumerate(info.index_cols):
            g = self._groups[t][i].get(tuple(row[c] for c in cols), ())
            if len(g) > 1 and min(g) != u:
                return ConflictKind.INDEX_DUPLICATE
        return None

    def _candidate(self, key: RowKey) -> bool:
        """In stratum 2's current set: present, not hidden by stratum 1 nor (yet) stratum 2."""
        return key[1] in self.raw[key[0]] and key not in self._s1 and key not in self._hidden

    def _violation(self, key: RowKey, clean: set[RowKey]) -> ConflictKind | None:
        """Why stratum 2 hides the row, or None; ``clean`` says whether every column is
        shown as stored."""
        t, u = key
        info = self._info[t]
        row = self.raw[t][u]
        as_stored = True
        for c in info.checked:
            d = row[c.col.index]
            if not d:
                continue
            shown, _ = self._clean(c, u, d)
            if shown is not d:
                as_stored = False
            if len(shown) < c.col.type.n_min:
                clean.discard(key)
                return ConflictKind.DANGLING_REQUIRED
            if c.in_index and shown != d:
                clean.discard(key)
                return ConflictKind.DANGLING_INDEX
        if not info.is_root and not self._strongly_referenced(key):
            clean.discard(key)
            return ConflictKind.ORPHAN
        if as_stored:
            clean.add(key)
        else:
            clean.discard(key)
        return None

    def _clean(self, c: _Checked, self_uuid: str, d: tuple) -> tuple[tuple, ConflictKind | None]:
        kind = None
        if len(d) > c.n_max:
            d = d[:c.n_max]
            kind = ConflictKind.SET_SIZE
        if c.key_table is not None or c.value_table is not None:
            kt, vt = c.key_table, c.value_table
            if c.col.type.value is None:
                kept = tuple(a for a in d if self._target_ok(kt, a, self_uuid))
            else:
                kept = tuple(p for p in d
                             if (kt is None or self._target_ok(kt, p[0], self_uuid))
                             and (vt is None or self._target_ok(vt, p[1], self_uuid)))
            if len(kept) != len(d):
                d = kept
                kind = kind or ConflictKind.DANGLING_VALUE
        return d, kind

    def _target_ok(self, table: str, uuid: str, self_uuid: str) -> bool:
        return uuid == self_uuid or self._candidate((table, uuid))

    def _strongly_referenced(self, key: RowKey) -> bool:
        t, u = key
        for src in self._referrers(key):
            if src == key or not self._candidate(src):
                continue
            st, su = src
            row = self.raw[st][su]
            for c in self._info[st].refs:
                d = row[c.col.index]
                if not d:
                    continue
                d = d[:c.n_max]
                if c.key_table == t and c.key_strong:
                    atoms = d if c.col.type.value is None else [p[0] for p in d]
                    if u in atoms:
                        return True
                if c.value_table == t and c.value_strong and any(p[1] == u for p in d):
                    return True
        return False

    def _shown(self, key: RowKey) -> tuple[Row | None, list[Conflict]]:
        t, u = key
        row = self.raw[t].get(u)
        if row is None:
            return None, []
        kind = self._s1.get(key) or self._hidden.get(key)
        if kind is not None:
            return None, [Conflict(kind, t, u, None, self._why(key, kind))]
        info = self._info[t]
        conflicts: list[Conflict] = []
        shown = None
        for c in info.checked:
            d = row[c.col.index]
            if not d:
                continue
            cd, ck = self._clean(c, u, d)
            if ck is not None:
                if shown is None:
                    shown = list(row)
                shown[c.col.index] = cd
                conflicts.append(Conflict(ck, t, u, c.col.name,
                                          f"{len(d) - len(cd)} of {len(d)} elements dropped"))
        return (row if shown is None else tuple(shown)), conflicts

    def _why(self, key: RowKey, kind: ConflictKind) -> str:
        if kind is ConflictKind.INDEX_DUPLICATE:
            return "another row with a smaller uuid has the same index values"
        if kind is ConflictKind.MAX_ROWS:
            return f"table holds more than {self._info[key[0]].max_rows} rows"
        if kind is ConflictKind.ORPHAN:
            return "non-root row that no shown row references strongly"
        if kind is ConflictKind.DANGLING_INDEX:
            return "an index column lost a reference or elements"
        return "a column lost the reference it needs"

    # --- graph ------------------------------------------------------------------------------

    def _targets(self, info: _TableInfo, row: Row) -> Iterator[RowKey]:
        for c in info.refs:
            d = row[c.col.index]
            if not d:
                continue
            if c.col.type.value is None:
                for a in d:
                    yield c.key_table, a  # type: ignore[misc]
            else:
                for k, v in d:
                    if c.key_table is not None:
                        yield c.key_table, k
                    if c.value_table is not None:
                        yield c.value_table, v

    def _referrers(self, key: RowKey) -> Iterator[RowKey]:
        """Rows whose raw value references ``key``."""
        for t, uuids in self._in.get(key, {}).items():
            for u in uuids:
                yield t, u

    def _neighbors(self, key: RowKey) -> Iterable[RowKey]:
        t, u = key
        row = self.raw[t].get(u)
        if row is None:
            return self._referrers(key)
        out = set(self._targets(self._info[t], row))
        out.update(self._referrers(key))
        return out


class _Grouped:
    """The uuids of a table's rows by their value in a column (non-empty values only, each
    list in row order), made on first use: a dict lookup per row (empty values skipped
    without one), where runs of equal values cost a step each: rows in uuid order
    interleave a column's values (100k flows of 200 datapaths: _index_raw ~180 ms by runs,
    the view's whole load ~400 ms)."""

    __slots__ = ("groups", "rows")

    def __init__(self, rows: Mapping[str, Row]):
        self.rows = rows
        self.groups: dict[int, dict[tuple, list[str]]] = {}

    def by_value(self, index: int) -> dict[tuple, list[str]]:
        found = self.groups.get(index)
        if found is not None:
            return found
        rows = self.rows
        col = list(map(itemgetter(index), rows.values()))
        groups: dict[tuple, list[str]] = {}
        if col and col[0] and col[-1] == col[0] and col.count(col[0]) == len(col):
            groups[col[0]] = list(rows)  # (one value throughout, as one datapath's flows)
        else:
            get = groups.get
            for u, d in zip(compress(rows, col), filter(None, col), strict=True):
                g = get(d)
                if g is None:
                    groups[d] = [u]
                else:
                    g.append(u)
        self.groups[index] = groups
        return groups


def _clear(d: tuple, self_uuid: str | None, is_set: bool, kraw: Container[str] | None,
           kbad: Container[str], vraw: Container[str] | None, vbad: Container[str]) -> bool:
    """Whether every target of a reference value is present and not hidden by stratum 1
    (a reference to ``self_uuid``, the row holding it, always is)."""
    if is_set:
        if kraw is not None:
            for a in d:
                if a != self_uuid and (a not in kraw or a in kbad):
                    return False
        return True
    if kraw is None and vraw is None:
        return True
    for k, v in d:
        if (kraw is not None and k != self_uuid and (k not in kraw or k in kbad)) or (
                vraw is not None and v != self_uuid and (v not in vraw or v in vbad)):
            return False
    return True


def _in_order(parts: list[Changeset], ruled: set[RowKey]) -> Changeset:
    """One changeset of the parts of :meth:`View.update`'s steps, in its order (tables,
    then uuids, sorted), as one pass would have returned it. The parts change different
    rows, except the last one's rules, which know the final word on each row in ``ruled``
    (changed since before the batch, or not: then it is left out)."""
    merged: dict[RowKey, RowChange] = {}
    for i, p in enumerate(parts):
        last = i == len(parts) - 1 and ruled
        for t, rows in p.tables.items():
            for u, ch in rows.items():
                merged[t, u] = ch
        if last:
            for key in ruled:
                if key[1] not in p.tables.get(key[0], ()):
                    merged.pop(key, None)
    out = Changeset()
    for key in sorted(merged):
        ch = merged[key]
        if ch.old != ch.new:
            out.tables.setdefault(key[0], {})[key[1]] = ch
    return out
