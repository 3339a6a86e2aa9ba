"""The simulation report: convergence and cost of an OVN Southbound on crdtdb vs cloud size.

For each N, one run without faults and one with a partition into halves (same seed and
workload otherwise): propagation percentiles (time for a row inserted on one node to show on
every node), bytes per node, simulated seconds per wall second. Writes PNG plots and a
summary table into docs/ (docs/benchmarks.md, section "simulations").

    python -m sims.sim_report                      # N = 10, 100, 1000 (long: ~15 min)
    python -m sims.sim_report --nodes 10 100       # smaller
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

from sims.cloud import SimConfig, run
from sims.report import DOC, run_header, write_section


def _runs(nodes: list[int], seed: int, fault_s: float) -> list[dict[str, Any]]:
    out = []
    for n in nodes:
        for profile in ("none", "halves"):
            print(f"N = {n}, faults {profile} ...", file=sys.stderr)
            t0 = time.perf_counter()
            def progress(done: float, total: float, n: int = n, t0: float = t0) -> None:
                print(f"  N = {n}: {done:.1f} simulated s, "
                      f"{time.perf_counter() - t0:.0f} s wall", file=sys.stderr)

            r = run(SimConfig(seed=seed, nodes=n, fault_s=fault_s, profile=profile,
                              heal_limit_s=60), progress=progress)
            d = r.to_json()
            d["wall_s"] = time.perf_counter() - t0
            out.append(d)
    return out


def plot(results: list[dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for profile, style in (("none", "-o"), ("halves", "--s")):
        rs = [r for r in results if r["profile"] == profile]
        ns = [r["nodes"] for r in rs]
        for q in ("p50", "p99"):
            ys = [r["propagation_ms"][q] for r in rs]
            a.plot(ns, ys, style, label=f"{q}, faults: {profile}")
        b.plot(ns, [r["bytes_per_node"] / 1024 for r in rs], style,
               label=f"faults: {profile}")
    a.set_xscale("log")
    a.set_yscale("log")
    a.set_xlabel("nodes")
    a.set_ylabel("insert visible on every node (ms)")
    a.set_title("Propagation")
    a.grid(True, alpha=0.3)
    a.legend(fontsize=8)
    b.set_xscale("log")
    b.set_xlabel("nodes")
    b.set_ylabel("KiB sent per node (whole run)")
    b.set_title("Traffic")
    b.grid(True, alpha=0.3)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: list[dict[str, Any]], params: dict[str, Any]) -> str:
    lines = ["| N | faults | converged after heal | propagation p50 / p90 / p99 | writes | "
             "conflicts shown | KiB/node | simulated s per wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        p = r["propagation_ms"]
        fmt = (lambda x: "-" if x is None else f"{x:,.0f} ms")  # noqa: E731
        conflicts = sum(r["conflicts"].values())
        lines.append(
            f"| {r['nodes']:,} | {r['profile']} | "
            f"{'yes, ' + str(r['convergence_s']) + ' s' if r['converged'] else '**no**'} | "
            f"{fmt(p['p50'])} / {fmt(p['p90'])} / {fmt(p['p99'])} | "
            f"{r['acknowledged_writes']:,} | {conflicts} | {r['bytes_per_node'] / 1024:,.0f} | "
            f"{r['simulated_s'] / r['wall_s']:.2f} |")
    return run_header(params) + "\n\n" + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fault-s", type=float, default=5.0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "sims.sim_report", *sys.argv[1:]])
    logging.getLogger("crdtdb").setLevel(logging.ERROR)
    results = _runs(args.nodes, args.seed, args.fault_s)
    body = render(results, {"seed": args.seed, "fault_s": args.fault_s})
    print(body)
    if not args.no_write:
        plot(results, DOC.parent / "sim-convergence.png")
        write_section("simulations", "Simulations of an OVN Southbound (sims/sim_report.py)",
                      body + "\n![propagation and traffic vs N](sim-convergence.png)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
