"""Server CPU per transaction of a real `crdtdb serve`, in sims/bench_serve.py's workload.

Starts ``python -m crdtdb serve --data-dir`` on a unix socket (optionally under a wrapper
such as ``valgrind --tool=callgrind``), inserts a datapath, holds an update2 monitor on
Logical_Flow on a second connection (drained between replies, as bench_serve's is), and
pipelines ``--txns`` single-row inserts 64 at a time. Prints the server's user+system CPU
(from /proc/PID/stat) spent on the inserts, per transaction: a measure that the machine's
other load moves far less than throughput does. Alternate runs of two trees to compare::

    python -m sims.serve_cpu --txns 20000 --runs 3
"""

from __future__ import annotations

import argparse
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crdtdb.testing.ovsdb_server import find_sb_schema
from sims.bench_serve import MONITOR, WINDOW
from sims.pipeline import Receiver, run_pipelined
from sims.procstat import running_cpu_seconds, stop_processes
from sims.workload import DB, datapath_txn, insert_flow_txn


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(path))
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError("server did not come up")
        time.sleep(0.05)


def run_once(schema: Path, n_txns: int, wrapper: list[str], first: int = 1_000_000,
             timeout: float = 600) -> tuple[float, float]:
    """(server CPU seconds per transaction, transactions per second) for one fresh server."""
    with tempfile.TemporaryDirectory(prefix="serve-cpu-") as tmp:
        sock = Path(tmp) / "db.sock"
        cmd = [*wrapper, sys.executable, "-m", "crdtdb.cli", "serve", f"--remote=punix:{sock}",
               f"--data-dir={tmp}/data", str(schema)]
        with open(Path(tmp) / "log", "wb") as log:  # (the child keeps its own descriptor)
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_for(sock, proc, timeout)
            setup = Receiver(sock)
            reply, _ = setup.request("transact", [DB, *datapath_txn()])
            dp = reply["result"][0]["uuid"][1]
            setup.close()
            watcher = Receiver(sock)
            watcher.request("monitor_cond", [DB, "bench", MONITOR])
            watcher.sock.setblocking(False)

            def drain(*_: object) -> None:  # (as bench_serve's watcher: between replies)
                try:
                    while watcher.sock.recv(1 << 22):
                        pass
                except BlockingIOError:
                    pass
            txns = [insert_flow_txn(first + i, dp) for i in range(n_txns)]
            c0, t0 = running_cpu_seconds(proc.pid), time.perf_counter()
            run_pipelined(sock, txns, window=WINDOW, timeout_s=timeout, on_reply=drain)
            elapsed = time.perf_counter() - t0
            c1 = running_cpu_seconds(proc.pid)
            watcher.close()
            return (c1 - c0) / n_txns, n_txns / elapsed
        finally:
            stop_processes(proc, timeout_s=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--txns", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--wrapper", default="", help="command to run the server under")
    args = ap.parse_args(argv)
    schema = find_sb_schema()
    if schema is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    for _ in range(args.runs):
        per_txn, rate = run_once(schema, args.txns, shlex.split(args.wrapper))
        print(f"server CPU {per_txn * 1e6:.1f} us/txn, {rate:,.0f} txn/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
