"""How fast a write reaches every node, and what it costs, on the simulated network.

N nodes (each a real Replica of the OVN Southbound and the real gossip core) on
sims/simnet.py, links of 1 ms +- 0.5 ms, each node dialling ``degree`` random others. After
a warm-up, ``writes`` Chassis_Private inserts are made at random nodes, 0.2 s apart; for each,
the time until every node shows it. Bytes are counted per message kind: pushes against what
was strictly needed (each update once to each other node: the redundancy), and the
background traffic (anti-entropy, pings) per node per second.

    python -m sims.bench_gossip                 # N = 10, 100, 1000 (a few minutes)
    python -m sims.bench_gossip --quick         # N = 10 (used by the tests)

Anchors: Corrosion reports p99 ~1 s at 800+ nodes; OVN with a central ovsdb-server needed
3.26 s for ``--wait=hv`` at 1,200 hypervisors. Goal: p99 < 1 s at 1000 nodes, redundancy
<= 3x.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from typing import Any

import msgpack

from crdtdb.engine import DatabaseSchema
from crdtdb.gossip import GossipConfig
from crdtdb.replica import Replica
from crdtdb.testing.ovsdb_server import find_sb_schema
from sims.report import run_header, write_section
from sims.simnet import SimNet

KINDS = ("push", "sv", "diff", "ping", "ack", "hello")


class CountingNet(SimNet):
    """SimNet that also counts bytes per message kind."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.kind_bytes: Counter[str] = Counter()
        super().__init__(*args, **kwargs)

    def _transmit(self, src: str, dst: str, frame: bytes) -> None:
        if frozenset((src, dst)) in self.links:
            kind = msgpack.unpackb(frame, raw=False)[0]
            self.kind_bytes[kind] += len(frame)
        super()._transmit(src, dst, frame)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(schema: DatabaseSchema, n: int, writes: int, degree: int, seed: int,
            config: GossipConfig) -> dict[str, Any]:
    rng = random.Random(seed)
    replicas = {f"n{i:04d}": Replica.in_memory(schema, client_id=i + 1,
                                               rng=random.Random(seed * 100_003 + i))
                for i in range(n)}
    arrivals: dict[str, dict[str, float]] = {}  # row uuid -> node -> time
    net = CountingNet(replicas, seed=seed, config=config, degree=degree)
    net.faults.latency_s = (0.0005, 0.0015)

    def recorder(nid: str) -> Any:
        def on_change(ev: Any) -> None:
            for u in ev.changes.tables.get("Chassis_Private", {}):
                arrivals.setdefault(u, {}).setdefault(nid, net.now)
        return on_change

    for nid, r in replicas.items():
        r.add_listener(recorder(nid))
    t0 = time.perf_counter()
    net.run_for(3.0)  # connect, hello, first anti-entropy rounds
    idle_before = sum(net.kind_bytes.values())
    net.run_for(2.0)
    idle_rate = (sum(net.kind_bytes.values()) - idle_before) / 2.0 / n
    net.kind_bytes.clear()
    push_sizes: list[int] = []
    origins: dict[str, float] = {}
    ids = sorted(replicas)
    for w in range(writes):
        nid = rng.choice(ids)
        r = replicas[nid]
        sizes: list[int] = []
        r.add_listener(lambda ev, s=sizes: ev.update and s.append(len(ev.update)))
        res = r.transact([{"op": "insert", "table": "Chassis_Private",
                           "row": {"name": f"w{w}", "nb_cfg": w}}])
        push_sizes += sizes
        origins[res[0]["uuid"][1]] = net.now
        net.run_for(0.2)
    net.run_for(5.0)
    wall = time.perf_counter() - t0
    sim_s = net.now
    reach = []
    for u, t_write in origins.items():
        got = arrivals.get(u, {})
        if len(got) < n:
            reach.append(float("inf"))
        else:
            reach.append(max(got.values()) - t_write)
    per_node = [t - origins[u] for u, got in arrivals.items() for t in got.values()]
    needed = sum(push_sizes) * (n - 1)
    window_s = writes * 0.2 + 5.0
    return {
        "n": n, "writes": writes, "per_node_s": sorted(per_node), "reach_s": sorted(reach),
        "reach_p50_s": _pct(reach, 0.5), "reach_p99_s": _pct(reach, 0.99),
        "reach_max_s": max(reach), "node_p50_s": statistics.median(per_node),
        "push_bytes_per_node_per_write": net.kind_bytes["push"] / n / writes,
        "redundancy": net.kind_bytes["push"] / needed if needed else float("nan"),
        "background_bytes_per_node_s": idle_rate,
        "all_bytes_per_node_s": sum(net.kind_bytes.values()) / n / window_s,
        "sim_per_wall": sim_s / wall, "wall_s": wall,
    }


def measure_tcp(schema_path: Any, n: int, writes: int, degree: int, seed: int) -> dict[str, Any]:
    """The same writes through ``n`` real ``crdtdb serve`` processes gossiping over loopback
    tcp; arrival times from an update2 monitor on every node."""
    import select
    import socket
    import tempfile
    from pathlib import Path

    from crdtdb.ovsdb.jsonrpc import JsonRpcConnection, Notification, Request, Sentinel
    from crdtdb.testing.crdtdb_server import CrdtdbServer
    from crdtdb.testing.ports import free_tcp_ports

    rng = random.Random(seed)
    ports = free_tcp_ports(n)
    with tempfile.TemporaryDirectory(prefix="bench-gossip-") as tmp:
        servers = []
        for i in range(n):
            peers = [f"--peer=127.0.0.1:{ports[j]}"
                     for j in rng.sample(range(i), min(i, max(1, degree // 2)))]
            servers.append(CrdtdbServer([schema_path], Path(tmp) / f"n{i}",
                                        extra_args=[f"--listen=127.0.0.1:{ports[i]}", *peers]))
        try:
            for srv in servers:
                srv.start()
            time.sleep(3.0)  # connections, hellos, first anti-entropy
            socks, codecs = [], []
            for srv in servers:
                sock = socket.socket(socket.AF_UNIX)
                sock.connect(str(srv.sock_path))
                codec = JsonRpcConnection()
                sock.sendall(codec.send(Request(1, "monitor_cond", [
                    "OVN_Southbound", "m", {"Chassis_Private": [{"columns": ["name"]}]}])))
                socks.append(sock)
                codecs.append(codec)
            arrivals: dict[str, list[float]] = {}

            def poll(deadline: float) -> None:
                while time.monotonic() < deadline:
                    ready, _, _ = select.select(socks, [], [], 0.01)
                    for sock in ready:
                        codec = codecs[socks.index(sock)]
                        codec.receive_data(sock.recv(1 << 20))
                        while True:
                            ev = codec.next_event()
                            if ev is Sentinel.NEED_DATA or ev is Sentinel.CLOSED:
                                break
                            if isinstance(ev, Notification) and ev.method == "update2":
                                for u in ev.params[1].get("Chassis_Private", {}):
                                    arrivals.setdefault(u, []).append(time.monotonic())
            poll(time.monotonic() + 0.5)
            origins = {}
            for w in range(writes):
                srv = rng.choice(servers)
                t = time.monotonic()
                res = srv.transact([{"op": "insert", "table": "Chassis_Private",
                                     "row": {"name": f"tcp{w}", "nb_cfg": w}}],
                                   "OVN_Southbound")
                origins[res[0]["uuid"][1]] = t
                poll(time.monotonic() + 0.2)
            poll(time.monotonic() + 3.0)
            for sock in socks:
                sock.close()
        finally:
            for srv in servers:
                srv.close()
    reach = [max(arrivals[u]) - t if len(arrivals.get(u, [])) >= n else float("inf")
             for u, t in origins.items()]
    return {"n": n, "reach_p50_s": _pct(reach, 0.5), "reach_p99_s": _pct(reach, 0.99),
            "reach_max_s": max(reach)}


def plot(results: list[dict[str, Any]], path: Any) -> None:
    """CDF of the time for a write to reach each node, and to reach all nodes, per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        for key, style, label in (("per_node_s", "-", "one node"),
                                  ("reach_s", "--", "all nodes")):
            xs = [x * 1000 for x in r[key] if x != float("inf")]
            if not xs:
                continue
            ys = [(i + 1) / len(r[key]) for i in range(len(xs))]
            ax.step(xs, ys, style, where="post", label=f"N={r['n']:,}: {label}")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("time after the commit (ms)")
    ax.set_ylabel("fraction of writes / deliveries")
    ax.set_title("Gossip: time for a write to reach nodes (simulated 1 ms links)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    lines = ["| N | write reaches all: p50 | p99 | max | one node: p50 | push bytes/node/write "
             "| redundancy | idle bytes/node/s | simulated s per wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['n']:,} | {r['reach_p50_s'] * 1000:.0f} ms | {r['reach_p99_s'] * 1000:.0f} ms "
            f"| {r['reach_max_s'] * 1000:.0f} ms | {r['node_p50_s'] * 1000:.0f} ms "
            f"| {r['push_bytes_per_node_per_write']:,.0f} | {r['redundancy']:.2f}x "
            f"| {r['background_bytes_per_node_s']:,.0f} | {r['sim_per_wall']:.2f} |")
    goal = [r for r in results if r["n"] >= 1000]
    verdict = ""
    if goal:
        r = goal[0]
        verdict = (f"\n\nGoal at N = {r['n']:,}: p99 < 1 s: "
                   f"{'met' if r['reach_p99_s'] < 1 else '**not met**'} "
                   f"({r['reach_p99_s'] * 1000:.0f} ms); redundancy <= 3x: "
                   f"{'met' if r['redundancy'] <= 3 else '**not met**'} "
                   f"({r['redundancy']:.2f}x).")
    tcp = params.pop("_tcp", None)
    if tcp:
        verdict += (f"\n\nOver tcp, {tcp['n']} real `crdtdb serve` processes on loopback "
                    f"(arrival seen by an update2 monitor on every node): write reaches all "
                    f"p50 {tcp['reach_p50_s'] * 1000:.0f} ms, p99 "
                    f"{tcp['reach_p99_s'] * 1000:.0f} ms, max {tcp['reach_max_s'] * 1000:.0f} ms.")
    return run_header(params) + "\n\n" + "\n".join(lines) + verdict + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--writes", type=int, default=20)
    ap.add_argument("--degree", type=int, default=6, help="peers each node dials")
    ap.add_argument("--fanout", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tcp", type=int, default=10, metavar="N",
                    help="also run N real processes over tcp (0: skip)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = ap.parse_args(argv)
    path = find_sb_schema()
    if path is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    if args.quick:
        args.nodes, args.writes, args.tcp = [10], 5, 0
    schema = DatabaseSchema.from_file(path).stored()
    config = GossipConfig(fanout=args.fanout)
    results = []
    for n in args.nodes:
        print(f"N = {n} ...", file=sys.stderr)
        results.append(measure(schema, n, args.writes, args.degree, args.seed, config))
    params: dict[str, Any] = {
        "writes": args.writes, "degree": args.degree, "fanout": args.fanout,
        "max_hops": config.max_hops, "anti_entropy_s": config.anti_entropy_interval_s,
        "latency": "1 ms +- 0.5 ms", "seed": args.seed}
    if args.tcp:
        print(f"tcp: {args.tcp} processes ...", file=sys.stderr)
        params["_tcp"] = measure_tcp(path, args.tcp, args.writes, args.degree, args.seed)
    body = render(results, params)
    print(body)
    if not args.no_write and not args.quick:
        from sims.report import DOC

        plot(results, DOC.parent / "gossip-convergence.png")
        body += "\n![write convergence CDF](gossip-convergence.png)\n"
        write_section("bench-gossip", "Gossip on the simulated network (sims/bench_gossip.py)",
                      body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
