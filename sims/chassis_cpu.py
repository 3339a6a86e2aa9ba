"""A chassis node's CPU per NB change, outside the OVN sandbox (issue 8).

In the 20-chassis sandbox (sims/bench_sandbox.py) the chassis nodes are ~3/4 of the
database CPU: 20 x 3-5 ms per NB change with ``--wait=hv``, most of it the same whatever
the number of chassis. This runs what one chassis node does for such a change, with two
real ``crdtdb serve`` processes and no OVN daemons:

* a central node (the sandbox's: ``--gossip-fanout 0``) on which a "northd" client bumps
  ``SB_Global.nb_cfg`` once per change and waits for the chassis's report;
* a chassis node peering with it (optionally under a wrapper such as ``valgrind
  --tool=callgrind``), on which a "controller" client registers its Chassis and
  Chassis_Private rows, monitors ``SB_Global`` and its own ``Chassis_Private`` row as
  ovn-controller's conditions do, and writes ``Chassis_Private.nb_cfg`` back for every new
  ``nb_cfg`` it sees (what ovn-controller does once its flows are installed).

Prints the chassis node's user+system CPU (/proc/PID/stat) per change. Under callgrind, the
difference of two runs' instruction totals divided by the difference of their changes
leaves start-up out::

    python -m sims.chassis_cpu --changes 300 --runs 3
    for n in 50 200; do PYTHONHASHSEED=0 python -m sims.chassis_cpu --changes $n \\
        --wrapper "valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n"; done
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from crdtdb.ovsdb.client import open_ovsdb_client
from crdtdb.testing.ovsdb_server import find_sb_schema
from crdtdb.testing.ports import free_tcp_ports
from sims.procstat import running_cpu_seconds, stop_processes

SB = "OVN_Southbound"
CHASSIS = "hv1"


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    # (a fixed hash seed: runs under callgrind compare instruction counts)
    env = {**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}
    with open(log, "wb") as stderr:  # (the child keeps its own descriptor)
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, env=env)


async def _wait_socket(path: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while not path.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            await trio.sleep(0.05)


async def controller(remote: str, ready: trio.Event, timeout_s: float) -> None:
    """ovn-controller's part: register, then report every nb_cfg it sees."""
    async with open_ovsdb_client(remote, connect_timeout_s=timeout_s) as c:
        results = await c.transact(SB, [
            {"op": "insert", "table": "Encap", "uuid-name": "e",
             "row": {"type": "geneve", "ip": "192.0.2.1", "chassis_name": CHASSIS}},
            {"op": "insert", "table": "Chassis",
             "row": {"name": CHASSIS, "hostname": CHASSIS, "encaps": ["named-uuid", "e"]}},
            {"op": "insert", "table": "Chassis_Private", "uuid-name": "p",
             "row": {"name": CHASSIS}}])
        if any("error" in r for r in results if isinstance(r, dict)):
            raise RuntimeError(f"registering the chassis failed: {results}")
        me = results[2]["uuid"]
        await c.monitor_cond(SB, "ctl", {
            "SB_Global": [{"columns": ["nb_cfg"]}],
            "Chassis_Private": [{"columns": ["name", "nb_cfg"],
                                 "where": [["name", "==", CHASSIS]]}]})
        ready.set()
        reported = 0
        async for note in c.notifications():
            if note.method != "update2":
                continue
            for row in note.params[1].get("SB_Global", {}).values():
                body = row.get("insert") or row.get("modify") or {}
                cfg = body.get("nb_cfg")
                if isinstance(cfg, int) and cfg > reported:
                    reported = cfg
                    c.send_request("transact", [SB, {
                        "op": "update", "table": "Chassis_Private",
                        "where": [["_uuid", "==", me]], "row": {"nb_cfg": cfg}}],
                        lambda reply: None)


async def northd(remote: str, n_changes: int, chassis_pid: int, timeout_s: float
                 ) -> tuple[float, float]:
    """Bump nb_cfg n_changes times, each once the chassis reported the last; (chassis CPU
    seconds, wall seconds) over the changes."""
    async with open_ovsdb_client(remote, connect_timeout_s=timeout_s) as c:
        await c.monitor_cond(SB, "northd", {"Chassis_Private": [{"columns": ["nb_cfg"]}]})
        sb_global = (await c.transact(SB, [{"op": "insert", "table": "SB_Global",
                                            "row": {"nb_cfg": 0}}]))[0]["uuid"]
        cpu0 = running_cpu_seconds(chassis_pid)
        t0 = time.perf_counter()
        for cfg in range(1, n_changes + 1):
            await c.transact(SB, [{"op": "update", "table": "SB_Global",
                                   "where": [["_uuid", "==", sb_global]],
                                   "row": {"nb_cfg": cfg}}])
            with trio.fail_after(timeout_s):
                seen = 0
                while seen < cfg:
                    note = await c.next_notification()
                    for row in note.params[1].get("Chassis_Private", {}).values():
                        body = row.get("modify") or row.get("insert") or {}
                        if isinstance(body.get("nb_cfg"), int):
                            seen = max(seen, body["nb_cfg"])
        elapsed = time.perf_counter() - t0
        cpu1 = running_cpu_seconds(chassis_pid)
        return cpu1 - cpu0, elapsed


async def run_once(schema: Path, n_changes: int, wrapper: list[str], timeout_s: float
                   ) -> tuple[float, float]:
    """(chassis node CPU seconds per change, wall seconds per change)."""
    with tempfile.TemporaryDirectory(prefix="chassis-cpu-") as tmp:
        d = Path(tmp)
        (port,) = free_tcp_ports(1)
        serve = [sys.executable, "-m", "crdtdb.cli", "serve"]
        central = _start([*serve, f"--remote=punix:{d / 'central.sock'}",
                          f"--data-dir={d / 'central'}", "--node-id=central",
                          f"--listen=127.0.0.1:{port}", "--gossip-fanout=0", str(schema)],
                         d / "central.log")
        chassis = _start([*wrapper, *serve, f"--remote=punix:{d / 'hv.sock'}",
                          f"--data-dir={d / 'hv'}", f"--node-id={CHASSIS}",
                          f"--peer=127.0.0.1:{port}", str(schema)], d / "hv.log")
        try:
            await _wait_socket(d / "central.sock", central, timeout_s)
            await _wait_socket(d / "hv.sock", chassis, timeout_s)
            async with trio.open_nursery() as nursery:
                ready = trio.Event()
                nursery.start_soon(controller, f"unix:{d / 'hv.sock'}", ready, timeout_s)
                await ready.wait()
                cpu_s, wall_s = await northd(f"unix:{d / 'central.sock'}", n_changes,
                                             chassis.pid, timeout_s)
                nursery.cancel_scope.cancel()
            return cpu_s / n_changes, wall_s / n_changes
        finally:
            stop_processes(chassis, central, timeout_s=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--wrapper", default="", help="command to run the chassis node under")
    ap.add_argument("--timeout", type=float, default=60.0,
                    help="seconds for any one step (raise it under callgrind)")
    args = ap.parse_args(argv)
    schema = find_sb_schema()
    if schema is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    for _ in range(args.runs):
        cpu, wall = trio.run(run_once, schema, args.changes, shlex.split(args.wrapper),
                             args.timeout)
        print(f"chassis node CPU {cpu * 1e3:.3f} ms per change; {wall * 1e3:.1f} ms per "
              "change (wall)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
