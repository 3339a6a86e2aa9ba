"""What a pull costs in a star as the history grows: a hub's answer and a leaf applying it.

The shape of the OVN sandbox's Southbound (issue 8): ``--writers`` chassis each overwrite
their own Chassis_Private row's ``nb_cfg`` once a round (what ``ovn-controller`` does for
every NB change with ``--wait=hv``); a hub merges every commit; one leaf (a writer) pulls
the hub every ``--pull-every`` rounds and applies the answer, as a chassis node does with
the central node (docs/gossip.md: the hub does not forward leaves' updates, so the others'
reports reach a leaf only by its pulls). In process, no I/O: CPU seconds
(``time.process_time``) of the hub's :meth:`~crdtdb.replica.Replica.diff` and of the leaf's
``apply_update(..., self_contained=True)``, over the second half of the pulls, for each
history length in ``--rounds``.

Why: a pull answer that pycrdt makes (``full``: more than the hub's recent updates cover,
see crdtdb/replica/recent.py) carries the document's whole delete set, and applying it
walks the deleted items again however few the leaf lacks; its cost grows with the number
of commits since the last compaction, not with what changed.

    python -m sims.pull_cost                      # 150, 450, 900 rounds of 20 writers
    python -m sims.pull_cost --rounds 300 --writers 10 --pull-every 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from crdtdb.engine import DatabaseSchema
from crdtdb.replica import Replica
from crdtdb.testing.ovsdb_server import find_sb_schema


def _check(results: list[Any]) -> list[Any]:
    errors = [r for r in results if isinstance(r, dict) and "error" in r]
    if errors:
        raise RuntimeError(f"transaction failed: {errors[0]}")
    return results


def measure(schema: DatabaseSchema, n_writers: int, n_rounds: int, pull_every: int
            ) -> dict[str, float]:
    hub = Replica.in_memory(schema, client_id=1)
    writers = [Replica.in_memory(schema, client_id=100 + i) for i in range(n_writers)]
    sent: list[list[bytes]] = [[] for _ in writers]
    for w, out in zip(writers, sent, strict=True):
        w.add_listener(lambda ev, out=out: ev.local and ev.update and out.append(ev.update))

    def deliver() -> None:
        for out in sent:
            for u in out:
                hub.apply_update(u)
            out.clear()

    uuids = [_check(w.transact([{"op": "insert", "table": "Chassis_Private",
                                 "row": {"name": f"hv{i}", "nb_cfg": 0}}]))[0]["uuid"][1]
             for i, w in enumerate(writers)]
    deliver()
    for w in writers:
        w.apply_update(hub.full_state(), self_contained=True)
    leaf = writers[0]
    diff_s: list[float] = []
    apply_s: list[float] = []
    sizes: list[int] = []
    full_before = hub.statistics().full_diffs
    for r in range(1, n_rounds + 1):
        for i, w in enumerate(writers):
            _check(w.transact([{"op": "update", "table": "Chassis_Private",
                                "where": [["_uuid", "==", ["uuid", uuids[i]]]],
                                "row": {"nb_cfg": r}}]))
        deliver()
        if r % pull_every == 0:
            t = time.process_time()
            answer = hub.diff(leaf.state_vector())
            diff_s.append(time.process_time() - t)
            t = time.process_time()
            leaf.apply_update(answer, self_contained=True)
            apply_s.append(time.process_time() - t)
            sizes.append(len(answer))
    full = hub.statistics().full_diffs - full_before
    leaf.apply_update(hub.diff(leaf.state_vector()), self_contained=True)  # (a last pull)
    if leaf.get_row("Chassis_Private", uuids[-1]) != hub.get_row("Chassis_Private", uuids[-1]):
        raise RuntimeError("the leaf did not converge with the hub")
    half = len(apply_s) // 2
    return {"rounds": n_rounds, "pulls": len(apply_s),
            "full": full,
            "diff_ms": statistics.mean(diff_s[half:]) * 1e3,
            "apply_ms": statistics.mean(apply_s[half:]) * 1e3,
            "bytes": statistics.mean(sizes[half:])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", default="150,450,900",
                    help="history lengths (rounds of one commit per writer), comma-separated")
    ap.add_argument("--writers", type=int, default=20)
    ap.add_argument("--pull-every", type=int, default=3,
                    help="rounds between the leaf's pulls (3: a 0.25 s pull interval at "
                         "~12 NB changes a second)")
    args = ap.parse_args(argv)
    path = find_sb_schema()
    if path is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    schema = DatabaseSchema.from_file(path).stored()
    print(f"{args.writers} writers, a pull every {args.pull_every} rounds; CPU per pull, "
          "second half of the pulls")
    print("| rounds | pulls | of them full | hub diff ms | leaf apply ms | answer bytes |")
    print("|---|---|---|---|---|---|")
    for n in (int(x) for x in args.rounds.split(",")):
        m = measure(schema, args.writers, n, args.pull_every)
        print(f"| {n} | {m['pulls']} | {m['full']} | {m['diff_ms']:.3f} | "
              f"{m['apply_ms']:.3f} | {m['bytes']:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
