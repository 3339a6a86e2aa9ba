"""The simulation report: convergence and cost of an OVN Southbound on crdtdb vs cloud size.

For each N, one run without faults and one with a partition into halves (same seed and
workload otherwise). Writes three PNG plots and a summary table into docs/ (docs/benchmarks.md,
section "simulations"):

* ``sim-convergence.png``: CDF of the propagation time (a row inserted on one node until every
  node shows it), one curve per N and fault profile;
* ``sim-bytes.png``: bytes sent per node vs N (gossip; the Northbound's consensus traffic
  apart);
* ``sim-divergence.png``: nodes whose Southbound differs from the most common one, over the
  partition run, per N (the fault phase shaded).

The table: convergence after the heal, propagation p50 / p90 / p99 / max, writes, conflicts,
KiB per node, peak divergence and simulated seconds per wall second.

    python -m sims.sim_report                              # N = 10, 100, 1000 (very long)
    python -m sims.sim_report --nodes 10 100               # smaller
    python -m sims.sim_report --nodes 1000 --wall-limit-s 1200   # speed at N = 1000 only
    python -m sims.sim_report --load runs.json             # redraw from saved runs

A run stopped by ``--wall-limit-s`` is reported as such (how far it got and its simulated
seconds per wall second over that span); the other profiles of that N are then skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from sims.cloud import SimConfig, run
from sims.report import DOC, run_header, write_section

PROFILES = ("none", "halves")
PLOTS = {"cdf": "sim-convergence.png", "bytes": "sim-bytes.png",
         "divergence": "sim-divergence.png"}


def _max_rss_mb() -> float:
    """This process's peak resident set so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _runs(nodes: list[int], seed: int, fault_s: float, wall_limit_s: float | None,
          chassis_period_s: tuple[float, float]) -> list[dict[str, Any]]:
    out = []
    for n in nodes:
        for profile in PROFILES:
            print(f"N = {n}, faults {profile} ...", file=sys.stderr)
            t0 = time.perf_counter()

            def progress(done: float, total: float, n: int = n, t0: float = t0) -> None:
                print(f"  N = {n}: {done:.1f} simulated s, "
                      f"{time.perf_counter() - t0:.0f} s wall", file=sys.stderr)

            r = run(SimConfig(seed=seed, nodes=n, fault_s=fault_s, profile=profile,
                              heal_limit_s=60, wall_limit_s=wall_limit_s,
                              chassis_period_s=chassis_period_s), progress=progress)
            d = r.to_json()
            d["wall_s"] = time.perf_counter() - t0
            d["max_rss_mb"] = _max_rss_mb()
            print(f"  -> {'completed' if r.completed else 'STOPPED'}: {r.simulated_s:.2f} "
                  f"simulated s in {d['wall_s']:.0f} s wall "
                  f"({r.simulated_s / d['wall_s']:.4g} per wall s), "
                  f"peak RSS {d['max_rss_mb']:,.0f} MiB"
                  + ("" if r.ok else f"; {r.failures}"), file=sys.stderr)
            out.append(d)
            if not r.completed:
                break  # the other profile would not finish either
    return out


def _completed(results: list[dict[str, Any]], profile: str | None = None
               ) -> list[dict[str, Any]]:
    return [r for r in results if r.get("completed", True)
            and (profile is None or r["profile"] == profile)]


def plot(results: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The three PNGs into ``out_dir``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = _completed(results)
    ns = sorted({r["nodes"] for r in done})
    cmap = plt.get_cmap("viridis")
    colour = {n: cmap(i / max(1, len(ns) - 1) * 0.85) for i, n in enumerate(ns)}
    style = {"none": "-", "halves": "--"}
    written = []

    # 1. Convergence-time (propagation) CDF per N, with and without the partition.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in done:
        xs = r["propagation_samples_ms"]
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, style.get(r["profile"], ":"), where="post", color=colour[r["nodes"]],
                label=f"N = {r['nodes']:,}, faults: {r['profile']} ({len(xs):,} rows)")
    ax.set_xscale("log")
    ax.set_xlabel("insert visible on every node (ms, log scale)")
    ax.set_ylabel("fraction of inserted rows")
    ax.set_ylim(0, 1.02)
    ax.set_title("Propagation time CDF (rows inserted after the warm-up)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    written.append(out_dir / PLOTS["cdf"])
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 2. Bytes per node vs N.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for profile, marker in (("none", "o"), ("halves", "s")):
        rs = sorted(_completed(results, profile), key=lambda r: r["nodes"])
        if not rs:
            continue
        xs = [r["nodes"] for r in rs]
        ax.plot(xs, [r["bytes_per_node"] / 1024 for r in rs], style[profile], marker=marker,
                color="C0", label=f"Southbound gossip, faults: {profile}")
        ax.plot(xs, [r["nb_bytes_per_node"] / 1024 for r in rs],
                ":" if profile == "none" else "-.", marker=marker,
                color="C1", label=f"Northbound consensus, faults: {profile}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("KiB sent per node (whole run)")
    ax.set_title("Traffic per node")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / PLOTS["bytes"])
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # 3. Divergence over time during the partition run, per N.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # The fault phase ends a little differently per run (its last fault step): shaded up to
    # the first heal, each run's heal a dashed line in its colour.
    heal = [r["heal_at_s"] for r in _completed(results, "halves") if r["heal_at_s"]]
    if heal:
        ax.axvspan(0, min(heal), color="0.88", label="fault phase (halves)")
    for r in _completed(results, "halves"):
        if not r["divergence"]:
            continue
        ts = [p[0] for p in r["divergence"]]
        ys = [100 * p[1] / r["nodes"] for p in r["divergence"]]
        ax.step(ts, ys, "-", where="post", color=colour[r["nodes"]],
                label=f"N = {r['nodes']:,} (converged {r['convergence_s']} s after the heal)")
        if r["heal_at_s"]:
            ax.axvline(r["heal_at_s"], color=colour[r["nodes"]], ls="--", lw=0.8)
    ax.set_xlabel("simulated seconds since the fault phase began")
    ax.set_ylabel("nodes not on the most common Southbound (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Divergence during a partition into halves, then the heal")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / PLOTS["divergence"])
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def _size(mib: float) -> str:
    return f"{mib:,.0f} MiB" if mib < 1024 else f"{mib / 1024:,.1f} GiB"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def render(results: list[dict[str, Any]], params: dict[str, Any], header: str) -> str:
    lines = ["| N | faults | converged after heal | propagation p50 / p90 / p99 / max (ms) | "
             "writes | conflicts shown | KiB/node | peak divergent nodes | "
             "simulated s per wall s | peak RSS |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = r["simulated_s"] / r["wall_s"]
        rss = _size(r["max_rss_mb"]) if "max_rss_mb" in r else "-"
        if not r.get("completed", True):
            lines.append(
                f"| {r['nodes']:,} | {r['profile']} | **not finished**: stopped after "
                f"{r['wall_s']:,.0f} s wall at {r['simulated_s']:.2f} simulated s "
                f"({r.get('stopped_in')} phase) | - | {r['acknowledged_writes']:,} | - | "
                f"{r['bytes_per_node'] / 1024:,.0f} | - | {rate:.4f} (that span only) | "
                f"{rss} |")
            continue
        p = r["propagation_ms"]
        conflicts = sum(r["conflicts"].values())
        peak = max((int(v) for _, v in r["divergence"]), default=0)
        lines.append(
            f"| {r['nodes']:,} | {r['profile']} | "
            f"{'yes, ' + str(r['convergence_s']) + ' s' if r['converged'] else '**no**'} | "
            f"{_ms(p['p50'])} / {_ms(p['p90'])} / {_ms(p['p99'])} / {_ms(p.get('max'))} | "
            f"{r['acknowledged_writes']:,} | {conflicts} | {r['bytes_per_node'] / 1024:,.0f} | "
            f"{peak:,} of {r['nodes']:,} | {rate:.3g} | {rss} |")
    notes = [
        "",
        "Propagation: time from a row's insert on one node until every node shows it, over "
        "the rows inserted after the warm-up that reached every node (in the partition run, "
        "rows inserted during the fault phase reach the other half only after the heal). "
        "Divergent nodes: nodes whose Southbound document (by state vector) differs from the "
        "most common one, sampled every 0.25 simulated s; a node that is down counts. "
        "Simulated s per wall s: the whole run (warm-up, faults, heal, checks) over its wall "
        "time. Peak RSS: of the report process, so far (runs go in order of N).",
    ]
    stopped = [r for r in results if not r.get("completed", True)]
    for r in stopped:
        notes.append("")
        notes.append(
            f"**N = {r['nodes']:,} did not finish**: the run was stopped by the wall-time limit "
            f"({params.get('wall_limit_s')} s) after {r['wall_s']:,.0f} wall s, at "
            f"{r['simulated_s']:.2f} simulated s, in the {r.get('stopped_in')} phase. What was "
            f"measured is only the speed over that span: "
            f"{r['simulated_s'] / r['wall_s']:.4f} simulated s per wall s "
            f"(~{r['wall_s'] / max(r['simulated_s'], 1e-9):,.3g} wall s per simulated s)"
            + (f"; per phase: {_phase_rates(r)}" if r.get("phase_starts") else "")
            + ". No convergence percentiles exist for this N"
            + ("" if any(x["nodes"] == r["nodes"] and x["profile"] == "halves"
                         for x in results) else "; its partition run was not attempted")
            + ".")
    return header + "\n\n" + "\n".join(lines) + "\n" + "\n".join(notes) + "\n"


def _phase_rates(r: dict[str, Any]) -> str:
    """Simulated s per wall s of each phase a run went through (the last one until it
    ended or was stopped)."""
    marks = sorted(r["phase_starts"].items(), key=lambda kv: kv[1][1])
    ends = [m[1] for m in marks[1:]] + [[r["simulated_s"], r["wall_s"]]]
    out = []
    for (phase, (sim0, wall0)), (sim1, wall1) in zip(marks, ends, strict=True):
        if wall1 > wall0:
            out.append(f"{phase} {sim1 - sim0:.2f} simulated s in {wall1 - wall0:,.0f} wall s "
                       f"({(sim1 - sim0) / (wall1 - wall0):.4f})")
    return ", ".join(out)


def _ns(results: list[dict[str, Any]]) -> str:
    return ", ".join(f"{n:,}" for n in sorted({r["nodes"] for r in results}))


def _section(body: str) -> str:
    return (body + "\n"
            f"Plots: [propagation CDF]({PLOTS['cdf']}), [bytes per node]({PLOTS['bytes']}), "
            f"[divergence during the partition]({PLOTS['divergence']}).\n\n"
            f"![propagation time CDF per N, with and without a partition]({PLOTS['cdf']})\n\n"
            f"![bytes sent per node vs N]({PLOTS['bytes']})\n\n"
            f"![nodes diverging during a partition into halves, per N]"
            f"({PLOTS['divergence']})\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fault-s", type=float, default=10.0)
    ap.add_argument("--wall-limit-s", type=float, default=None,
                    help="stop a run after this many wall seconds (reported as not finished)")
    ap.add_argument("--chassis-period-s", type=float, nargs=2, metavar=("LO", "HI"),
                    default=list(SimConfig.chassis_period_s),
                    help="each chassis's pause between workload rounds, drawn uniformly "
                         "(default %(default)s; longer pauses make large N affordable)")
    ap.add_argument("--json", type=Path, help="also save the runs' results (JSON) here")
    ap.add_argument("--load", type=Path, nargs="+",
                    help="no runs: render saved results (from --json) instead")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    if args.load:
        saved = [json.loads(p.read_text()) for p in args.load]
        results = sorted((r for s in saved for r in s["results"]),
                         key=lambda r: (r["nodes"], PROFILES.index(r["profile"])))
        params = {k: v for s in saved for k, v in s["params"].items()}
        header = "; ".join(f"{s['header']} (N = {_ns(s['results'])})" for s in saved)
    else:
        if os.environ.get("PYTHONHASHSEED") != "0":
            os.environ["PYTHONHASHSEED"] = "0"
            os.execv(sys.executable, [sys.executable, "-m", "sims.sim_report", *sys.argv[1:]])
        logging.getLogger("crdtdb").setLevel(logging.ERROR)
        period = (args.chassis_period_s[0], args.chassis_period_s[1])
        params = {"seed": args.seed, "fault_s": args.fault_s, "chassis_period_s": list(period)}
        if args.wall_limit_s is not None:
            params["wall_limit_s"] = args.wall_limit_s
        header = run_header(params)
        results = _runs(args.nodes, args.seed, args.fault_s, args.wall_limit_s, period)
        if args.json:
            args.json.write_text(json.dumps({"params": params, "header": header,
                                             "results": results}))
    body = render(results, params, header)
    print(body)
    if not args.no_write:
        plot(results, DOC.parent)
        write_section("simulations", "Simulations of an OVN Southbound (sims/sim_report.py)",
                      _section(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
