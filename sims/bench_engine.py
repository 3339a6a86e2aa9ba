"""Engine throughput and memory, side by side with the real ovsdb-server, in one run.

Same transactions on both sides:

* single-row ``insert``, ``update`` (by ``_uuid``) and ``mutate`` (``+=`` by ``_uuid``)
  transactions per second: the engine in-process (``MemoryDatabase.transact``, no JSON) vs
  ovsdb-server over its unix socket, driven by a Python client one round trip at a time and,
  to be fair to the server, pipelined (many requests in flight);
* bulk load of Logical_Flow rows in 1000-row transactions;
* memory: the engine store's RSS growth for those rows (measured in a fresh child process) vs
  ovsdb-server's RSS after the same load.

Prints a table and, unless ``--no-write``, writes it to docs/benchmarks.md. Timings vary with
the machine's load: read the ratios, and rerun before drawing conclusions.

    python -m sims.bench_engine            # full run (100k flows; about a minute)
    python -m sims.bench_engine --quick    # smoke run with small counts (used by the tests)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtdb.engine import DatabaseSchema, MemoryDatabase
from crdtdb.testing.ovsdb_server import OvsdbServer, find_sb_schema
from sims.pipeline import run_pipelined
from sims.report import DOC, run_header, write_section
from sims.workload import (
    DB,
    bulk_txns,
    check,
    datapath_txn,
    insert_flow_txn,
    mutate_txn,
    update_txn,
)

ROOT = Path(__file__).resolve().parent.parent
#: Requests in flight for the pipelined ovsdb-server client.
PIPELINE_WINDOW = 64


# --- the two sides ------------------------------------------------------------------------

class EngineSide:
    name = "crdtdb engine (in-process)"

    def __init__(self, schema: DatabaseSchema):
        self.db = MemoryDatabase(schema)

    def transact(self, ops: list[Any]) -> list[Any]:
        return check(self.db.transact(ops))

    def run_all(self, txns: list[list[Any]]) -> None:
        for ops in txns:
            check(self.db.transact(ops))


class ServerSide:
    """ovsdb-server with a synchronous client (``transact``) and a pipelined one (``run_all``)."""

    def __init__(self, server: OvsdbServer):
        self.server = server
        self.client = server.client(timeout=120)

    def transact(self, ops: list[Any]) -> list[Any]:
        return check(self.client.transact(DB, ops))

    def run_all(self, txns: list[list[Any]]) -> None:
        """Keep up to PIPELINE_WINDOW requests in flight on a second connection."""
        run_pipelined(self.server.sock_path, txns, window=PIPELINE_WINDOW)

    def rss_kib(self) -> int:
        return _rss_kib(self.server.pid)

    def close(self) -> None:
        self.client.close()


def _rss_kib(pid: int | None = None) -> int:
    status = Path(f"/proc/{pid or 'self'}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- measurements -------------------------------------------------------------------------

@dataclass
class Row:
    what: str
    unit: str
    engine: float
    server_rt: float | None
    server_pipe: float | None
    note: str = ""


def _rate(n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _rate_each(txns: list[list[Any]], transact: Callable[[list[Any]], Any]) -> float:
    def go() -> None:
        for ops in txns:
            transact(ops)
    return _rate(len(txns), go)


def measure_single_row(side: Any, n_ops: int, pipelined: bool) -> dict[str, float]:
    dp = side.transact(datapath_txn())[0]["uuid"][1]
    inserts = [insert_flow_txn(10_000_000 + i, dp) for i in range(n_ops)]
    if pipelined:
        rates = {"insert": _rate(n_ops, lambda: side.run_all(inserts))}
        sel = side.transact([{"op": "select", "table": "Logical_Flow",
                              "where": [["priority", ">=", 0]], "columns": ["_uuid"]}])
        uuids = [r["_uuid"][1] for r in sel[0]["rows"]][:n_ops]
    else:
        uuids = []
        t0 = time.perf_counter()
        for ops in inserts:
            uuids.append(side.transact(ops)[0]["uuid"][1])
        rates = {"insert": n_ops / (time.perf_counter() - t0)}
    updates = [update_txn(i, uuids[i % len(uuids)]) for i in range(n_ops)]
    mutates = [mutate_txn(uuids[i % len(uuids)]) for i in range(n_ops)]
    if pipelined:
        rates["update"] = _rate(n_ops, lambda: side.run_all(updates))
        rates["mutate"] = _rate(n_ops, lambda: side.run_all(mutates))
    else:
        rates["update"] = _rate_each(updates, side.transact)
        rates["mutate"] = _rate_each(mutates, side.transact)
    return rates


def measure_bulk(side: Any, n_rows: int, batch: int, pipelined: bool) -> float:
    """Seconds to load n_rows Logical_Flow rows in batch-row transactions."""
    dp = side.transact(datapath_txn())[0]["uuid"][1]
    txns = list(bulk_txns(n_rows, batch, dp))
    t0 = time.perf_counter()
    if pipelined:
        side.run_all(txns)
    else:
        for ops in txns:
            side.transact(ops)
    return time.perf_counter() - t0


def engine_store_kib(schema_path: Path, n_rows: int, batch: int) -> tuple[int, int]:
    """(RSS growth, total RSS) in KiB of a fresh process that loads n_rows into the engine."""
    out = subprocess.run(
        [sys.executable, "-m", "sims.bench_engine", "--child-load", str(n_rows),
         "--batch", str(batch), "--schema", str(schema_path)],
        cwd=ROOT, check=True, capture_output=True, text=True)
    grown, total = (int(x) for x in out.stdout.split())
    return grown, total


def _child_load(schema_path: Path, n_rows: int, batch: int) -> None:
    import gc

    side = EngineSide(DatabaseSchema.from_file(schema_path))
    txns = None
    gc.collect()
    before = _rss_kib()
    dp = side.transact(datapath_txn())[0]["uuid"][1]
    for ops in bulk_txns(n_rows, batch, dp):
        side.transact(ops)
    del txns
    gc.collect()
    after = _rss_kib()
    assert side.db.row_count("Logical_Flow") == n_rows
    print(after - before, after)


# --- report ---------------------------------------------------------------------------------

def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}"


def _ratio(a: float, b: float | None, higher_is_better: bool) -> str:
    if not b:
        return "-"
    return f"{(a / b) if higher_is_better else (b / a):.1f}x"


def render(rows: list[Row], params: dict[str, Any]) -> str:
    lines = [
        "| measurement | unit | crdtdb engine | ovsdb-server (round trips) | "
        "ovsdb-server (pipelined) | engine vs pipelined | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        better = r.unit.endswith("/s")
        ref = r.server_pipe if r.server_pipe is not None else r.server_rt
        lines.append(f"| {r.what} | {r.unit} | {_fmt(r.engine)} | {_fmt(r.server_rt)} | "
                     f"{_fmt(r.server_pipe)} | {_ratio(r.engine, ref, better)} | {r.note} |")
    return run_header(params) + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=5000, help="single-row transactions per kind")
    ap.add_argument("--rows", type=int, default=100_000, help="Logical_Flow rows to bulk load")
    ap.add_argument("--batch", type=int, default=1000, help="rows per bulk transaction")
    ap.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    ap.add_argument("--schema", type=Path, default=None)
    ap.add_argument("--child-load", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    schema_path = args.schema or find_sb_schema()
    if schema_path is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    if args.child_load is not None:
        _child_load(schema_path, args.child_load, args.batch)
        return 0
    if args.quick:
        args.ops, args.rows, args.batch = 200, 2000, 100
    schema = DatabaseSchema.from_file(schema_path)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        print(f"single-row transactions: {args.ops} of each kind", file=sys.stderr)
        eng = measure_single_row(EngineSide(schema), args.ops, pipelined=False)
        with OvsdbServer(schema_path, Path(tmp) / "rt") as server:
            side = ServerSide(server)
            srv_rt = measure_single_row(side, args.ops, pipelined=False)
            side.close()
        with OvsdbServer(schema_path, Path(tmp) / "pipe") as server:
            side = ServerSide(server)
            srv_pipe = measure_single_row(side, args.ops, pipelined=True)
            side.close()
        for kind in ("insert", "update", "mutate"):
            rows.append(Row(f"single-row {kind}", "txn/s", eng[kind], srv_rt[kind],
                            srv_pipe[kind]))

        print(f"bulk load: {args.rows} Logical_Flow rows, {args.batch} per txn", file=sys.stderr)
        eng_s = measure_bulk(EngineSide(schema), args.rows, args.batch, pipelined=False)
        with OvsdbServer(schema_path, Path(tmp) / "bulk-rt") as server:
            side = ServerSide(server)
            rt_s = measure_bulk(side, args.rows, args.batch, pipelined=False)
            side.close()
        with OvsdbServer(schema_path, Path(tmp) / "bulk") as server:
            side = ServerSide(server)
            pipe_s = measure_bulk(side, args.rows, args.batch, pipelined=True)
            server_rss = side.rss_kib()
            side.close()
        rows.append(Row(f"bulk load {args.rows:,} flows", "rows/s", args.rows / eng_s,
                        args.rows / rt_s, args.rows / pipe_s,
                        f"{eng_s:.2f} s vs {rt_s:.2f} s / {pipe_s:.2f} s"))
        grown, total = engine_store_kib(schema_path, args.rows, args.batch)
        rows.append(Row(f"memory for {args.rows:,} flows", "MiB", grown / 1024, None,
                        server_rss / 1024,
                        f"engine: RSS growth of the store (process total {total / 1024:.0f} "
                        "MiB); server: whole-process RSS"))
    params = {"ops": args.ops, "rows": args.rows, "batch": args.batch,
              "pipeline window": PIPELINE_WINDOW}
    table = render(rows, params)
    print(table)
    if not args.no_write and not args.quick:
        write_section("bench_engine", "Engine vs ovsdb-server (sims/bench_engine.py)", table)
        print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
