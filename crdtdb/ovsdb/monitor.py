"""OVSDB monitors: ``monitor`` (update), ``monitor_cond`` (update2) and ``monitor_cond_since``
(update3), with ovsdb-server's rules for what each change looks like on the wire.

A :class:`Monitor` is pure: it turns the database's initial contents, each committed
:class:`~crdtdb.engine.snapshot.Changeset` and each condition change into the JSON "table
updates" a client receives; the server wraps them in notifications.

Rules taken from ovsdb-server (ovsdb/monitor.c, jsonrpc-server.c):
- without "columns" every column but ``_uuid`` is monitored (``_version`` included);
- columns that only appear in a condition are tracked but not sent: a change to them alone
  still produces a (possibly empty) ``modify``;
- update2 ``initial``/``insert`` omit columns holding their default value; ``modify`` carries
  changed columns only, sets and maps as differences, max-1 columns as the new value;
- update (v1) ``old`` holds the changed columns, ``new`` all monitored columns;
- with a condition, a row entering it is an ``insert`` and a row leaving it a ``delete``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crdtdb.engine import data
from crdtdb.engine.collection import collector_paused
from crdtdb.engine.condition import Condition, Function, condition_from_json
from crdtdb.engine.ovshash import ovs_object, shash_order
from crdtdb.engine.ovsjson import Kind, kind
from crdtdb.engine.parser import ARRAY, OBJECT, ObjectParser
from crdtdb.engine.schema import ColumnSchema, DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import Changeset, Row, RowChange, Snapshot
from crdtdb.engine.types import AtomicType, Type
from crdtdb.errors import OvsdbError


class Version(enum.IntEnum):
    """Which monitor request created the monitor; it fixes the update format."""

    V1 = 1  # "monitor" -> "update"
    V2 = 2  # "monitor_cond" -> "update2"
    V3 = 3  # "monitor_cond_since" -> "update3"


class Select(enum.IntFlag):
    NONE = 0
    INITIAL = 1
    INSERT = 2
    DELETE = 4
    MODIFY = 8
    ALL = 15


# Members read per commit, as module globals: on Python 3.11 reading one off its enum class
# (``Select.INSERT``) goes through EnumType's __getattr__ hook, ~1k instructions each
# (five a served commit: 1.1% of its cost, sims/serve_harness.py under callgrind).
_V1 = Version.V1
_V3 = Version.V3
_INSERT = Select.INSERT
_DELETE = Select.DELETE
_MODIFY = Select.MODIFY

_KEY_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def monitor_key(monitor_id: Any) -> str:
    """A hashable key for a JSON monitor id (ids compare as JSON values)."""
    # (json.dumps with options would build an encoder per call; this runs several times
    # per transaction, as request ids are keyed the same way, and most ids are integers)
    if type(monitor_id) is int:
        return str(monitor_id)
    return _KEY_ENCODER.encode(monitor_id)


@dataclass(slots=True)
class _Column:
    column: ColumnSchema
    select: Select
    #: False for a column tracked only because a condition uses it.
    monitored: bool


@dataclass(slots=True)
class MonitorTable:
    table: TableSchema
    columns: list[_Column] = field(default_factory=list)
    select: Select = Select.NONE
    #: ``None`` when the monitor has no condition for this table (v1, or no "where").
    condition: Condition | None = None
    #: Cached per kind of change: the monitored columns that kind sends (see ``send``).
    _send: dict[tuple[Select, bool], tuple[ColumnSchema, ...]] = field(default_factory=dict)
    #: See ``composer`` (emptied with ``_send``).
    _composers: dict[tuple[Select, bool], Callable[[Row], dict[str, Any]]] = field(
        default_factory=dict)
    _all_indexes: tuple[int, ...] = ()
    _kinds: frozenset[Select] = frozenset()
    _kinds_of: Select | None = None

    def kinds(self) -> frozenset[Select]:
        """The kinds of change the client asked to hear about in this table."""
        if self._kinds_of != self.select:
            self._refresh(Select.NONE)
        return self._kinds

    def selects(self, kind_: Select) -> bool:
        """Whether the client asked to hear about this kind of change in this table."""
        return kind_ in self._kinds if self._kinds_of == self.select else self._refresh(kind_)

    def _refresh(self, kind_: Select) -> bool:
        self._kinds = frozenset(k for k in (Select.INITIAL, Select.INSERT, Select.DELETE,
                                            Select.MODIFY) if self.select & k)
        self._kinds_of = self.select
        return kind_ in self._kinds

    def send(self, kind_: Select, by_name: bool = False) -> tuple[ColumnSchema, ...]:
        """Monitored columns whose "select" includes this kind of change (sorted by name
        for updates that ovsdb-server sends with sorted keys)."""
        cols = self._send.get((kind_, by_name))
        if cols is None:
            cols = tuple(c.column for c in self.columns if c.monitored and c.select & kind_)
            if by_name:
                cols = tuple(sorted(cols, key=lambda c: c.name))
            self._send[(kind_, by_name)] = cols
        return cols

    def composer(self, kind_: Select, by_name: bool) -> Callable[[Row], dict[str, Any]]:
        """What an update2 "insert" or "initial" holds for a row, by code made for the
        columns this kind of change sends (see :func:`_make_composer`), remade when they
        change."""
        fn = self._composers.get((kind_, by_name))
        if fn is None:
            fn = self._composers[(kind_, by_name)] = _make_composer(self.send(kind_, by_name))
        return fn

    def tracked_indexes(self) -> tuple[int, ...]:
        """Row positions of every tracked column (a change to any of them is a modify)."""
        if len(self._all_indexes) != len(self.columns):
            self._all_indexes = tuple(c.column.index for c in self.columns)
        return self._all_indexes

    def add_column(self, column: ColumnSchema, select: Select, monitored: bool,
                   syntax: Any) -> None:
        for c in self.columns:
            if c.column is column:
                if monitored and c.monitored:
                    raise data.syntax_error(syntax, f"column {column.name} mentioned more than "
                                                    "once")
                c.select |= select
                c.monitored = c.monitored or monitored
                self._send.clear()
                self._composers.clear()
                return
        self.columns.append(_Column(column, select, monitored))
        self._send.clear()
        self._composers.clear()

    def track_condition_columns(self) -> None:
        if self.condition is None:
            return
        for clause in self.condition.clauses:
            if clause.column is not None:
                self.add_column(clause.column, Select.NONE, False, None)

    def matches(self, row: tuple | None, condition: Condition | None) -> bool:
        """``ovsdb_condition_empty_or_match_any``."""
        if row is None:
            return False
        if condition is None or not condition.clauses:
            return True
        return condition.matches_any(row)


def _parse_select(p: ObjectParser, value: Any, table: str) -> Select:
    sp = ObjectParser(value, f"table {table} select")
    select = Select.NONE
    for name, flag in (("initial", Select.INITIAL), ("insert", Select.INSERT),
                       ("delete", Select.DELETE), ("modify", Select.MODIFY)):
        v = sp.member(name, frozenset({Kind.TRUE, Kind.FALSE}), optional=True)
        if v is None or v:
            select |= flag
    err = sp.finish()
    if err is not None:
        raise err
    return select


class Monitor:
    """One client monitor over one database."""

    def __init__(self, schema: DatabaseSchema, monitor_id: Any, requests: Any, version: Version):
        self.schema = schema
        self.id = monitor_id
        self.version = version
        self.tables: dict[str, MonitorTable] = {}
        #: See _sorted (None: not known yet).
        self._by_name: bool | None = None
        if kind(requests) is not Kind.OBJECT:
            raise data.syntax_error(requests, "monitor-requests must be object")
        # ovsdb-server walks the request object in its hash order and keeps the tables in a
        # hash table of their own: updates list tables in that order (the IDL notifies in it).
        for tname in shash_order(shash_order(requests)):
            value = requests[tname]
            table = schema.tables.get(tname)
            if table is None:
                raise OvsdbError("syntax error", f"no table named {tname}")
            mt = self.tables.setdefault(tname, MonitorTable(table))
            for req in value if kind(value) is Kind.ARRAY else [value]:
                self._parse_request(mt, req)
        for mt in self.tables.values():
            mt.track_condition_columns()

    def _parse_request(self, mt: MonitorTable, req: Any) -> None:
        table = mt.table
        p = ObjectParser(req, f"table {table.name}")
        where = p.member("where", ARRAY, optional=True) if self.version >= Version.V2 else None
        columns = p.member("columns", ARRAY, optional=True)
        select_json = p.member("select", OBJECT, optional=True)
        err = p.finish()
        if err is not None:
            raise err
        select = _parse_select(p, select_json, table.name) if select_json is not None \
            else Select.ALL
        mt.select |= select
        if columns is not None:
            for name in columns:
                if not isinstance(name, str):
                    raise data.syntax_error(columns, "array of column names expected")
                col = table.columns.get(name)
                if col is None:
                    raise data.syntax_error(columns, f"{name} is not a valid column name")
                mt.add_column(col, select, True, columns)
        else:
            for col in table.ovs_ordered:
                if col.index != 0:
                    mt.add_column(col, select, True, None)
        if self.version >= Version.V2:
            # ovsdb-server keeps one condition per table; a later request's wins.
            mt.condition = condition_from_json(table, where or [], None)

    # --- composing updates ----------------------------------------------------------------

    def conditional(self) -> bool:
        """Whether some table's condition can exclude rows (``condition->conditional``)."""
        for mt in self.tables.values():
            c = mt.condition
            if c is not None and c.clauses and not (
                    len(c.clauses) == 1 and c.clauses[0].function is Function.TRUE):
                return True
        return False

    def _sorted(self) -> bool:
        """ovsdb-server pre-serializes update2/update3 of unconditional monitors (shared by
        every client of that monitor) with sorted keys; other updates go out in its
        hash-table order. (Kept until a condition changes: asked on every commit.)"""
        if self._by_name is None:
            self._by_name = self.version >= Version.V2 and not self.conditional()
        return self._by_name

    def _finish(self, out: dict[str, Any], by_name: bool) -> dict[str, Any]:
        if len(out) == 1 and len(next(iter(out.values()))) == 1:
            return out  # one row of one table (a single-row commit): in every order
        if by_name:  # rows' columns were composed in name order already
            return {t: {u: out[t][u] for u in sorted(out[t])} for t in sorted(out)}
        return ovs_object(out.items())

    def _row_update(self, mt: MonitorTable, old: tuple | None, new: tuple | None,
                    initial: bool, cond_old: Condition | None,
                    cond_new: Condition | None, by_name: bool = False) -> Any:
        """The JSON for one row, or ``None`` when the client is not told about it."""
        if initial:
            kind_ = Select.INITIAL
        elif old is None:
            kind_ = Select.INSERT
        elif new is None:
            kind_ = Select.DELETE
        else:
            kind_ = Select.MODIFY
        if self.version >= Version.V2 and mt.condition is not None:
            old_ok = mt.matches(old, cond_old)
            new_ok = mt.matches(new, cond_new)
            if not old_ok and not new_ok:
                return None
            if kind_ in (Select.INITIAL, Select.INSERT):
                if not new_ok:
                    return None
            elif kind_ is Select.MODIFY:
                kind_ = Select.INSERT if not old_ok else (Select.DELETE if not new_ok
                                                          else Select.MODIFY)
            elif not old_ok:
                return None
        if not mt.selects(kind_):
            return None
        changed: set[int] = set()
        if kind_ is Select.MODIFY:
            assert old is not None and new is not None
            changed = {i for i in mt.tracked_indexes() if old[i] != new[i]}
            if not changed:
                return None
        if self.version is Version.V1:
            return _compose_v1(mt, old, new, kind_, changed)
        return _compose_v2(mt, old, new, kind_, changed, by_name)

    def initial(self, snapshot: Snapshot) -> dict[str, Any]:
        """Table updates for the rows present now (empty dict: nothing to send).

        A large dump is built with the cyclic collector paused, its objects then left to
        the oldest generation: a dump is a tree of fresh lists and dicts (no cycles) that
        reference counting frees once it is sent, but the ~1M containers of a 100k-row dump
        trigger ~1000 young and ~7 full collections on the way, each full one walking the
        process (and, unpromoted, the young collection after the pause walks them all
        once). The 100k-flow dump of sims/bench_serve.py, built, encoded and freed: 2.08-2.11
        s of CPU -> 1.13-1.22 s (three alternating runs; paused without promoting: 1.46-1.51
        s). Not a small one: promoting moves the process's young cyclic garbage too, which
        then waits for a full collection that promotions do not bring nearer (CPython 3.11
        counts them in no generation's budget), so a monitor per short-lived connection
        (ovn-nbctl's) would keep it growing."""
        if sum(snapshot.row_count(t) for t in self.tables) < LARGE_DUMP_ROWS:
            return self._initial(snapshot)
        with collector_paused(promote=True):
            return self._initial(snapshot)

    def _initial(self, snapshot: Snapshot) -> dict[str, Any]:
        out: dict[str, Any] = {}
        by_name = self._sorted()
        for tname, mt in self.tables.items():
            if not mt.selects(Select.INITIAL):
                continue
            rows = {}
            if self.version is Version.V1:
                for uuid, row in snapshot.iter_rows(tname):
                    upd = self._row_update(mt, None, row, True, mt.condition, mt.condition)
                    if upd is not None:
                        rows[uuid] = upd
            else:
                # The hot loop of a full dump (100k rows): _compose_v2's "initial", inlined.
                compose = mt.composer(Select.INITIAL, by_name)
                cond = mt.condition if mt.condition is not None and mt.condition.clauses \
                    else None
                for uuid, row in snapshot.iter_rows(tname):
                    if cond is not None and not cond.matches_any(row):
                        continue
                    rows[uuid] = {"initial": compose(row)}
            if rows:
                out[tname] = rows
        return self._finish(out, by_name)

    def changes(self, changeset: Changeset) -> dict[str, Any]:
        """Table updates for one committed transaction (empty dict: nothing to send)."""
        out: dict[str, Any] = {}
        by_name = self._by_name
        if by_name is None:
            by_name = self._sorted()
        # (the changed tables, not the monitored ones: a commit touches few of the many
        # tables a client such as ovn-controller monitors; _finish orders the tables)
        for tname, changes in changeset.tables.items():
            mt = self.tables.get(tname)
            if mt is None or not changes:
                continue
            if self.version is _V1:
                rows = {}
                for uuid, change in changes.items():
                    upd = self._row_update(mt, change.old, change.new, False, None, None)
                    if upd is not None:
                        rows[uuid] = upd
            else:
                rows = self._changes_v2(mt, changes, by_name)
            if rows:
                out[tname] = rows
        if len(out) <= 1 and (not out or len(next(iter(out.values()))) == 1):
            return out  # (_finish's first case, without its call: a single-row commit)
        return self._finish(out, by_name)

    def _changes_v2(self, mt: MonitorTable, changes: Mapping[str, RowChange],
                    by_name: bool) -> dict[str, Any]:
        """``_row_update`` for one table's committed changes (update2/update3), its tests
        hoisted out of the row loop: a conditional monitor (ovn-controller's) drops most
        rows of a commit, and the per-row calls were most of that cost."""
        cond = mt.condition
        match = cond.matches_any if cond is not None and cond.clauses else None
        kinds = mt._kinds if mt._kinds_of == mt.select else mt.kinds()
        rows: dict[str, Any] = {}
        compose = None
        for uuid, change in changes.items():
            old, new = change.old, change.new
            if old is None:
                if new is None or (match is not None and not match(new)):
                    continue
                kind_ = _INSERT
            elif new is None:
                if match is not None and not match(old):
                    continue
                kind_ = _DELETE
            elif match is None:
                kind_ = _MODIFY
            elif match(old):
                kind_ = _MODIFY if match(new) else _DELETE
            elif match(new):
                kind_ = _INSERT
            else:
                continue
            if kind_ not in kinds:
                continue
            changed: set[int] = set()
            if kind_ is _MODIFY:
                changed = {i for i in mt.tracked_indexes()
                           if old[i] != new[i]}  # type: ignore[index]
                if not changed:
                    continue
            elif kind_ is _INSERT:  # (_compose_v2's: every inserted row)
                if compose is None:
                    compose = (mt._composers.get((kind_, by_name))
                               or mt.composer(kind_, by_name))
                rows[uuid] = {"insert": compose(new)}  # type: ignore[arg-type]
                continue
            rows[uuid] = _compose_v2(mt, old, new, kind_, changed, by_name)
        return rows

    def change_conditions(self, requests: Any, snapshot: Snapshot) -> dict[str, Any]:
        """``monitor_cond_change``: install new conditions; returns the rows that entered
        (insert) or left (delete) them. Validates everything before changing anything."""
        if kind(requests) is not Kind.OBJECT:
            raise OvsdbError("syntax error", "monitor-cond-change-requests must be object")
        new_conditions: dict[str, Condition] = {}
        for tname, value in requests.items():
            table = self.schema.tables.get(tname)
            if table is None:
                raise OvsdbError("syntax error", f"no table named {tname}")
            if tname not in self.tables:
                raise OvsdbError("syntax error", f"no table named {tname} in monitor session")
            if kind(value) is not Kind.ARRAY:
                raise OvsdbError("syntax error",
                                 f"table {tname} no monitor-cond-change JSON array")
            for req in value:
                p = ObjectParser(req, f"table {tname}")
                columns = p.member("columns", ARRAY, optional=True)
                where = p.member("where", ARRAY, optional=True)
                err = p.finish()
                if err is not None:
                    raise err
                if columns is not None:
                    raise data.syntax_error(req, "changing columns is unsupported")
                if self.version is Version.V1:
                    continue  # no condition to change; ovsdb-server does not parse it either
                new_conditions[tname] = condition_from_json(table, where or [], None)
        out: dict[str, Any] = {}
        for tname, cond in new_conditions.items():
            mt = self.tables[tname]
            old = mt.condition
            mt.condition = cond
            self._by_name = None
            mt.track_condition_columns()
            if old == cond:
                continue
            rows = {}
            for uuid, row in snapshot.iter_rows(tname):
                upd = self._row_update(mt, row, row, False, old, cond)
                if upd is not None:
                    rows[uuid] = upd
            if rows:
                out[tname] = rows
        return ovs_object(out.items())


#: An initial dump of at least this many rows is built with the collector paused and its
#: objects promoted (see Monitor.initial).
LARGE_DUMP_ROWS = 10_000

#: Composers made, by the identities of their columns (each entry holds its columns, so no
#: identity is reused while it is here); cleared whole when full.
_COMPOSERS: dict[tuple[int, ...], tuple[tuple[ColumnSchema, ...],
                                      Callable[[Row], dict[str, Any]]]] = {}
_MAX_COMPOSERS = 4096


def _make_composer(cols: tuple[ColumnSchema, ...]) -> Callable[[Row], dict[str, Any]]:
    """``{name: datum_to_json(new[i]) for each column if new[i] != its default}`` as
    straight-line code, the converters of the usual types written inline: a served insert
    (a Logical_Flow) made its update2 with a converter call and a comprehension step per
    column. Same keys in the same order, same values.

    Made once per set of columns, not per monitor: compiling one takes ~0.5-0.8 ms, and
    short-lived clients (an ``ovn-nbctl`` per command, each monitoring a dozen tables) made
    them anew on every connection."""
    key = tuple(map(id, cols))
    found = _COMPOSERS.get(key)
    if found is not None:
        return found[1]
    if len(_COMPOSERS) >= _MAX_COMPOSERS:
        _COMPOSERS.clear()
    fn = _compile_composer(cols)
    _COMPOSERS[key] = (cols, fn)
    return fn


def _compile_composer(cols: tuple[ColumnSchema, ...]) -> Callable[[Row], dict[str, Any]]:
    env: dict[str, Any] = {}
    lines = ["def compose(new):", "    out = {}"]
    for n, col in enumerate(cols):
        t = col.type
        env[f"D{n}"] = col.default_datum
        key_uuid = t.key.type is AtomicType.UUID
        if t.value is None and key_uuid:
            value = '["uuid", v[0]] if len(v) == 1 else ["set", [["uuid", a] for a in v]]'
        elif t.is_scalar:
            value = "v[0]"
        elif (t.value is not None and not key_uuid
              and t.value.type is not AtomicType.UUID):
            value = '["map", [[k, x] for k, x in v]]'
        else:
            env[f"F{n}"] = data.to_json_fn(t)
            value = f"F{n}(v)"
        lines += [f"    v = new[{col.index}]", f"    if v != D{n}:",
                  f"        out[{col.name!r}] = {value}"]
    lines.append("    return out")
    exec("\n".join(lines), env)
    fn: Callable[[Row], dict[str, Any]] = env["compose"]
    return fn


def _compose_v1(mt: MonitorTable, old: tuple | None, new: tuple | None, kind_: Select,
                changed: set[int]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    old_json: dict[str, Any] | None = None
    new_json: dict[str, Any] | None = None
    if kind_ & (Select.DELETE | Select.MODIFY):
        old_json = row["old"] = {}
    if kind_ & (Select.INITIAL | Select.INSERT | Select.MODIFY):
        new_json = row["new"] = {}
    for col in mt.send(kind_):
        if old_json is not None and (kind_ is Select.DELETE or col.index in changed):
            assert old is not None
            old_json[col.name] = data.datum_to_json(col.type, old[col.index])
        if new_json is not None:
            assert new is not None
            new_json[col.name] = data.datum_to_json(col.type, new[col.index])
    return row


def _compose_v2(mt: MonitorTable, old: tuple | None, new: tuple | None, kind_: Select,
                changed: set[int], by_name: bool) -> dict[str, Any]:
    if kind_ is Select.DELETE:
        return {"delete": None}
    assert new is not None
    if kind_ is not Select.MODIFY:
        return {"initial" if kind_ is Select.INITIAL else "insert":
                mt.composer(kind_, by_name)(new)}
    diff = {}
    for col in mt.send(kind_, by_name):
        if col.index not in changed:
            continue
        assert old is not None
        diff[col.name] = data.datum_to_json(col.type,
                                            datum_diff(col.type, old[col.index],
                                                       new[col.index]))
    return {"modify": diff}


def datum_diff(type_: Type, old: tuple, new: tuple) -> tuple:
    """``ovsdb_datum_diff``: what update2 sends for a changed column.

    Max-1 columns: the new value. Sets: the symmetric difference. Maps: pairs added or whose
    value changed (with the new value), and removed pairs (with the old value).
    """
    if type_.n_max <= 1:
        return new
    if type_.value is None:
        return tuple(sorted(set(old).symmetric_difference(new)))
    o, n = dict(old), dict(new)
    out = [(k, v) for k, v in n.items() if o.get(k, _ABSENT) != v]
    out.extend((k, v) for k, v in o.items() if k not in n)
    return data.sort_datum(type_, out)


_ABSENT = object()
