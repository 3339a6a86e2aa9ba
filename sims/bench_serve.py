"""`crdtdb serve` vs ovsdb-server, side by side in one run (issue: crdtdb serve).

For each server, serving OVN_Southbound from a database file / --data-dir on a unix socket:

* one client pipelines single-row Logical_Flow inserts (64 in flight) while a second
  connection holds a monitor_cond on Logical_Flow: transactions per second, and
  commit-to-update latency (request sent on the first connection -> update received on the
  second), p50 and p99;
* then the table is bulk-loaded to ``--rows`` rows and a fresh connection asks for the initial
  monitor dump of Logical_Flow: seconds until the whole reply is parsed, and its size.

Goal (the issue's): at least 0.5x ovsdb-server's transaction throughput, and a dump no slower.
Prints a table and, unless ``--no-write`` or ``--quick``, writes it to docs/benchmarks.md.

    python -m sims.bench_serve            # 5000 txns, 100k-row dump (a few minutes)
    python -m sims.bench_serve --quick    # smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtdb.testing.crdtdb_server import CrdtdbServer
from crdtdb.testing.ovsdb_server import OvsdbServer, find_sb_schema
from sims.pipeline import Receiver, run_pipelined
from sims.report import DOC, run_header, write_section
from sims.workload import DB, bulk_txns, datapath_txn, insert_flow_txn

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 64
MONITOR = {"Logical_Flow": [{"columns": ["logical_datapath", "pipeline", "table_id",
                                         "priority", "match", "actions", "external_ids"]}]}


@dataclass
class Result:
    txn_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    dump_s: float
    dump_mib: float
    dump_rows: int


def measure(sock_path: Path, n_txns: int, n_rows: int, batch: int) -> Result:
    setup = Receiver(sock_path)
    reply, _ = setup.request("transact", [DB, *datapath_txn()])
    dp = reply["result"][0]["uuid"][1]
    setup.close()

    watcher = Receiver(sock_path)
    watcher.request("monitor_cond", [DB, "bench", MONITOR])
    sent_at: dict[int, float] = {}
    uuid_of: dict[str, int] = {}
    latencies: list[float] = []
    pending: list[tuple[str, float]] = []

    def drain_updates() -> None:
        for msg, at in watcher.poll():
            if msg.get("method") == "update2":
                for uuid in msg["params"][1].get("Logical_Flow", {}):
                    pending.append((uuid, at))
        still = []
        for uuid, at in pending:
            i = uuid_of.get(uuid)
            if i is None:
                still.append((uuid, at))
            else:
                latencies.append(at - sent_at[i])
        pending[:] = still

    def on_send(i: int, at: float) -> None:
        sent_at[i] = at

    def on_reply(i: int, result: Any, at: float) -> None:
        uuid_of[result[0]["uuid"][1]] = i
        drain_updates()

    txns = [insert_flow_txn(1_000_000 + i, dp) for i in range(n_txns)]
    t0 = time.perf_counter()
    run_pipelined(sock_path, txns, window=WINDOW, on_send=on_send, on_reply=on_reply)
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while len(latencies) < n_txns and time.monotonic() < deadline:
        drain_updates()
        time.sleep(0.001)
    watcher.close()
    if len(latencies) < n_txns:
        raise RuntimeError(f"only {len(latencies)} of {n_txns} updates arrived")

    run_pipelined(sock_path, list(bulk_txns(n_rows - n_txns, batch, dp)), window=4)
    dumper = Receiver(sock_path)
    reply, dump_s = dumper.request("monitor_cond", [DB, "dump", MONITOR])
    dump_bytes = dumper.bytes_received
    dumper.close()
    rows = len(reply["result"].get("Logical_Flow", {}))
    latencies.sort()
    return Result(n_txns / elapsed, statistics.median(latencies) * 1000,
                  latencies[int(len(latencies) * 0.99) - 1] * 1000, dump_s,
                  dump_bytes / 2**20, rows)


def render(real: Result, ours: Result, params: dict[str, Any]) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    rows = [
        ("transactions (pipelined single-row inserts)", "txn/s", real.txn_per_s,
         ours.txn_per_s, ratio(ours.txn_per_s, real.txn_per_s), ">= 0.5x"),
        ("commit-to-update latency p50", "ms", real.latency_p50_ms, ours.latency_p50_ms,
         ratio(ours.latency_p50_ms, real.latency_p50_ms), "lower is better"),
        ("commit-to-update latency p99", "ms", real.latency_p99_ms, ours.latency_p99_ms,
         ratio(ours.latency_p99_ms, real.latency_p99_ms), "lower is better"),
        (f"initial monitor dump, {ours.dump_rows:,} flows", "s", real.dump_s, ours.dump_s,
         ratio(ours.dump_s, real.dump_s), "<= 1.0x"),
        ("initial monitor dump size", "MiB", real.dump_mib, ours.dump_mib,
         ratio(ours.dump_mib, real.dump_mib), ""),
    ]
    lines = ["| measurement | unit | ovsdb-server | crdtdb serve | crdtdb / ovsdb-server | goal |",
             "|---|---|---|---|---|---|"]
    for what, unit, a, b, r, goal in rows:
        lines.append(f"| {what} | {unit} | {a:,.2f} | {b:,.2f} | {r} | {goal} |")
    return run_header(params) + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--txns", type=int, default=5000, help="pipelined single-row inserts")
    ap.add_argument("--rows", type=int, default=100_000, help="Logical_Flow rows for the dump")
    ap.add_argument("--batch", type=int, default=1000, help="rows per bulk-load transaction")
    ap.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.txns, args.rows, args.batch = 300, 2000, 500
    schema = find_sb_schema()
    if schema is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    servers: list[tuple[str, Callable[[Path], Any]]] = [
        ("ovsdb-server", lambda d: OvsdbServer(schema, d)),
        ("crdtdb serve", lambda d: CrdtdbServer([schema], d, data_dir=d / "data")),
    ]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for name, make in servers:
            print(f"{name}: {args.txns} pipelined inserts, then a {args.rows}-row dump",
                  file=sys.stderr)
            with make(Path(tmp) / name.replace(" ", "-")) as server:
                results[name] = measure(server.sock_path, args.txns, args.rows, args.batch)
    table = render(results["ovsdb-server"], results["crdtdb serve"],
                   {"txns": args.txns, "rows": args.rows, "batch": args.batch,
                    "window": WINDOW})
    print(table)
    if not args.no_write and not args.quick:
        write_section("bench_serve", "crdtdb serve vs ovsdb-server (sims/bench_serve.py)", table)
        print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
