"""The CRDT replica's costs, side by side with ovsdb-server where it has a counterpart.

* 100k Logical_Flow rows (over 200 datapaths): RSS of a process holding them in a replica
  (document + view) vs
  ovsdb-server's RSS after the same load; the replica's full-state update vs the bytes of
  ovsdb-server's initial monitor reply for that table;
* joining a node: a fresh replica applying that full state (time, RSS);
* a compaction round's two costs at that size: the coordinator's rebuild (local writes are
  held meanwhile) and a peer's move to the new epoch (Replica.adopt);
* restart: reopening a durable replica of those rows from its log;
* churn: 1M single-column overwrites on 10k rows, RSS before and after an epoch rebuild,
  against the RSS right after loading the 10k rows;
* merge rate: remote single-column updates merged by a real node (``open_node``, its tcp
  transport, gossip core and durable replica) holding the 100k rows, pushed to it over
  loopback by a peer process as fast as the socket takes them: the way every peer's commit
  enters a node, a stream arriving faster than it is merged, which the node's pump takes up
  to ``PUMP_BATCH`` frames at a time (the goal's measure); the same updates applied by the
  replica alone under ``hold_changes`` (no gossip, no transport), and by
  ``Replica.apply_update`` one at a time (an API call no node makes: a lone frame is a
  batch of one); vs ovsdb-server running single-row update transactions (pipelined).

Every replica measurement runs in a fresh child process, so RSS numbers do not mix. Prints a
table and, unless ``--no-write``, writes it to docs/benchmarks.md.

    python -m sims.bench_replica            # full run (a few minutes)
    python -m sims.bench_replica --quick    # smoke run with small counts (used by the tests)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtdb.engine import DatabaseSchema
from crdtdb.engine.snapshot import Changeset, RowChange
from crdtdb.node import PUMP_BATCH
from crdtdb.testing.ovsdb_server import OvsdbServer, find_sb_schema
from sims.bench_engine import _rss_kib
from sims.pipeline import run_pipelined
from sims.report import run_header, write_section
from sims.workload import DB, bulk_txns, check, datapath_txn, update_txn

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
#: The flows are spread over this many datapaths, on both sides, as a Southbound's are (on
#: one, a join's view groups them in one run: flattering; see View.load).
DATAPATHS = 200


# --- child measurements (each in its own process) ----------------------------------------------

def _load(schema: DatabaseSchema, n_rows: int, batch: int, data_dir: Path | None = None) -> Any:
    from crdtdb.replica import Replica

    r = (Replica.open(data_dir, schema, fsync=False) if data_dir is not None
         else Replica.in_memory(schema, client_id=1))
    dps = [x["uuid"][1] for x in check(r.transact(datapath_txn(DATAPATHS)))]
    for ops in bulk_txns(n_rows, batch, dps):
        check(r.transact(ops))
    return r


def child_load(schema: DatabaseSchema, n_rows: int, batch: int, state_file: Path) -> dict:
    gc.collect()
    base = _rss_kib()
    t0 = time.perf_counter()
    r = _load(schema, n_rows, batch)
    load_s = time.perf_counter() - t0
    gc.collect()
    rss = _rss_kib()
    full = r.full_state()
    state_file.write_bytes(full)
    t0 = time.perf_counter()
    r.rebuild()  # what a compaction round's coordinator does while writes are held
    rebuild_s = time.perf_counter() - t0
    state_file.with_suffix(".epoch1").write_bytes(r.full_state())
    return {"load_s": load_s, "rss_kib": rss, "grown_kib": rss - base,
            "full_state_bytes": len(full), "rows": r.row_count("Logical_Flow"),
            "rebuild_s": rebuild_s}


def child_join(schema: DatabaseSchema, state_file: Path) -> dict:
    from crdtdb.replica import Replica, encoding
    from crdtdb.replica.envelope import open_sealed_fields

    full = state_file.read_bytes()
    gc.collect()
    base = _rss_kib()
    r = Replica.in_memory(schema, client_id=2)
    t0 = time.perf_counter()
    r.apply_update(full, self_contained=True)  # as a pull's answer is applied
    join_s = time.perf_counter() - t0
    del full
    gc.collect()
    out = {"join_s": join_s, "rss_kib": _rss_kib(), "grown_kib": _rss_kib() - base,
           "rows": r.row_count("Logical_Flow"), "compiled": encoding.COMPILED}
    # What every other node does at the end of a round: move to the coordinator's epoch.
    if state_file.with_suffix(".epoch1").exists():
        epoch1 = state_file.with_suffix(".epoch1").read_bytes()
        t0 = time.perf_counter()
        r.adopt(epoch1)
        out["adopt_s"] = time.perf_counter() - t0
    # (after the RSS readings: inflating the state again leaves glibc's heap bigger)
    found = encoding.full_state_markers(open_sealed_fields(state_file.read_bytes())[4])
    out["in_place"] = found is not None
    return out


def child_churned_state(schema: DatabaseSchema, n_rows: int, n_overwrites: int,
                        state_file: Path) -> dict:
    """The full state of ``n_rows`` flows after ``n_overwrites`` of them had a column
    overwritten (100 a commit) and no compaction since: each such row has a key besides
    its marker, as a live Southbound's rows have between compaction rounds."""
    r = _load(schema, n_rows, 1000)
    uuids = sorted(u for u, _ in r.iter_rows("Logical_Flow"))
    col = schema.tables["Logical_Flow"].columns["priority"].index
    _overwrite(r, uuids, n_overwrites, 100, col)
    full = r.full_state()
    state_file.write_bytes(full)
    return {"full_state_bytes": len(full)}


def child_restart(schema: DatabaseSchema, n_rows: int, batch: int, data_dir: Path) -> dict:
    from crdtdb.replica import Replica

    r = _load(schema, n_rows, batch, data_dir)
    r.close()
    t0 = time.perf_counter()
    r = Replica.open(data_dir, schema)
    restart_s = time.perf_counter() - t0
    rows = r.row_count("Logical_Flow")
    r.close()
    return {"restart_s": restart_s, "rows": rows}


def _overwrite(r: Any, uuids: list[str], n: int, per_txn: int, col: int) -> float:
    """n single-column overwrites (priority), per_txn rows per commit; seconds taken."""
    t0 = time.perf_counter()
    k = 0
    while k < n:
        cs = Changeset()
        rows = cs.tables.setdefault("Logical_Flow", {})
        for _ in range(min(per_txn, n - k)):
            u = uuids[k % len(uuids)]
            if u in rows:
                break
            old = r.get_row("Logical_Flow", u)
            new = list(old)
            new[1] = (str(uuidlib.UUID(int=k + 1, version=4)),)
            new[col] = (k % 65536,)
            rows[u] = RowChange(old, tuple(new))
            k += 1
        r.commit(cs)
    return time.perf_counter() - t0


def child_churn(schema: DatabaseSchema, n_rows: int, n_overwrites: int) -> dict:
    r = _load(schema, n_rows, 1000)
    gc.collect()
    fresh = _rss_kib()
    uuids = sorted(u for u, _ in r.iter_rows("Logical_Flow"))
    col = schema.tables["Logical_Flow"].columns["priority"].index
    churn_s = _overwrite(r, uuids, n_overwrites, 100, col)
    gc.collect()
    churned = _rss_kib()
    size_before = len(r.full_state())
    t0 = time.perf_counter()
    r.rebuild(1)
    rebuild_s = time.perf_counter() - t0
    gc.collect()
    return {"fresh_kib": fresh, "churned_kib": churned, "compacted_kib": _rss_kib(),
            "churn_rate": n_overwrites / churn_s, "rebuild_s": rebuild_s,
            "state_before": size_before, "state_after": len(r.full_state())}


#: Frames a node handles per scheduler pass, their changes shown once.
NODE_PASS = PUMP_BATCH


def child_merge(schema: DatabaseSchema, n_rows: int, n_updates: int, work_dir: Path) -> dict:
    """Three replicas joined from the same full state merge the same updates: one at a
    time, ``NODE_PASS`` per pass under ``hold_changes``, and a real node takes them in from
    a peer over tcp (:func:`_merge_as_node`: the goal's measure)."""
    from crdtdb.replica import Replica

    a = _load(schema, n_rows, 1000)
    full = a.full_state()
    single, held = (Replica.in_memory(schema, client_id=2),
                    Replica.in_memory(schema, client_id=3))
    single.apply_update(full)
    held.apply_update(full)
    # A node's replica is durable (its log written as a node writes it).
    node = Replica.open(work_dir / "node", schema)
    node.apply_update(full, self_contained=True)
    del full
    updates: list[bytes] = []
    a.add_listener(lambda ev: ev.update and updates.append(ev.update))
    uuids = sorted(u for u, _ in a.iter_rows("Logical_Flow"))
    col = schema.tables["Logical_Flow"].columns["priority"].index
    _overwrite(a, uuids, n_updates, 1, col)
    # The joins above left ~2M objects to the first full collection after them (see
    # Replica's _gc_paused): a cost of the join, not of the merges timed here.
    gc.collect()
    t0 = time.perf_counter()
    for u in updates:
        single.apply_update(u)
    merge_s = time.perf_counter() - t0
    gc.collect()
    t0 = time.perf_counter()
    for i in range(0, len(updates), NODE_PASS):
        held.hold_changes()
        for u in updates[i:i + NODE_PASS]:
            held.apply_update(u)
        held.release_changes()
    held_s = time.perf_counter() - t0
    node_s, pulls = _merge_as_node(a, node, updates, work_dir)
    want = a.get_row("Logical_Flow", uuids[0])
    for r in (single, held, node):
        if r.get_row("Logical_Flow", uuids[0]) != want or not r.in_sync_with(a.state_vector()):
            raise RuntimeError("a merging replica did not converge")
    node.close()
    return {"merge_rate": len(updates) / merge_s, "held_rate": len(updates) / held_s,
            "node_rate": len(updates) / node_s, "node_pulls": pulls,
            "update_bytes": sum(map(len, updates)) / len(updates)}


def _merge_as_node(a: Any, replica: Any, updates: list[bytes],
                   work_dir: Path) -> tuple[float, int]:
    """A real node (``open_node``: its tcp transport, gossip core, pump and listeners; the
    collector set up as ``crdtdb serve`` sets it) holding ``replica`` takes ``updates`` in
    as a peer pushes them: each in a gossip push frame, sent
    over loopback tcp by another process (:func:`child_push`, on the other core, as a peer
    on another machine) as fast as the socket takes them, so they queue up as a stream
    arriving faster than it is merged does, and the pump handles them up to ``NODE_PASS``
    at a time. Seconds from the peer's go to the last update merged; the pulls the node
    answered meanwhile (a gap would show there)."""
    import trio

    from crdtdb.engine.collection import settle_for_serving
    from crdtdb.gossip import messages as m
    from crdtdb.gossip.protocol import Gossip
    from crdtdb.node import open_node
    from crdtdb.testing.ports import free_tcp_ports

    hello = m.encode(Gossip("sender", {DB: a}, rng=random.Random(2)).hello())
    frames_file = work_dir / "frames.pickle"
    frames_file.write_bytes(pickle.dumps(
        (hello, [m.encode(m.Push(DB, u, 0)) for u in updates])))
    [port] = free_tcp_ports(1)
    want = replica.statistics().remote_updates + len(updates)
    gc.collect()
    # The collector as `crdtdb serve` sets it up for a node (young collections every 10,000
    # allocations, not CPython's 700): at 700 a node merging a stream ran ~57 young and 5
    # middle collections a 20k updates (~70 ms of ~1 s), at 10,000 ~4.
    settle_for_serving()

    async def run() -> tuple[float, int]:
        async with open_node({DB: replica}, node_id="receiver",
                             listen=[("127.0.0.1", port)]) as node:
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "sims.bench_replica", "--child", "push", str(port),
                 str(frames_file)], stdin=subprocess.PIPE, cwd=ROOT)
            try:
                with trio.fail_after(30):
                    while not node.gossip.ready_peers(DB):
                        await trio.sleep(0.01)
                assert proc.stdin is not None
                t0 = time.perf_counter()
                await proc.stdin.send_all(b"go\n")
                with trio.fail_after(120):  # (every 5 ms: statistics() is not free)
                    while replica.statistics().remote_updates < want:
                        await trio.sleep(0.005)
                took = time.perf_counter() - t0
                return took, node.gossip.statistics().pulls
            finally:
                proc.kill()
                await proc.wait()

    return trio.run(run)


def child_push(port: int, frames_file: Path) -> dict:
    """:func:`_merge_as_node`'s peer: says hello, then at "go" on stdin sends every push
    frame at once (the framing of transport.framing), reading and dropping what the node
    sends (its hello, pulls) so that it never waits on this side."""
    import socket
    import threading

    from transport.framing import frame

    hello, frames = pickle.loads(frames_file.read_bytes())
    data = b"".join(frame(f) for f in frames)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(frame(hello))

    def discard() -> None:
        while sock.recv(1 << 16):
            pass
    threading.Thread(target=discard, daemon=True).start()
    sys.stdin.readline()
    sock.sendall(data)
    sys.stdin.readline()  # (until the node's side ends this process)
    return {}


#: Joins measured with each marker reader, and merge runs (see main).
JOIN_RUNS = 3
MERGE_RUNS = 3


def _median_run(runs: list[dict]) -> dict:
    """The run whose join time is the median's, with the others' times beside it."""
    ordered = sorted(runs, key=lambda r: r["join_s"])
    out = dict(ordered[len(ordered) // 2])
    out["join_runs_s"] = [r["join_s"] for r in runs]
    return out


def _runs(run: dict) -> str:
    return " / ".join(f"{s:.2f}" for s in run["join_runs_s"]) + " s"


def _child(what: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-m", "sims.bench_replica", "--child", what, *args],
                         cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- ovsdb-server -----------------------------------------------------------------------------

def server_side(schema_path: Path, tmp: Path, n_rows: int, batch: int,
                n_updates: int) -> dict:
    with OvsdbServer(schema_path, tmp / "server") as server, \
            server.client(timeout=300) as client:
        dps = [x["uuid"][1] for x in check(client.transact(DB, datapath_txn(DATAPATHS)))]
        run_pipelined(server.sock_path, list(bulk_txns(n_rows, batch, dps)), window=64)
        rss = _rss_kib(server.pid)
        cols = [c for c in json.loads(schema_path.read_text())["tables"]["Logical_Flow"]
                ["columns"]]
        dump_bytes, uuids = _monitor_dump(server.sock_path, cols)
        txns = [update_txn(i, uuids[i % len(uuids)]) for i in range(n_updates)]
        t0 = time.perf_counter()
        run_pipelined(server.sock_path, txns, window=64)
        update_rate = n_updates / (time.perf_counter() - t0)
    return {"rss_kib": rss, "dump_bytes": dump_bytes, "update_rate": update_rate,
            "read_s": _read_db_s(server.tool, server.db_paths[0])}


def _read_db_s(tool: str, db_path: Path, times: int = 3) -> float:
    """ovsdb-server's own load of the rows: ``ovsdb-tool query`` reads the whole database
    file as ovsdb-server does at startup (a one-row select after it costs nothing). The
    nearest thing it has to a join, shown beside it so a slow day shows as one: the join's
    goal is absolute, and this machine's speed moved ~2x between sessions. Median of
    ``times``."""
    select = json.dumps([DB, {"op": "select", "table": "SB_Global", "where": []}])
    runs = []
    for _ in range(times):
        t0 = time.perf_counter()
        subprocess.run([tool, "query", str(db_path), select], check=True, capture_output=True)
        runs.append(time.perf_counter() - t0)
    return sorted(runs)[len(runs) // 2]


def _monitor_dump(sock_path: Path, columns: list[str]) -> tuple[int, list[str]]:
    """Bytes of ovsdb-server's reply to a monitor_cond of every Logical_Flow column, and the
    row uuids in it (read with the sans-I/O codec: no re-parsing of a growing buffer)."""
    import socket

    from crdtdb.ovsdb.jsonrpc import JsonRpcConnection, Reply, Request, Sentinel

    codec = JsonRpcConnection()
    n_bytes = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(300)
        sock.connect(str(sock_path))
        sock.sendall(codec.send(Request(1, "monitor_cond",
                                        [DB, "m", {"Logical_Flow": [{"columns": columns}]}])))
        while True:
            ev = codec.next_event()
            if ev is Sentinel.NEED_DATA:
                data = sock.recv(1 << 20)
                if not data:
                    raise RuntimeError("ovsdb-server closed the connection")
                n_bytes += len(data)
                codec.receive_data(data)
                continue
            if isinstance(ev, Reply):
                return n_bytes, sorted(ev.result["Logical_Flow"])


# --- report -----------------------------------------------------------------------------------

@dataclass
class Row:
    what: str
    crdtdb: str
    server: str
    ratio: str
    goal: str
    met: str


def _mib(kib: float) -> str:
    return f"{kib / 1024:,.0f} MiB"


def render(rows: list[Row], params: dict[str, Any]) -> str:
    lines = ["| measurement | crdtdb replica | ovsdb-server | ratio | goal | met |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.what} | {r.crdtdb} | {r.server} | {r.ratio} | {r.goal} | {r.met} |"
              for r in rows]
    return run_header(params) + "\n\n" + "\n".join(lines) + "\n"


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="Logical_Flow rows")
    ap.add_argument("--churn-rows", type=int, default=10_000)
    ap.add_argument("--overwrites", type=int, default=1_000_000)
    ap.add_argument("--updates", type=int, default=20_000, help="remote updates to merge")
    ap.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--schema", type=Path, default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    schema_path = args.schema or find_sb_schema()
    if schema_path is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    schema = DatabaseSchema.from_file(schema_path).stored()
    if args.child is not None:
        a = args.child_args
        fn = {"load": lambda: child_load(schema, int(a[0]), 1000, Path(a[1])),
              "join": lambda: child_join(schema, Path(a[0])),
              "churned_state": lambda: child_churned_state(schema, int(a[0]), int(a[1]),
                                                           Path(a[2])),
              "restart": lambda: child_restart(schema, int(a[0]), 1000, Path(a[1])),
              "churn": lambda: child_churn(schema, int(a[0]), int(a[1])),
              "merge": lambda: child_merge(schema, int(a[0]), int(a[1]), Path(a[2])),
              "push": lambda: child_push(int(a[0]), Path(a[1]))}[args.child]
        print(json.dumps(fn()))
        return 0
    if args.quick:
        args.rows, args.churn_rows, args.overwrites, args.updates = 2000, 500, 5000, 500
    n = args.rows
    with tempfile.TemporaryDirectory(prefix="bench-replica-") as tmp_s:
        tmp = Path(tmp_s)
        state = tmp / "full.state"
        print(f"load {n} Logical_Flow rows into a replica", file=sys.stderr)
        load = _child("load", [str(n), str(state)])
        # Joins alternate with the Python marker reader's, JOIN_RUNS of each, the median
        # shown: one run of either moved by ~30% from one minute to the next here.
        print(f"join, {JOIN_RUNS} times, alternating with the Python marker reader",
              file=sys.stderr)
        joins: list[dict] = []
        joins_py: list[dict] = []
        for _ in range(JOIN_RUNS):
            joins.append(_child("join", [str(state)]))
            joins_py.append(_child("join", [str(state)], {"CRDTDB_PURE_PYTHON": "1"}))
        join, join_py = _median_run(joins), _median_run(joins_py)
        n_churned = n // 5
        print(f"join a state with {n_churned} rows overwritten since its load",
              file=sys.stderr)
        churned_state = tmp / "churned.state"
        _child("churned_state", [str(n), str(n_churned), str(churned_state)])
        join_churned = _child("join", [str(churned_state)])
        print("restart a durable replica", file=sys.stderr)
        restart = _child("restart", [str(n), str(tmp / "durable")])
        print(f"churn: {args.overwrites} overwrites on {args.churn_rows} rows", file=sys.stderr)
        churn = _child("churn", [str(args.churn_rows), str(args.overwrites)])
        print(f"merge {args.updates} remote single-column updates, {MERGE_RUNS} times",
              file=sys.stderr)
        merges = []
        for i in range(MERGE_RUNS):
            (tmp / f"merge{i}").mkdir()
            merges.append(_child("merge", [str(n), str(args.updates), str(tmp / f"merge{i}")]))
        merge = sorted(merges, key=lambda r: r["merge_rate"])[len(merges) // 2]
        held_rate = sorted(r["held_rate"] for r in merges)[len(merges) // 2]
        node_rate = sorted(r["node_rate"] for r in merges)[len(merges) // 2]
        print("ovsdb-server: same load, monitor dump, pipelined updates", file=sys.stderr)
        server = server_side(schema_path, tmp, n, 1000, args.updates)
    rows = [
        Row(f"RSS holding {n:,} flows", _mib(load["rss_kib"]), _mib(server["rss_kib"]),
            f"{load['rss_kib'] / server['rss_kib']:.2f}x", "<= 1x",
            _yes(load["rss_kib"] <= server["rss_kib"])),
        Row("full state vs initial monitor dump", f"{load['full_state_bytes'] / MIB:.1f} MB",
            f"{server['dump_bytes'] / MIB:.1f} MB",
            f"{load['full_state_bytes'] / server['dump_bytes']:.2f}x", "<= 0.5x",
            _yes(load["full_state_bytes"] <= 0.5 * server["dump_bytes"])),
        Row("join: apply the full state ("
            + ("compiled marker reader" if join["compiled"] else "Python reader: not built")
            + (", markers read where they lie in it)" if join["in_place"] else ")")
            + f", the median of {_runs(join)}",
            f"{join['join_s']:.2f} s (RSS {_mib(join['rss_kib'])})",
            f"{server['read_s']:.2f} s (reads its file)",
            f"{join['join_s'] / server['read_s']:.2f}x", "<= 1 s", _yes(join["join_s"] <= 1)),
        Row("... the same join in Python (CRDTDB_PURE_PYTHON=1: pycrdt's maps, the "
            "generated loop), "
            f"the median of {_runs(join_py)}",
            f"{join_py['join_s']:.2f} s", "-", f"{join_py['join_s'] / server['read_s']:.2f}x",
            "-", "-"),
        Row(f"... a join after {n_churned:,} single-column overwrites, not compacted yet",
            f"{join_churned['join_s']:.2f} s", "-",
            f"{join_churned['join_s'] / server['read_s']:.2f}x", "-", "-"),
        Row("restart from the log", f"{restart['restart_s']:.2f} s",
            f"{server['read_s']:.2f} s (reads its file)",
            f"{restart['restart_s'] / server['read_s']:.2f}x", "-", "-"),
        Row("compaction round: the coordinator's rebuild; a peer's move",
            f"{load['rebuild_s']:.2f} s; {join['adopt_s']:.2f} s", "-", "-", "-", "-"),
        Row(f"load {n:,} flows (1000 per commit)", f"{load['load_s']:.2f} s", "-", "-", "-",
            "-"),
        Row(f"RSS after {args.overwrites:,} overwrites on {args.churn_rows:,} rows",
            f"{_mib(churn['churned_kib'])} (fresh load {_mib(churn['fresh_kib'])})", "-",
            f"{churn['churned_kib'] / churn['fresh_kib']:.2f}x fresh", "-", "-"),
        Row("RSS after an epoch rebuild", f"{_mib(churn['compacted_kib'])} "
            f"(rebuild {churn['rebuild_s']:.2f} s; state {churn['state_before'] / MIB:.1f} -> "
            f"{churn['state_after'] / MIB:.1f} MB)", "-",
            f"{churn['compacted_kib'] / churn['fresh_kib']:.2f}x fresh", "<= 1.5x fresh",
            _yes(churn["compacted_kib"] <= 1.5 * churn["fresh_kib"])),
        Row("local single-column overwrites", f"{churn['churn_rate']:,.0f}/s", "-", "-", "-",
            "-"),
        Row("remote single-column updates merged by a node over tcp (a peer process pushes "
            "them as fast as the socket takes them; the node's durable replica; up to "
            f"{NODE_PASS} a pass), the median of "
            + " / ".join(f"{r['node_rate'] / 1000:.1f}k" for r in merges),
            f"{node_rate:,.0f}/s ({merge['update_bytes']:.0f} B each)",
            f"{server['update_rate']:,.0f} txn/s (pipelined updates)",
            f"{node_rate / server['update_rate']:.2f}x", ">= 20k/s",
            _yes(node_rate >= 20_000)),
        Row(f"... the replica alone, {NODE_PASS} a pass under hold_changes, the median of "
            + " / ".join(f"{r['held_rate'] / 1000:.1f}k" for r in merges),
            f"{held_rate:,.0f}/s", "-", f"{held_rate / server['update_rate']:.2f}x", "-", "-"),
        Row("... Replica.apply_update called one at a time, outside a node, the median of "
            + " / ".join(f"{r['merge_rate'] / 1000:.1f}k" for r in merges),
            f"{merge['merge_rate']:,.0f}/s", "-",
            f"{merge['merge_rate'] / server['update_rate']:.2f}x", "-", "-"),
    ]
    params = {"rows": n, "churn_rows": args.churn_rows, "overwrites": args.overwrites,
              "updates": args.updates}
    body = render(rows, params)
    print(body)
    if not args.no_write and not args.quick:
        write_section("bench-replica", "CRDT replica (sims/bench_replica.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
