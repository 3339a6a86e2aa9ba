"""Proof with real clients: the same client scripts against ovsdb-server 3.1 and crdtdb serve.

Every test starts a real ovsdb-server (``RealOvsdbServer``: new, empty OVN_Northbound and
OVN_Southbound databases on one unix socket) and ``crdtdb serve`` with the same schemas
(``CrdtdbServer``), runs one script of unmodified clients against each, and compares what
the clients printed: ovsdb-client (list-dbs, get-schema, list-tables, list-columns,
transact, dump, monitor, wait), ovn-nbctl and ovn-sbctl (each command's output, then
``show`` and ``list`` of every table), the PyPI ``ovs`` IDL and ovsdbapp.

Normalization hides what differs between two runs of ovsdb-server itself, and only that:

* UUIDs.  ovsdb-client scripts give most inserted rows an explicit "uuid", which is kept as
  is; any other UUID becomes ``<uN>`` in order of first appearance in that output.  For
  ovn-nbctl/ovn-sbctl (which cannot choose UUIDs) every UUID becomes a label derived from
  the row's *content* in the final database (``<Logical_Switch:sw0>``, or ``<NAT#1>`` for
  rows without a unique name: rank of the row's content with its references labelled), so
  the labels do not depend on the order in which a tool prints rows; UUIDs of rows deleted
  by the end of the script become ``<gone-N>`` in order of first appearance.
* ``_version`` values (random on both sides) become ``<version>`` (in ``ovsdb-client
  monitor`` output they are numbered like other UUIDs, which still shows when they change).
* Order, where the tool prints in UUID or hash order (so two ovsdb-server runs differ):
  ``ovn-nbctl show``/``ovn-sbctl show`` walk rows in the IDL's hash order and ports/NATs in
  UUID order, so the indentation tree is sorted level by level; ``list``/``find`` print
  records in hash order, so records are sorted; ``ha-chassis-group-list`` prints a group's
  chassis in UUID order, so they are sorted; sets of references are printed sorted by
  UUID, so after labelling ``[<a>, <b>]`` lists are re-sorted; which row an index
  uniqueness error calls "First" depends on random _uuid/_version values, so the two are
  sorted; the Python IDL's change notifications follow ovn-nbctl's operation order, which
  is random (hash order of its rows), so runs of same-kind events are sorted
  (``test_python_idl_event_order`` checks the order with a deterministic writer).
  Nothing else is sorted.
* The socket path (``SOCK``) and timestamps at the start of the clients' own log lines on
  stderr.

Every client runs with a short ``--timeout`` so that a server that does not answer fails
the test quickly instead of hanging it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import NB_SCHEMA, SB_SCHEMA, need_ovn

from crdtdb.testing.crdtdb_server import CrdtdbServer, RealOvsdbServer, ServerUnderTest

pytestmark = pytest.mark.ovsdb_server

NB = "OVN_Northbound"
SB = "OVN_Southbound"
CLIENTS_DIR = Path(__file__).resolve().parent / "clients"

#: Seconds a client may take for one command before the test fails (--timeout).
CLIENT_TIMEOUT = 5
#: Hard limit for one client process (a hang past --timeout).
PROCESS_TIMEOUT = 15.0

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_VERSION_JSON_RE = re.compile(r'"_version":\["uuid","[0-9a-fA-F-]{36}"\]')
_LOG_PREFIX_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\|\d+\|", re.MULTILINE)

T = TypeVar("T")


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Pair:
    """The reference server and the server under test, both serving NB and SB."""

    real: RealOvsdbServer
    ours: CrdtdbServer

    def both(self, fn: Callable[[ServerUnderTest], T]) -> tuple[T, T]:
        """Run ``fn`` against ovsdb-server, then against crdtdb (one after the other, so a
        failure names the side)."""
        return fn(self.real), fn(self.ours)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    need_ovn("ovsdb-client")
    schemas = [NB_SCHEMA, SB_SCHEMA]
    with RealOvsdbServer(schemas, tmp_path / "real") as real, CrdtdbServer(
        schemas, tmp_path / "crdtdb"
    ) as ours:
        yield Pair(real, ours)
        assert ours.running, f"crdtdb serve died; log:\n{ours.log_tail()}"


# -- running clients -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One client invocation and what it printed."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    def render(self) -> str:
        text = f"$ {self.command}\n[exit {self.returncode}]\n{self.stdout}"
        if self.stderr:
            text += f"[stderr]\n{_LOG_PREFIX_RE.sub('', self.stderr)}"
        return text


def run_client(argv: Sequence[str], *, shown: str | None = None) -> Step:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=PROCESS_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{shlex.join(argv)} hung for {PROCESS_TIMEOUT} s: {exc.stderr!r}")
    return Step(shown or shlex.join(argv[1:]), done.returncode, done.stdout, done.stderr)


def _hide_socket(step: Step, server: ServerUnderTest) -> Step:
    path = str(server.sock_path)
    return Step(step.command, step.returncode, step.stdout.replace(path, "SOCK"),
                step.stderr.replace(path, "SOCK"))


def ovsdb_client(server: ServerUnderTest, command: str, *args: str) -> Step:
    """``ovsdb-client [options] COMMAND SERVER ARGS``; options are the leading ``--x``."""
    opts = [a for a in args if a.startswith("--")]
    rest = [a for a in args if not a.startswith("--")]
    argv = ["ovsdb-client", f"--timeout={CLIENT_TIMEOUT}", *opts, command, server.remote, *rest]
    step = run_client(argv, shown=shlex.join([*opts, command, "SERVER", *rest]))
    return _hide_socket(step, server)


def ctl(tool: str, server: ServerUnderTest, line: str) -> Step:
    argv = [tool, f"--db={server.remote}", f"--timeout={CLIENT_TIMEOUT}", "--no-leader-only",
            *shlex.split(line)]
    return _hide_socket(run_client(argv, shown=line), server)


class Background:
    """A long-running client (``ovsdb-client monitor``) whose stdout a thread collects."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(self.proc.stdout,),
                                        daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)

    def wait_for(self, needle: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                out, err = self.stop()
                pytest.fail(f"{shlex.join(self.argv)}: {needle!r} did not appear within "
                            f"{timeout} s (exit {self.proc.returncode});\nstdout:\n{out}\n"
                            f"stderr:\n{err}")
            time.sleep(0.005)

    def stop(self) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        self._thread.join(timeout=5)
        return self.text, err


# -- normalization ---------------------------------------------------------------------------


def number_uuids(text: str, keep: Collection[str] = ()) -> str:
    """Every UUID not in ``keep`` becomes ``<uN>`` in order of first appearance."""
    text = _VERSION_JSON_RE.sub('"_version":["uuid","<version>"]', text)
    seen: dict[str, str] = {}

    def label(m: re.Match[str]) -> str:
        u = m.group(0).lower()
        if u in keep:
            return u
        return seen.setdefault(u, f"<u{len(seen)}>")

    return UUID_RE.sub(label, text)


def literal_uuids(*scripts: Any) -> set[str]:
    return {u.lower() for u in UUID_RE.findall(json.dumps(scripts))}


def dump_database(server: ServerUnderTest, db_name: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every row of ``db_name``: uuid -> (table, columns without _uuid/_version)."""
    with server.client() as client:
        schema = client.get_schema(db_name)
        tables = sorted(schema["tables"])
        results = client.transact(
            db_name, [{"op": "select", "table": t, "where": []} for t in tables]
        )
    rows: dict[str, tuple[str, dict[str, Any]]] = {}
    for table, result in zip(tables, results, strict=True):
        for row in result["rows"]:
            uuid = row.pop("_uuid")[1]
            row.pop("_version", None)
            rows[uuid] = (table, row)
    return rows


def _canonical(value: Any, labels: dict[str, str]) -> Any:
    """A row value with UUID atoms replaced by labels, sets and maps in a label order."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "uuid":
        return labels.get(value[1], "<dangling>")
    if isinstance(value, list) and len(value) == 2 and value[0] == "set":
        return ["set", sorted((_canonical(v, labels) for v in value[1]), key=json.dumps)]
    if isinstance(value, list) and len(value) == 2 and value[0] == "map":
        pairs = [[_canonical(k, labels), _canonical(v, labels)] for k, v in value[1]]
        return ["map", sorted(pairs, key=json.dumps)]
    return value


def content_labels(rows: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Label every row by content: ``<Table:name>`` when the table's "name" column is a
    unique string, else ``<Table#rank>`` with rank the position of the row's content (its
    references labelled, refined a few rounds) among the table's rows."""
    by_table: dict[str, list[str]] = {}
    for uuid, (table, _) in rows.items():
        by_table.setdefault(table, []).append(uuid)
    fixed: dict[str, str] = {}
    for table, uuids in by_table.items():
        names = [rows[u][1].get("name") for u in uuids]
        if all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names):
            for u, n in zip(uuids, names, strict=True):
                fixed[u] = f"<{table}:{n}>"
    labels = {u: fixed.get(u, f"<{rows[u][0]}>") for u in rows}
    for _ in range(4):
        signature = {
            u: json.dumps(_canonical(["map", sorted(cols.items())], labels), sort_keys=True)
            for u, (_, cols) in rows.items()
            if u not in fixed
        }
        new = dict(fixed)
        for table, uuids in by_table.items():
            free = sorted((u for u in uuids if u not in fixed), key=lambda u: signature[u])
            for rank, u in enumerate(free):
                new[u] = f"<{table}#{rank}>"
        if new == labels:
            break
        labels = new
    return labels


_LABEL_LIST_RE = re.compile(r"\[(<[^\[\]<>]+>(?:, <[^\[\]<>]+>)+)\]")


def relabel(text: str, labels: dict[str, str], gone: dict[str, str]) -> str:
    """Replace UUIDs by labels (unknown ones by ``<gone-N>``, shared across a transcript
    through ``gone``); then re-sort bracketed lists of labels (printed in UUID order)."""
    text = _VERSION_JSON_RE.sub('"_version":["uuid","<version>"]', text)

    def label(m: re.Match[str]) -> str:
        u = m.group(0).lower()
        if u in labels:
            return labels[u]
        return gone.setdefault(u, f"<gone-{len(gone)}>")

    text = UUID_RE.sub(label, text)
    text = re.sub(r"(_version\s+: )\S+", r"\1<version>", text)
    return _LABEL_LIST_RE.sub(lambda m: "[" + ", ".join(sorted(m.group(1).split(", "))) + "]",
                              text)


def sort_records(text: str) -> str:
    """``list``/``find`` output: records (separated by blank lines) in sorted order."""
    records = [r.strip("\n") for r in text.split("\n\n") if r.strip()]
    return "\n\n".join(sorted(records)) + ("\n" if records else "")


def sort_tree(text: str) -> str:
    """``show`` output: sort the children of every node of the indentation tree."""

    def parse(lines: list[str], i: int, depth: int) -> tuple[list[tuple[str, Any]], int]:
        nodes: list[tuple[str, Any]] = []
        while i < len(lines):
            indent = len(lines[i]) - len(lines[i].lstrip(" "))
            if indent < depth:
                break
            head = lines[i]
            children, i = parse(lines, i + 1, indent + 1)
            nodes.append((head, children))
        return nodes, i

    def render(nodes: list[tuple[str, Any]]) -> list[str]:
        out: list[str] = []
        for head, children in sorted(nodes, key=lambda n: (n[0], render(n[1]))):
            out.append(head)
            out.extend(render(children))
        return out

    tree, _ = parse([ln for ln in text.splitlines() if ln.strip()], 0, 0)
    return "".join(f"{ln}\n" for ln in render(tree))


def assert_same(real: str, ours: str, what: str) -> None:
    """Compare normalized transcripts; with $CRDTDB_CLIENT_TRANSCRIPTS set to a directory,
    both are also written there (``<what>.ovsdb-server.txt``, ``<what>.crdtdb.txt``)."""
    out_dir = os.environ.get("CRDTDB_CLIENT_TRANSCRIPTS")
    if out_dir:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", what)[:100]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / f"{stem}.ovsdb-server.txt").write_text(real)
        (Path(out_dir) / f"{stem}.crdtdb.txt").write_text(ours)
    if real == ours:
        return
    diff = "".join(difflib.unified_diff(real.splitlines(True), ours.splitlines(True),
                                        "ovsdb-server", "crdtdb serve", n=2))
    lines = [ln if len(ln) <= 400 else ln[:400] + "...\n" for ln in diff.splitlines(True)]
    if len(lines) > 120:
        lines = [*lines[:120], f"... ({len(lines) - 120} more diff lines)\n"]
    pytest.fail(f"{what}: crdtdb serve differs from ovsdb-server:\n{''.join(lines)}",
                pytrace=False)


# -- ovsdb-client ----------------------------------------------------------------------------


SCHEMA_COMMANDS: list[tuple[str, ...]] = [
    ("get-schema",),
    ("get-schema-version",),
    ("get-schema-cksum",),
    ("list-tables",),
]


def _schema_script(server: ServerUnderTest, db: str,
                   commands: Sequence[tuple[str, ...]]) -> str:
    steps = []
    for args in commands:
        options = [a for a in args if a.startswith("--")]
        command, *rest = (a for a in args if not a.startswith("--"))
        steps.append(ovsdb_client(server, command, *options, db, *rest).render())
    return "\n".join(steps)


def test_ovsdb_client_list_dbs(pair: Pair) -> None:
    real, ours = pair.both(lambda s: ovsdb_client(s, "list-dbs").render())
    assert_same(real, ours, "ovsdb-client list-dbs")
    assert ours.splitlines()[2:] == [NB, SB, "_Server"]


@pytest.mark.parametrize("db", [NB, SB, "_Server"])
def test_ovsdb_client_schema_commands(pair: Pair, db: str) -> None:
    real, ours = pair.both(lambda s: _schema_script(s, db, SCHEMA_COMMANDS))
    assert_same(real, ours, f"ovsdb-client schema commands on {db}")




@pytest.mark.parametrize("db", [NB, SB, "_Server"])
def test_ovsdb_client_list_columns(pair: Pair, db: str) -> None:
    commands = [("list-columns",), ("--format=json", "list-columns")]
    real, ours = pair.both(lambda s: _schema_script(s, db, commands))
    assert_same(real, ours, f"ovsdb-client list-columns on {db}")


#: Transactions for ovsdb-client transact/dump/monitor.  Rows that later steps name carry an
#: explicit "uuid" (kept by normalization, so row order in dumps and updates is the same on
#: both sides); a few use named-uuid only, to exercise server-chosen UUIDs.
LS1 = "11111111-0000-4000-8000-000000000001"
LS2 = "11111111-0000-4000-8000-000000000002"
LS3 = "11111111-0000-4000-8000-000000000003"
LSP1 = "22222222-0000-4000-8000-000000000001"
LSP2 = "22222222-0000-4000-8000-000000000002"
ACL1 = "33333333-0000-4000-8000-000000000001"
CH1 = "44444444-0000-4000-8000-000000000001"
EN1 = "55555555-0000-4000-8000-000000000001"

TRANSACT_SCRIPT: list[list[Any]] = [
    [NB, {"op": "insert", "table": "NB_Global", "row": {"name": "global"}}],
    [NB,
     {"op": "insert", "table": "Logical_Switch_Port", "uuid": LSP1,
      "row": {"name": "p1", "addresses": ["set", ["00:00:00:00:00:01 10.0.0.1"]],
              "options": ["map", [["requested-chassis", "ch1"]]]}},
     {"op": "insert", "table": "Logical_Switch_Port", "uuid": LSP2, "uuid-name": "p2",
      "row": {"name": "p2", "tag_request": 7, "enabled": False}},
     {"op": "insert", "table": "Logical_Switch", "uuid": LS1,
      "row": {"name": "ls1", "ports": ["set", [["uuid", LSP1], ["named-uuid", "p2"]]],
              "other_config": ["map", [["subnet", "10.0.0.0/24"], ["mcast_snoop", "true"]]]}}],
    [NB, {"op": "insert", "table": "Logical_Switch", "uuid": LS2, "row": {"name": "ls2"}},
     {"op": "insert", "table": "ACL", "uuid": ACL1, "uuid-name": "a",
      "row": {"priority": 1000, "direction": "from-lport", "match": "ip4",
              "action": "allow-related", "severity": "info", "log": True}},
     {"op": "mutate", "table": "Logical_Switch", "where": [["name", "==", "ls2"]],
      "mutations": [["acls", "insert", ["set", [["named-uuid", "a"]]]]]}],
    [NB, {"op": "insert", "table": "Address_Set",
          "row": {"name": "as1", "addresses": ["set", ["10.0.0.2", "10.0.0.1"]]}}],
    [NB, {"op": "update", "table": "Logical_Switch", "where": [["_uuid", "==", ["uuid", LS1]]],
          "row": {"external_ids": ["map", [["k", "v"]]]}},
     {"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "p2"]],
      "mutations": [["tag_request", "+=", 1], ["addresses", "insert", "dynamic"]]}],
    [NB, {"op": "select", "table": "Logical_Switch", "where": [["name", "==", "ls1"]]}],
    [NB, {"op": "select", "table": "Logical_Switch_Port", "where": [],
          "columns": ["name", "tag_request", "enabled"]}],
    [NB, {"op": "wait", "table": "Logical_Switch", "where": [["name", "==", "ls1"]],
          "columns": ["name"], "until": "==", "rows": [{"name": "ls1"}], "timeout": 0},
     {"op": "comment", "comment": "crdtdb differential"}],
    # Failures: constraint, referential integrity, syntax, wait, abort, unknown database.
    [NB, {"op": "insert", "table": "Logical_Switch", "row": {"name": "ls3"}},
     {"op": "insert", "table": "ACL", "row": {"priority": 70000, "direction": "to-lport",
                                              "match": "1", "action": "drop"}}],
    [NB, {"op": "insert", "table": "Address_Set", "row": {"name": "as1"}}],
    [NB, {"op": "delete", "table": "Logical_Switch_Port", "where": [["name", "==", "p1"]]},
     {"op": "insert", "table": "Logical_Switch", "row": {
         "name": "ls4", "ports": ["uuid", "99999999-0000-4000-8000-000000000009"]}}],
    [NB, {"op": "insert", "table": "No_Such_Table", "row": {}}],
    [NB, {"op": "select", "table": "Logical_Switch", "where": [["nope", "==", 1]]}],
    [NB, {"op": "wait", "table": "Logical_Switch", "where": [["name", "==", "ls1"]],
          "columns": ["name"], "until": "!=", "rows": [{"name": "ls1"}], "timeout": 0}],
    [NB, {"op": "insert", "table": "Logical_Switch", "row": {"name": "never"}},
     {"op": "abort"}],
    [NB, {"op": "delete", "table": "Logical_Switch", "where": [["name", "==", "ls2"]]},
     {"op": "select", "table": "ACL", "where": [], "columns": ["priority"]}],
    [NB, {"op": "insert", "table": "Logical_Switch", "uuid": LS3, "row": {"name": "ls3"}}],
    ["No_Such_Database", {"op": "comment", "comment": "x"}],
    ["_Server", {"op": "delete", "table": "Database", "where": []}],
    ["_Server", {"op": "select", "table": "Database", "where": [["name", "==", NB]],
                 "columns": ["name", "model", "connected", "leader", "cid", "sid", "index"]}],
    [SB, {"op": "insert", "table": "Encap", "uuid": EN1, "uuid-name": "e",
          "row": {"type": "geneve", "ip": "192.0.2.1", "chassis_name": "ch1",
                  "options": ["map", [["csum", "true"]]]}},
     {"op": "insert", "table": "Chassis", "uuid": CH1,
      "row": {"name": "ch1", "hostname": "h1", "encaps": ["named-uuid", "e"]}}],
    [SB, {"op": "insert", "table": "SB_Global", "row": {}},
     {"op": "insert", "table": "SB_Global", "row": {}}],
    [SB, {"op": "insert", "table": "Chassis", "row": {"name": "ch1", "hostname": "dup"}}],
]


def _run_transactions(server: ServerUnderTest, script: list[list[Any]]) -> list[Step]:
    return [ovsdb_client(server, "transact", json.dumps(txn)) for txn in script]


_INDEX_ROWS_RE = re.compile(r"First (row, with UUID <u\d+>, .*?\.)  Second "
                            r"(row, with UUID <u\d+>, .*?\.)")


def sort_index_error_rows(text: str) -> str:
    """Which row an index-uniqueness error calls "First" depends on a comparison of the
    rows' columns including _uuid and _version (random on both sides): sort the two."""

    def fix(m: re.Match[str]) -> str:
        a, b = sorted((m.group(1), m.group(2)))
        return f"First {a}  Second {b}"

    return _INDEX_ROWS_RE.sub(fix, text)


def test_ovsdb_client_transact(pair: Pair) -> None:
    keep = literal_uuids(TRANSACT_SCRIPT)

    def script(server: ServerUnderTest) -> str:
        steps = _run_transactions(server, TRANSACT_SCRIPT)
        return sort_index_error_rows(number_uuids("\n".join(s.render() for s in steps), keep))

    real, ours = pair.both(script)
    assert_same(real, ours, "ovsdb-client transact script")


DUMP_COMMANDS: list[tuple[str, ...]] = [
    ("dump", NB),
    ("dump", SB),
    ("--format=json", "dump", NB),
    ("--format=csv", "dump", SB),
    ("dump", NB, "Logical_Switch"),
    ("dump", NB, "Logical_Switch_Port", "name", "addresses", "tag_request"),
    ("--format=list", "dump", SB, "Chassis"),
    ("--format=html", "dump", NB, "ACL"),
    ("dump", "_Server", "Database", "name", "model", "connected", "leader", "cid", "sid",
     "index"),
]


def _dump_script(server: ServerUnderTest, commands: Sequence[tuple[str, ...]]) -> str:
    _run_transactions(server, TRANSACT_SCRIPT)
    steps = []
    for args in commands:
        options = [a for a in args if a.startswith("--")]
        command, *rest = (a for a in args if not a.startswith("--"))
        steps.append(ovsdb_client(server, command, *options, *rest).render())
    return number_uuids("\n".join(steps), literal_uuids(TRANSACT_SCRIPT))


def test_ovsdb_client_dump(pair: Pair) -> None:
    real, ours = pair.both(lambda s: _dump_script(s, DUMP_COMMANDS))
    assert_same(real, ours, "ovsdb-client dump after the transact script")


def test_ovsdb_client_dump_server_schema_text(pair: Pair) -> None:
    real, ours = pair.both(lambda s: ovsdb_client(s, "dump", "_Server").render())
    assert_same(number_uuids(real), number_uuids(ours), "ovsdb-client dump _Server")


#: Monitor scripts: rows carry explicit UUIDs, so ovsdb-client prints the rows of one update
#: in the same (hash) order on both sides and nothing needs sorting.
MONITOR_SETUP = [NB, {"op": "insert", "table": "Logical_Switch", "uuid": LS1,
                      "row": {"name": "ls1", "other_config": ["map", [["a", "1"]]]}}]
MONITOR_SCRIPT: list[list[Any]] = [
    [NB, {"op": "insert", "table": "Logical_Switch", "uuid": LS2, "row": {"name": "ls2"}}],
    [NB, {"op": "update", "table": "Logical_Switch", "where": [["name", "==", "ls1"]],
          "row": {"other_config": ["map", [["a", "2"], ["b", "3"]]]}}],
    [NB, {"op": "insert", "table": "Logical_Switch_Port", "uuid": LSP1,
          "row": {"name": "p1"}},
     {"op": "insert", "table": "Logical_Switch_Port", "uuid": LSP2,
      "row": {"name": "p2", "addresses": ["set", ["a", "b"]]}},
     {"op": "mutate", "table": "Logical_Switch", "where": [["name", "==", "ls2"]],
      "mutations": [["ports", "insert", ["set", [["uuid", LSP1], ["uuid", LSP2]]]]]}],
    [NB, {"op": "mutate", "table": "Logical_Switch_Port", "where": [["name", "==", "p2"]],
          "mutations": [["addresses", "delete", "a"], ["addresses", "insert", "c"]]}],
    [NB, {"op": "comment", "comment": "no change: no update"}],
    [NB, {"op": "update", "table": "Logical_Switch", "where": [["name", "==", "ls2"]],
          "row": {"name": "ls2-renamed"}}],
    [NB, {"op": "delete", "table": "Logical_Switch", "where": [["name", "==", "ls1"]]}],
    [NB, {"op": "mutate", "table": "Logical_Switch", "where": [],
          "mutations": [["ports", "delete", ["uuid", LSP1]]]}],
    [NB, {"op": "insert", "table": "Logical_Switch", "uuid": LS3, "row": {"name": "END"}}],
]

MONITORS: dict[str, tuple[str, ...]] = {
    "monitor-json": ("--format=json", "monitor", NB, "Logical_Switch",
                     "name,other_config,ports"),
    "monitor-table": ("monitor", NB, "Logical_Switch"),
    "monitor-all-csv": ("--format=csv", "monitor", NB, "ALL"),
    "monitor-cond-json": ("--format=json", "monitor-cond", NB,
                          '[["name","!=","ls2"]]', "Logical_Switch", "name,ports"),
    "monitor-cond-since": ("--format=json", "monitor-cond-since", NB, "[true]",
                           "Logical_Switch", "name,other_config"),
    "monitor-all-json": ("--format=json", "monitor", NB, "ALL"),
}


def _monitor_script(server: ServerUnderTest, args: tuple[str, ...]) -> str:
    ovsdb_client(server, "transact", json.dumps(MONITOR_SETUP))
    options = [a for a in args if a.startswith("--")]
    command, *rest = (a for a in args if not a.startswith("--"))
    monitor = Background(["ovsdb-client", f"--timeout={CLIENT_TIMEOUT}", *options, command,
                          server.remote, *rest])
    try:
        # Every monitor covers Logical_Switch, whose initial contents (ls1) prove that the
        # monitor is registered; END is inserted last, and updates arrive in order.
        monitor.wait_for("ls1")
        for step in _run_transactions(server, MONITOR_SCRIPT):
            assert step.returncode == 0, step.render()
        monitor.wait_for("END")
    finally:
        out, err = monitor.stop()
    err = "\n".join(ln for ln in err.splitlines() if "terminating with signal" not in ln)
    text = f"{out}[stderr]\n{err}".replace(str(server.sock_path), "SOCK")
    return number_uuids(text, literal_uuids(MONITOR_SCRIPT, MONITOR_SETUP))


_LAST_ID_RE = re.compile(r"^last_id: (<u\d+>)", re.MULTILINE)


@pytest.mark.parametrize("name", sorted(MONITORS))
def test_ovsdb_client_monitor(pair: Pair, name: str) -> None:
    real, ours = pair.both(lambda s: _monitor_script(s, MONITORS[name]))
    if name == "monitor-cond-since":
        # A standalone ovsdb-server keeps no transaction history: every update3 says the
        # zero id. crdtdb keeps one, as a clustered ovsdb-server does: each update carries
        # its own transaction's id (tests/test_core_transcripts.py checks those semantics
        # against a clustered server's transcript).
        ids = _LAST_ID_RE.findall(ours)
        assert len(ids) == len(set(ids)) >= 5 and "<u0>" not in ids, ours
        real, ours = (_LAST_ID_RE.sub("last_id: <txn>", x) for x in (real, ours))
    assert_same(real, ours, f"ovsdb-client {shlex.join(MONITORS[name])}")


def test_ovsdb_client_wait(pair: Pair) -> None:
    def script(server: ServerUnderTest) -> str:
        return "\n".join([
            ovsdb_client(server, "wait", NB, "connected").render(),
            ovsdb_client(server, "wait", SB, "added").render(),
        ])

    real, ours = pair.both(script)
    assert_same(real, ours, "ovsdb-client wait")


# -- ovn-nbctl / ovn-sbctl -------------------------------------------------------------------


NBCTL_SCRIPT = CLIENTS_DIR / "nbctl.script"
SBCTL_SCRIPT = CLIENTS_DIR / "sbctl.script"


def _script_lines(path: Path) -> list[str]:
    lines = (ln.strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _ctl_transcript(tool: str, server: ServerUnderTest, script: Path, db_name: str,
                    extra: Sequence[str]) -> str:
    steps = [ctl(tool, server, line) for line in _script_lines(script)]
    steps += [ctl(tool, server, line) for line in extra]
    labels = content_labels(dump_database(server, db_name))
    gone: dict[str, str] = {}
    out = []
    for step in steps:
        stdout = relabel(step.stdout, labels, gone)
        stderr = relabel(step.stderr, labels, gone)
        verb = next((w for w in shlex.split(step.command) if not w.startswith("-")), "")
        if verb == "show":
            stdout = sort_tree(stdout)
        elif verb == "ha-chassis-group-list":
            # One group here: its chassis come in UUID order, each a blank-line paragraph.
            group, _, members = stdout.partition("\n")
            stdout = f"{group}\n{sort_records(members)}"
        elif verb in ("list", "find"):
            stdout = sort_records(stdout)
        out.append(Step(step.command, step.returncode, stdout, stderr).render())
    return "\n".join(out)


def _tables(schema_path: Path) -> list[str]:
    return sorted(json.loads(schema_path.read_text())["tables"])


def test_ovn_nbctl_script(pair: Pair) -> None:
    need_ovn("ovn-nbctl")
    extra = ["show", *(f"list {t}" for t in _tables(NB_SCHEMA))]
    real, ours = pair.both(lambda s: _ctl_transcript("ovn-nbctl", s, NBCTL_SCRIPT, NB, extra))
    assert "[exit 0]" in real and "switch <Logical_Switch:sw0> (sw0)" in real, real
    assert_same(real, ours, "ovn-nbctl script")


def test_ovn_sbctl_script(pair: Pair) -> None:
    need_ovn("ovn-sbctl")
    extra = ["show", *(f"list {t}" for t in _tables(SB_SCHEMA))]
    real, ours = pair.both(lambda s: _ctl_transcript("ovn-sbctl", s, SBCTL_SCRIPT, SB, extra))
    assert "Chassis ch1" in real, real
    assert_same(real, ours, "ovn-sbctl script")


# -- Python IDL and ovsdbapp -----------------------------------------------------------------


def _idl_module() -> Any:
    return pytest.importorskip("ovs.db.idl")


class _RecordingIdl:
    """Builds an ``ovs.db.idl.Idl`` subclass that records its change notifications."""

    @staticmethod
    def make(remote: str, schema_path: Path, tables: Sequence[str]) -> Any:
        idl_mod = _idl_module()

        class Recording(idl_mod.Idl):  # type: ignore[misc, name-defined]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self.events: list[tuple[str, str, str]] = []

            def notify(self, event: str, row: Any, updates: Any = None) -> None:
                table = row._table.name
                name = getattr(row, "name", "?")
                self.events.append((event, table, str(name)))

        helper = idl_mod.SchemaHelper(location=str(schema_path))
        for table in tables:
            helper.register_table(table)
        return Recording(remote, helper, leader_only=False)


def _idl_run_until(idl: Any, condition: Callable[[], bool], what: str,
                   max_iterations: int = 200) -> None:
    """Drive the IDL loop (bounded): run, then block on the poller for at most 20 ms."""
    import ovs.poller

    for _ in range(max_iterations):
        idl.run()
        if condition():
            return
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(20)
        poller.block()
    pytest.fail(f"IDL: {what} did not happen within {max_iterations} iterations")


def _idl_commit(idl: Any, txn: Any, max_iterations: int = 200) -> Any:
    """Transaction.commit_block(), bounded."""
    import ovs.poller

    idl_mod = _idl_module()
    for _ in range(max_iterations):
        status = txn.commit()
        if status != idl_mod.Transaction.INCOMPLETE:
            return status
        idl.run()
        poller = ovs.poller.Poller()
        idl.wait(poller)
        txn.wait(poller)
        poller.timer_wait(20)
        poller.block()
    pytest.fail(f"IDL: commit still incomplete after {max_iterations} iterations")


def _idl_names(idl: Any, table: str) -> list[str]:
    return sorted(row.name for row in idl.tables[table].rows.values())


def _idl_scenario(server: ServerUnderTest) -> str:
    """Connect, insert/update/delete through the IDL, see ovn-nbctl's writes from another
    connection, and record what the IDL saw."""
    need_ovn("ovn-nbctl")
    idl_mod = _idl_module()
    idl = _RecordingIdl.make(server.remote, NB_SCHEMA,
                             ["Logical_Switch", "Logical_Switch_Port", "NB_Global"])
    log: list[str] = []
    try:
        _idl_run_until(idl, lambda: idl.has_ever_connected(), "initial connection")
        log.append(f"connected; switches {_idl_names(idl, 'Logical_Switch')}")

        txn = idl_mod.Transaction(idl)
        ls = txn.insert(idl.tables["Logical_Switch"])
        ls.name = "idl-sw0"
        ls.other_config = {"subnet": "10.1.0.0/24"}
        port = txn.insert(idl.tables["Logical_Switch_Port"])
        port.name = "idl-p0"
        port.addresses = ["00:00:00:00:00:10 10.1.0.10"]
        ls.ports = [port]
        log.append(f"insert: {_idl_commit(idl, txn)}")
        log.append(f"switches {_idl_names(idl, 'Logical_Switch')}")

        # Another client writes; the IDL must see it.
        step = ctl("ovn-nbctl", server, "ls-add nbctl-sw1 -- lsp-add nbctl-sw1 nbctl-p1")
        log.append(f"ovn-nbctl: exit {step.returncode} {step.stderr.strip()}")
        _idl_run_until(idl, lambda: "nbctl-sw1" in _idl_names(idl, "Logical_Switch"),
                       "seeing ovn-nbctl's switch")
        log.append(f"switches {_idl_names(idl, 'Logical_Switch')}; "
                   f"ports {_idl_names(idl, 'Logical_Switch_Port')}")

        # Update (with the IDL's verify) and a conflicting verify.
        txn = idl_mod.Transaction(idl)
        (row,) = (r for r in idl.tables["Logical_Switch"].rows.values()
                  if r.name == "nbctl-sw1")
        row.verify("other_config")
        row.other_config = {"from": "idl"}
        log.append(f"update: {_idl_commit(idl, txn)}")
        step = ctl("ovn-nbctl", server, "get Logical_Switch nbctl-sw1 other_config")
        log.append(f"ovn-nbctl get: {step.stdout.strip()}")

        txn = idl_mod.Transaction(idl)
        (row,) = (r for r in idl.tables["Logical_Switch"].rows.values() if r.name == "idl-sw0")
        row.verify("other_config")
        step = ctl("ovn-nbctl", server, "set Logical_Switch idl-sw0 other_config:x=y")
        row.other_config = {"lost": "update"}
        log.append(f"conflicting verify: {_idl_commit(idl, txn)}")
        _idl_run_until(idl, lambda: any(r.other_config.get("x") == "y" for r in
                                        idl.tables["Logical_Switch"].rows.values()),
                       "seeing the conflicting write")

        # Delete from the IDL; ovn-nbctl sees it.
        txn = idl_mod.Transaction(idl)
        (row,) = (r for r in idl.tables["Logical_Switch"].rows.values() if r.name == "idl-sw0")
        row.delete()
        log.append(f"delete: {_idl_commit(idl, txn)}")
        log.append(f"ovn-nbctl ls-list: {ctl('ovn-nbctl', server, 'ls-list').stdout!r}")
        log.append(f"switches {_idl_names(idl, 'Logical_Switch')}; "
                   f"ports {_idl_names(idl, 'Logical_Switch_Port')}")
        # The IDL notifies in the order of the tables and rows in each update message;
        # ovn-nbctl's operation order is random (see test_python_idl_event_order).
        log.append("events (sorted within each run of one kind):")
        log.extend(_sort_bursts(idl.events))
    finally:
        idl.close()
    return number_uuids("\n".join(log))


def _sort_bursts(events: list[tuple[str, str, str]]) -> list[str]:
    """Events of one update are consecutive 'create'/'update'/'delete's; the order within a
    run of same-kind events is the update message's order: sort it."""
    out: list[str] = []
    run: list[str] = []
    last = ""
    for event in events:
        if event[0] != last and run:
            out.extend(sorted(run))
            run = []
        run.append(f"  {event}")
        last = event[0]
    return out + sorted(run)


def test_python_idl(pair: Pair) -> None:
    real, ours = pair.both(_idl_scenario)
    assert "insert: success" in real, real
    assert_same(real, ours, "ovs Python IDL scenario")


def test_python_idl_event_order(pair: Pair) -> None:
    def scenario(server: ServerUnderTest) -> str:
        idl = _RecordingIdl.make(server.remote, NB_SCHEMA,
                                 ["Logical_Switch", "Logical_Switch_Port", "NB_Global"])
        try:
            _idl_run_until(idl, lambda: idl.has_ever_connected(), "initial connection")
            # Another client inserts in the order NB_Global, Logical_Switch_Port,
            # Logical_Switch (the reverse of the tables' sorted order).
            with server.client() as client:
                result = client.transact(NB, [
                    {"op": "insert", "table": "NB_Global", "row": {"name": "g"}},
                    {"op": "insert", "table": "Logical_Switch_Port", "uuid-name": "p",
                     "row": {"name": "p"}},
                    {"op": "insert", "table": "Logical_Switch",
                     "row": {"name": "s", "ports": ["named-uuid", "p"]}}])
                assert all("uuid" in r for r in result), result
            _idl_run_until(idl, lambda: len(idl.events) >= 3, "three creates")
            return "\n".join(str(e) for e in idl.events)
        finally:
            idl.close()

    real, ours = pair.both(scenario)
    assert_same(real, ours, "ovs Python IDL event order")


def _ovsdbapp_scenario(server: ServerUnderTest) -> str:
    need_ovn("ovn-nbctl")
    pytest.importorskip("ovsdbapp")
    from ovsdbapp.backend.ovs_idl import connection
    from ovsdbapp.schema.ovn_northbound import impl_idl

    class Api(impl_idl.OvnNbApiIdlImpl):  # type: ignore[misc]
        # ovsdbapp keeps the first connection of a Backend class in a class attribute and
        # reuses it for every later instance: a fresh subclass per server.
        _ovsdb_connection = None

    log: list[str] = []
    idl = connection.OvsdbIdl.from_server(server.remote, NB)
    conn = connection.Connection(idl=idl, timeout=CLIENT_TIMEOUT)
    api = Api(conn)
    try:
        api.ls_add("app-sw0", other_config={"a": "b"}).execute(check_error=True)
        with api.transaction(check_error=True) as txn:
            txn.add(api.ls_add("app-sw1"))
            txn.add(api.lsp_add("app-sw1", "app-p1", addresses=["00:00:00:00:00:20"]))
            txn.add(api.lr_add("app-lr0"))
        log.append(f"ls_list {sorted(r.name for r in api.ls_list().execute(check_error=True))}")
        log.append(f"lsp_list {[r.name for r in api.lsp_list('app-sw1').execute()]}")
        api.db_set("Logical_Switch", "app-sw0", ("external_ids", {"k": "v"})).execute(
            check_error=True)
        log.append(f"db_get {api.db_get('Logical_Switch', 'app-sw0', 'external_ids').execute()}")

        step = ctl("ovn-nbctl", server, "ls-add nbctl-sw2 -- lsp-add nbctl-sw2 nbctl-p2")
        log.append(f"ovn-nbctl: exit {step.returncode}")
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while "nbctl-sw2" not in {r.name for r in api.tables["Logical_Switch"].rows.values()}:
            if time.monotonic() > deadline:
                pytest.fail("ovsdbapp did not see ovn-nbctl's switch")
            time.sleep(0.01)
        log.append(f"sees nbctl-sw2 ports "
                   f"{[p.name for p in api.lookup('Logical_Switch', 'nbctl-sw2').ports]}")
        api.ls_del("app-sw0").execute(check_error=True)
        api.lsp_del("nbctl-p2").execute(check_error=True)
        show = UUID_RE.sub("<uuid>", ctl("ovn-nbctl", server, "show").stdout)
        log.append(f"ovn-nbctl show:\n{sort_tree(show)}")
        found = api.db_find_rows("Logical_Switch").execute(check_error=True)
        log.append(f"db_find {sorted(r.name for r in found)}")
    finally:
        conn.stop(timeout=CLIENT_TIMEOUT)
    return number_uuids("\n".join(log))


def test_ovsdbapp(pair: Pair) -> None:
    real, ours = pair.both(_ovsdbapp_scenario)
    assert_same(real, ours, "ovsdbapp scenario")



# -- the CrdtdbServer helper itself ---------------------------------------------------------


def test_crdtdb_server_helper(tmp_path: Path) -> None:
    """CrdtdbServer: extra tcp remote, --data-dir across a restart, clean SIGTERM exit."""
    tools = need_ovn("ovn-nbctl")
    schemas = [NB_SCHEMA, SB_SCHEMA]
    data_dir = tmp_path / "data"
    with CrdtdbServer(schemas, tmp_path / "run1", data_dir=data_dir,
                      remotes=["ptcp:0:127.0.0.1"]) as server:
        assert server.remote == f"unix:{server.sock_path}" and server.pid
        tcp = server.wait_for_tcp()
        done = run_client([tools["ovn-nbctl"], f"--db={tcp}", f"--timeout={CLIENT_TIMEOUT}",
                           "ls-add", "kept"])
        assert done.returncode == 0, done.render()
    assert server.returncode == 0, server.log_tail()
    assert "shutting down" in server.log_tail()
    with CrdtdbServer(schemas, tmp_path / "run2", data_dir=data_dir) as server:
        listed = ctl("ovn-nbctl", server, "ls-list")
        assert "(kept)" in listed.stdout, (listed.render(), server.log_tail())


def test_crdtdb_server_helper_reports_startup_failure(tmp_path: Path) -> None:
    from crdtdb.testing.ovsdb_server import OvsdbServerError

    bad = tmp_path / "bad.ovsschema"
    bad.write_text('{"name": "Bad", "version": "1.0.0", "tables": {"T": {}}}')
    with pytest.raises(OvsdbServerError, match="exited with status 2") as info, CrdtdbServer(
        [bad], tmp_path / "run"
    ):
        pass
    assert "columns" in str(info.value)  # the log tail says what is wrong
