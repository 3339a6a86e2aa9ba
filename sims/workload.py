"""OVN Southbound workloads shared by the benchmarks: Logical_Flow rows and transactions."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

DB = "OVN_Southbound"


def flow_row(i: int, dp_uuid: str) -> dict[str, Any]:
    """A Logical_Flow row shaped like ovn-northd's (sizes from a real SB)."""
    port = f"lsp-{i % 5000:05d}"
    return {
        "logical_datapath": ["uuid", dp_uuid],
        "pipeline": "ingress" if i % 2 else "egress",
        "table_id": i % 30,
        "priority": (i * 7) % 65536,
        "match": f'inport == "{port}" && eth.src == {{0a:00:00:{i >> 16 & 255:02x}:'
                 f'{i >> 8 & 255:02x}:{i & 255:02x}}} && ip4.src == 10.{i >> 16 & 255}.'
                 f"{i >> 8 & 255}.{i & 255}",
        "actions": f"reg0[{i % 16}] = 1; next;",
        "external_ids": ["map", [["source", f"northd.c:{1000 + i % 9000}"],
                                 ["stage-name", "ls_in_port_sec_ip"]]],
    }


def insert_flow_txn(i: int, dp: str) -> list[Any]:
    return [{"op": "insert", "table": "Logical_Flow", "row": flow_row(i, dp)}]


def update_txn(i: int, uuid: str) -> list[Any]:
    return [{"op": "update", "table": "Logical_Flow", "where": [["_uuid", "==", ["uuid", uuid]]],
             "row": {"priority": i % 65536}}]


def mutate_txn(uuid: str) -> list[Any]:
    return [{"op": "mutate", "table": "Logical_Flow",
             "where": [["_uuid", "==", ["uuid", uuid]]],
             "mutations": [["table_id", "+=", 1], ["table_id", "-=", 1],
                           ["external_ids", "insert", ["map", [["k", "v"]]]]]}]


def bulk_txns(n_rows: int, batch: int, dp: str | Sequence[str], start: int = 0
              ) -> Iterator[list[Any]]:
    """Inserts of flows ``start`` onwards, ``batch`` a transaction, on datapath ``dp``, or
    on each of several in turn (a Southbound's flows are spread over its datapaths)."""
    dps = [dp] if isinstance(dp, str) else list(dp)
    for first in range(start, start + n_rows, batch):
        yield [{"op": "insert", "table": "Logical_Flow", "row": flow_row(i, dps[i % len(dps)])}
               for i in range(first, min(first + batch, start + n_rows))]


def datapath_txn(n: int = 1) -> list[Any]:
    """Inserts of ``n`` datapaths (tunnel keys 1 to n)."""
    return [{"op": "insert", "table": "Datapath_Binding", "row": {"tunnel_key": k}}
            for k in range(1, n + 1)]


def check(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, dict) and "error" in r:
            raise RuntimeError(f"transaction failed: {r}")
    return results
