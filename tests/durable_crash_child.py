"""Child process for the crash test in test_durable.py: commit forever until killed.

    python durable_crash_child.py DATA_DIR SCHEMA_PATH [compact_min_bytes] [chunk_bytes] [torn]
                                  [store]

``store`` is ``durable`` (DurableDatabase, the default) or ``replica`` (the CRDT replica).

Commit ``i`` (continuing from the ``last`` counter already in the database) is a
deterministic Southbound transaction, see :func:`commit_ops`. The child prints ``ready N``
once open (N = commits already in the database), then each commit's number on its own line,
flushed, right after ``execute`` returned: a printed number is an acknowledged commit.

With ``torn`` (1), every write reaches the file in 512-byte pieces with a pause between
them, so that the kill often lands in the middle of a record: a torn tail, as a power cut
would leave, without needing one.
"""

from __future__ import annotations

import sys
from typing import Any

#: Commit i deletes what commit i - WINDOW inserted.
WINDOW = 20


def n_flows(i: int) -> int:
    """Flows commit ``i`` inserts (some commits are big, to span several log records)."""
    return 40 if i % 7 == 0 else 3


def commit_ops(i: int, has_global: bool) -> list[Any]:
    tag = ["map", [["commit", str(i)]]]
    ops: list[Any] = [
        {"op": "insert", "table": "Datapath_Binding", "uuid-name": "dp",
         "row": {"tunnel_key": i, "external_ids": tag}},
    ]
    for k in range(n_flows(i)):
        ops.append({"op": "insert", "table": "Logical_Flow", "row": {
            "logical_datapath": ["named-uuid", "dp"], "pipeline": "ingress",
            "table_id": k % 30, "priority": k,
            "match": f"inport == \"lsp-{i}-{k}\" && ip4.src == 10.0.{k % 256}.{i % 256}",
            "actions": "next;", "external_ids": tag}})
    if i > WINDOW:
        old = ["map", [["commit", str(i - WINDOW)]]]
        ops.append({"op": "delete", "table": "Logical_Flow",
                    "where": [["external_ids", "includes", old]]})
        ops.append({"op": "delete", "table": "Datapath_Binding",
                    "where": [["tunnel_key", "==", i - WINDOW]]})
    last = ["map", [["last", str(i)]]]
    if has_global:
        ops.append({"op": "update", "table": "SB_Global", "where": [],
                    "row": {"external_ids": last}})
    else:
        ops.append({"op": "insert", "table": "SB_Global", "row": {"external_ids": last}})
    return ops


def last_commit(db: Any) -> int:
    """The ``last`` counter in SB_Global (0 for a new database)."""
    col = db.schema.tables["SB_Global"].columns["external_ids"].index
    for _, row in db.iter_rows("SB_Global"):
        return int(dict(row[col])["last"])
    return 0


def tear_writes() -> None:
    import os
    import time

    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        n = real(fd, bytes(data[:512]), offset)
        time.sleep(0.0002)
        return n

    os.pwrite = pwrite


def open_store(store: str, data_dir: str, schema: Any, compact_min_bytes: int,
               chunk_bytes: int) -> Any:
    if store == "replica":
        from crdtdb.replica import Replica

        return Replica.open(data_dir, schema, compact_min_bytes=compact_min_bytes,
                            compact_ratio=2.0)
    from crdtdb.storage import DurableDatabase

    return DurableDatabase.open(data_dir, schema, compact_min_bytes=compact_min_bytes,
                                compact_ratio=2.0, chunk_bytes=chunk_bytes)


def main(argv: list[str]) -> int:
    from crdtdb.engine import DatabaseSchema

    data_dir, schema_path = argv[0], argv[1]
    compact_min_bytes = int(argv[2]) if len(argv) > 2 else 32 * 1024
    chunk_bytes = int(argv[3]) if len(argv) > 3 else 4096
    if len(argv) > 4 and argv[4] == "1":
        tear_writes()
    store = argv[5] if len(argv) > 5 else "durable"
    schema = DatabaseSchema.from_file(schema_path)
    db = open_store(store, data_dir, schema, compact_min_bytes, chunk_bytes)
    i = last_commit(db)
    out = sys.stdout
    out.write(f"ready {i}\n")
    out.flush()
    while True:
        i += 1
        results = db.transact(commit_ops(i, has_global=i > 1))
        errors = [r for r in results if isinstance(r, dict) and "error" in r]
        if errors:
            sys.stderr.write(f"commit {i} failed: {errors}\n")
            return 1
        out.write(f"{i}\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
