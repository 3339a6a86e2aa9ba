"""Durable storage costs: fsync latency per commit, bulk load, replay and compaction times.

* ``RecordLog`` append latency with and without fdatasync, and a 100-record batch with one;
* ``DurableDatabase`` single-row insert commits (fsync on, fsync off) next to
  ``MemoryDatabase``;
* bulk load of Logical_Flow rows (ovn-northd-like, see sims/bench_engine.py) in 1000-row
  transactions, then reopening: replay of the commit log, compaction, replay of the snapshot;
* recovery scan of a log whose last commit was torn in half.

Prints a table (it does not write docs/). fsync numbers depend on the disk and file system
under ``--dir``: read them for this machine only.

    python -m sims.bench_storage            # full run (100k flows; under a minute)
    python -m sims.bench_storage --quick    # small counts
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crdtdb.engine import DatabaseSchema, MemoryDatabase
from crdtdb.storage import DurableDatabase, RecordLog
from crdtdb.storage.durable import LOG_NAME
from crdtdb.testing.ovsdb_server import find_sb_schema
from sims.bench_engine import bulk_txns, datapath_txn, insert_flow_txn

#: Never compact during the load: the replay measured first is of the commit log itself.
NO_COMPACTION = 1 << 62


@dataclass
class Row:
    what: str
    value: float
    unit: str
    note: str = ""


def _check(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, dict) and "error" in r:
            raise RuntimeError(f"transaction failed: {r}")
    return results


def _latencies(n: int, fn: Callable[[int], Any]) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def _p(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def measure_log(tmp: Path, n: int) -> list[Row]:
    payload = os.urandom(512)
    rows = []
    with RecordLog.open(tmp / "lat.log") as log:
        synced = _latencies(n, lambda _: log.append(payload))
        unsynced = _latencies(n, lambda _: log.append(payload, sync=False))
        log.sync()
        batch = [payload] * 100
        batches = _latencies(max(10, n // 10), lambda _: log.append_many(batch))
    rows.append(Row("append 512 B + fdatasync, median", statistics.median(synced) * 1e6, "µs",
                    f"p99 {_p(synced, 0.99) * 1e6:,.0f} µs; {n} appends"))
    rows.append(Row("append 512 B, no fsync, median", statistics.median(unsynced) * 1e6, "µs",
                    "what a kill -9 alone requires"))
    rows.append(Row("append_many 100 x 512 B + one fdatasync, median",
                    statistics.median(batches) * 1e6, "µs",
                    f"{statistics.median(batches) * 1e6 / 100:,.1f} µs per record"))
    return rows


def measure_commits(tmp: Path, schema: DatabaseSchema, n: int) -> list[Row]:
    rows = []
    for label, make in (
        ("MemoryDatabase", lambda: MemoryDatabase(schema)),
        ("DurableDatabase, fsync", lambda: DurableDatabase.open(tmp / "c1", schema)),
        ("DurableDatabase, no fsync", lambda: DurableDatabase.open(tmp / "c2", schema,
                                                                   fsync=False)),
    ):
        db = make()
        dp = _check(db.transact(datapath_txn()))[0]["uuid"][1]
        lat = _latencies(n, lambda i, db=db, dp=dp: _check(
            db.transact(insert_flow_txn(20_000_000 + i, dp))))
        if isinstance(db, DurableDatabase):
            db.close()
        rows.append(Row(f"single-row insert commit, {label}", 1 / statistics.mean(lat),
                        "txn/s", f"median {statistics.median(lat) * 1e6:,.0f} µs, "
                        f"p99 {_p(lat, 0.99) * 1e6:,.0f} µs"))
    return rows


def measure_bulk(tmp: Path, schema: DatabaseSchema, n_rows: int, batch: int) -> list[Row]:
    rows = []
    mem = MemoryDatabase(schema)
    dp = _check(mem.transact(datapath_txn()))[0]["uuid"][1]
    t0 = time.perf_counter()
    for ops in bulk_txns(n_rows, batch, dp):
        _check(mem.transact(ops))
    mem_s = time.perf_counter() - t0
    del mem  # only one copy of the rows in memory from here on, as in a server
    gc.collect()

    data = tmp / "bulk"
    with DurableDatabase.open(data, schema, compact_min_bytes=NO_COMPACTION) as db:
        dp = _check(db.transact(datapath_txn()))[0]["uuid"][1]
        t0 = time.perf_counter()
        for ops in bulk_txns(n_rows, batch, dp):
            _check(db.transact(ops))
        load_s = time.perf_counter() - t0
        log_bytes = db.statistics().log.bytes
    n_txns = -(-n_rows // batch)
    rows.append(Row(f"bulk load {n_rows:,} flows, {batch}/txn, DurableDatabase",
                    n_rows / load_s, "rows/s",
                    f"{load_s:.2f} s; MemoryDatabase {mem_s:.2f} s "
                    f"({(load_s - mem_s) / n_txns * 1e3:,.1f} ms of storage per txn)"))
    rows.append(Row("commit log size", log_bytes / 2**20, "MiB",
                    f"{log_bytes / n_rows:,.0f} B per row"))

    t0 = time.perf_counter()
    RecordLog.open(data / LOG_NAME).close()
    scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with DurableDatabase.open(data, schema, compact_min_bytes=NO_COMPACTION) as db:
        replay_s = time.perf_counter() - t0
        assert db.row_count("Logical_Flow") == n_rows
        t0 = time.perf_counter()
        db.compact()
        compact_s = time.perf_counter() - t0
        snap_bytes = db.statistics().log.bytes
    rows.append(Row(f"reopen: replay {n_txns} commits ({n_rows:,} rows)", replay_s, "s",
                    f"{n_rows / replay_s:,.0f} rows/s; of which {scan_s:.3f} s "
                    "recovery scan (checksums)"))
    rows.append(Row("compact (write snapshot, fsync, rename)", compact_s, "s",
                    f"snapshot {snap_bytes / 2**20:.1f} MiB"))
    t0 = time.perf_counter()
    with DurableDatabase.open(data, schema) as db:
        snap_replay_s = time.perf_counter() - t0
        assert db.row_count("Logical_Flow") == n_rows
        # tear the last commit: append one more, then cut it in half
        before = db.statistics().log.bytes
        _check(db.transact(next(bulk_txns(batch, batch, dp))))
        after = db.statistics().log.bytes
    rows.append(Row(f"reopen: replay snapshot ({n_rows:,} rows)", snap_replay_s, "s",
                    f"{n_rows / snap_replay_s:,.0f} rows/s"))
    os.truncate(data / LOG_NAME, before + (after - before) // 2)
    t0 = time.perf_counter()
    with RecordLog.open(data / LOG_NAME) as log:
        torn_s = time.perf_counter() - t0
        cut = log.statistics().recovered_bytes
    rows.append(Row(f"recovery scan with a torn {batch}-row commit", torn_s, "s",
                    f"{cut / 1024:,.0f} KiB torn tail found and cut"))
    return rows


def render(rows: list[Row], params: dict[str, Any], where: Path) -> str:
    lines = ["| measurement | value | unit | note |", "|---|---|---|---|"]
    for r in rows:
        v = f"{r.value:,.0f}" if r.value >= 100 else f"{r.value:,.3f}"
        lines.append(f"| {r.what} | {v} | {r.unit} | {r.note} |")
    head = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}), files in {where} "
            f"({_fs_type(where)}); " + ", ".join(f"{k}={v}" for k, v in params.items()))
    return head + "\n\n" + "\n".join(lines) + "\n"


def _fs_type(path: Path) -> str:
    """The file system type of ``path`` from /proc/mounts (best effort)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown fs"
    best = ("", "unknown fs")
    p = str(path.resolve())
    for m in mounts:
        if len(m) > 2 and (p == m[1] or p.startswith(m[1].rstrip("/") + "/")) \
                and len(m[1]) >= len(best[0]):
            best = (m[1], f"{m[2]} on {m[0]}")
    return best[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000, help="Logical_Flow rows to bulk load")
    ap.add_argument("--batch", type=int, default=1000, help="rows per bulk transaction")
    ap.add_argument("--appends", type=int, default=1000, help="appends/commits to time")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: $TMPDIR)")
    ap.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    ap.add_argument("--schema", type=Path, default=None)
    args = ap.parse_args(argv)
    schema_path = args.schema or find_sb_schema()
    if schema_path is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    if args.quick:
        args.rows, args.batch, args.appends = 2000, 100, 50
    schema = DatabaseSchema.from_file(schema_path)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-storage-", dir=args.dir) as d:
        tmp = Path(d)
        print(f"append latency: {args.appends} appends", file=sys.stderr)
        rows += measure_log(tmp, args.appends)
        print(f"single-row commits: {args.appends} per store", file=sys.stderr)
        rows += measure_commits(tmp, schema, args.appends)
        print(f"bulk load and replay: {args.rows} rows", file=sys.stderr)
        rows += measure_bulk(tmp, schema, args.rows, args.batch)
        table = render(rows, {"rows": args.rows, "batch": args.batch,
                              "appends": args.appends}, tmp.parent)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
