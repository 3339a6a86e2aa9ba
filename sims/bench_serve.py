"""`crdtdb serve` vs ovsdb-server, side by side in one run (issue: crdtdb serve).

For each server, serving OVN_Southbound from a database file / --data-dir on a unix socket:

* one client pipelines single-row Logical_Flow inserts (64 in flight) while a second
  connection holds a monitor_cond on Logical_Flow: transactions per second, the server's CPU
  per transaction (user + system from /proc), and commit-to-update latency (request sent on
  the first connection -> update received on the second), p50 and p99;
* then the table is bulk-loaded to ``--rows`` rows and a fresh connection asks for the initial
  monitor dump of Logical_Flow: seconds until the whole reply is parsed (by this Python
  client: ~2.8 s of a 100k-flow dump is its own parsing, the same for both servers), the
  server's CPU for it, and its size.

The transaction phase runs ``--rounds`` times, the two servers alternating (a fresh server
each time, the first of a round swapping every round), and the table shows medians: on this
2-core machine one run of ovsdb-server moved between 11k and 24k txn/s a minute apart (the
client, the server and the monitor share two cores), so one pair of runs says little. The
server's CPU per transaction moves much less, and is shown beside the rate.

Goal (the issue's): at least 0.5x ovsdb-server's transaction throughput, and a dump no slower.
Prints a table and, unless ``--no-write`` or ``--quick``, writes it to docs/benchmarks.md.

    python -m sims.bench_serve            # 3 x 5000 txns each, 100k-row dump (a few minutes)
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
from sims.procstat import running_cpu_seconds
from sims.report import DOC, run_header, write_section
from sims.workload import DB, bulk_txns, datapath_txn, insert_flow_txn

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 64
MONITOR = {"Logical_Flow": [{"columns": ["logical_datapath", "pipeline", "table_id",
                                         "priority", "match", "actions", "external_ids"]}]}


@dataclass
class TxnResult:
    txn_per_s: float
    cpu_us_per_txn: float
    latency_p50_ms: float
    latency_p99_ms: float


@dataclass
class DumpResult:
    dump_s: float
    cpu_s: float
    dump_mib: float
    dump_rows: int


def measure_txns(sock_path: Path, pid: int | None, n_txns: int) -> TxnResult:
    """Pipelined single-row inserts with a monitor on a second connection."""
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
    cpu0 = running_cpu_seconds(pid)
    t0 = time.perf_counter()
    run_pipelined(sock_path, txns, window=WINDOW, on_send=on_send, on_reply=on_reply)
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while len(latencies) < n_txns and time.monotonic() < deadline:
        drain_updates()
        time.sleep(0.001)
    cpu_s = running_cpu_seconds(pid) - cpu0  # replies and every update sent: the server's work
    watcher.close()
    if len(latencies) < n_txns:
        raise RuntimeError(f"only {len(latencies)} of {n_txns} updates arrived")
    latencies.sort()
    return TxnResult(n_txns / elapsed, cpu_s / n_txns * 1e6,
                     statistics.median(latencies) * 1000,
                     latencies[int(len(latencies) * 0.99) - 1] * 1000)


def measure_dump(sock_path: Path, pid: int | None, n_rows: int, batch: int) -> DumpResult:
    """Bulk-load ``n_rows`` flows, then time a fresh connection's initial monitor dump."""
    setup = Receiver(sock_path)
    reply, _ = setup.request("transact", [DB, *datapath_txn()])
    dp = reply["result"][0]["uuid"][1]
    setup.close()
    run_pipelined(sock_path, list(bulk_txns(n_rows, batch, dp)), window=4)
    dumper = Receiver(sock_path)
    cpu0 = running_cpu_seconds(pid)
    reply, dump_s = dumper.request("monitor_cond", [DB, "dump", MONITOR])
    cpu_s = running_cpu_seconds(pid) - cpu0
    dump_bytes = dumper.bytes_received
    dumper.close()
    return DumpResult(dump_s, cpu_s, dump_bytes / 2**20,
                      len(reply["result"].get("Logical_Flow", {})))


def _median_range(values: list[float], fmt: str) -> str:
    """The median, and the range when there is more than one value."""
    med = format(statistics.median(values), fmt)
    if len(values) == 1:
        return med
    return f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def render(real: list[TxnResult], ours: list[TxnResult], real_dump: DumpResult,
           our_dump: DumpResult, params: dict[str, Any]) -> str:
    def med(results: list[TxnResult], field: str) -> float:
        return statistics.median(getattr(r, field) for r in results)

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    def txn_row(what: str, unit: str, field: str, fmt: str, goal: str) -> tuple[str, ...]:
        return (what, unit, _median_range([getattr(r, field) for r in real], fmt),
                _median_range([getattr(r, field) for r in ours], fmt),
                ratio(med(ours, field), med(real, field)), goal)

    rows = [
        txn_row("transactions (pipelined single-row inserts)", "txn/s", "txn_per_s", ",.0f",
                ">= 0.5x"),
        txn_row("server CPU per transaction", "us", "cpu_us_per_txn", ",.1f",
                "lower is better"),
        txn_row("commit-to-update latency p50", "ms", "latency_p50_ms", ",.2f",
                "lower is better"),
        txn_row("commit-to-update latency p99", "ms", "latency_p99_ms", ",.2f",
                "lower is better"),
        (f"initial monitor dump, {our_dump.dump_rows:,} flows", "s", f"{real_dump.dump_s:,.2f}",
         f"{our_dump.dump_s:,.2f}", ratio(our_dump.dump_s, real_dump.dump_s), "<= 1.0x"),
        ("server CPU for the dump", "s", f"{real_dump.cpu_s:,.2f}", f"{our_dump.cpu_s:,.2f}",
         ratio(our_dump.cpu_s, real_dump.cpu_s), "lower is better"),
        ("initial monitor dump size", "MiB", f"{real_dump.dump_mib:,.2f}",
         f"{our_dump.dump_mib:,.2f}", ratio(our_dump.dump_mib, real_dump.dump_mib), ""),
    ]
    lines = ["| measurement | unit | ovsdb-server | crdtdb serve | crdtdb / ovsdb-server | goal |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    note = (f"Transaction rows: median of {len(ours)} alternating rounds (range in brackets); "
            "the ratio is of the medians.")
    return run_header(params) + "\n\n" + "\n".join(lines) + "\n\n" + note + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--txns", type=int, default=5000, help="pipelined single-row inserts")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating transaction runs of each server (medians reported)")
    ap.add_argument("--rows", type=int, default=100_000, help="Logical_Flow rows for the dump")
    ap.add_argument("--batch", type=int, default=1000, help="rows per bulk-load transaction")
    ap.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    if args.quick:
        args.txns, args.rounds, args.rows, args.batch = 300, 1, 2000, 500
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    schema = find_sb_schema()
    if schema is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    servers: dict[str, Callable[[Path], Any]] = {
        "ovsdb-server": lambda d: OvsdbServer(schema, d),
        "crdtdb serve": lambda d: CrdtdbServer([schema], d, data_dir=d / "data"),
    }
    names = list(servers)
    txns: dict[str, list[TxnResult]] = {name: [] for name in names}
    dumps: dict[str, DumpResult] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for rnd in range(args.rounds):
            for name in names if rnd % 2 == 0 else names[::-1]:
                print(f"round {rnd + 1}/{args.rounds}, {name}: {args.txns} pipelined inserts",
                      file=sys.stderr)
                with servers[name](Path(tmp) / f"{name.replace(' ', '-')}-{rnd}") as server:
                    r = measure_txns(server.sock_path, server.pid, args.txns)
                print(f"  {r.txn_per_s:,.0f} txn/s, {r.cpu_us_per_txn:.1f} us CPU/txn",
                      file=sys.stderr)
                txns[name].append(r)
        for name in names:
            print(f"{name}: a {args.rows}-row dump", file=sys.stderr)
            with servers[name](Path(tmp) / f"{name.replace(' ', '-')}-dump") as server:
                dumps[name] = measure_dump(server.sock_path, server.pid, args.rows, args.batch)
    table = render(txns["ovsdb-server"], txns["crdtdb serve"], dumps["ovsdb-server"],
                   dumps["crdtdb serve"], {"txns": args.txns, "rounds": args.rounds,
                                           "rows": args.rows, "batch": args.batch,
                                           "window": WINDOW})
    print(table)
    if not args.no_write and not args.quick:
        write_section("bench_serve", "crdtdb serve vs ovsdb-server (sims/bench_serve.py)", table)
        print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
