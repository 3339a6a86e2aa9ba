"""DurableDatabase: reopen, compaction, schema identity, failures, and a real kill -9 test."""

from __future__ import annotations

import errno
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import durable_crash_child as child
import msgpack
import pytest

from crdtdb.engine import DatabaseSchema, MemoryDatabase
from crdtdb.engine.integrity import violations
from crdtdb.engine.snapshot import Changeset, RowChange
from crdtdb.errors import DecodeError
from crdtdb.storage import DurableDatabase, RecordLog, SchemaMismatchError, StorageError
from crdtdb.storage.durable import LOG_NAME

CHILD = Path(__file__).with_name("durable_crash_child.py")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sb(sb_schema_path: Path) -> DatabaseSchema:
    return DatabaseSchema.from_file(sb_schema_path)


def ok(results: list[Any]) -> list[Any]:
    assert not [r for r in results if isinstance(r, dict) and "error" in r], results
    return results


def dump(db: Any) -> dict[str, dict[str, tuple]]:
    return {t: dict(db.iter_rows(t)) for t in db.schema.tables}


def workload(db: Any, n: int, seed: int = 0) -> None:
    """Southbound commits with strong, weak and garbage-collected references, maps and sets:
    inserts, updates, mutations and deletes."""
    rng = random.Random(seed)
    first = child.last_commit(db) + 1
    for i in range(first, first + n):
        ok(db.transact(child.commit_ops(i, has_global=i > 1)))
        name = f"ch{rng.randrange(5)}"
        if rng.random() < 0.5:
            ok(db.transact([
                {"op": "delete", "table": "Chassis", "where": [["name", "==", name]]},
                {"op": "insert", "table": "Encap", "uuid-name": "e",
                 "row": {"type": "geneve", "ip": f"192.0.2.{i % 250}", "chassis_name": name}},
                {"op": "insert", "table": "Chassis", "uuid-name": "c",
                 "row": {"name": name, "encaps": ["named-uuid", "e"],
                         "other_config": ["map", [["n", str(i)]]]}},
                {"op": "insert", "table": "Chassis_Private",
                 "row": {"name": f"{name}-{i}", "chassis": ["named-uuid", "c"],
                         "nb_cfg": i}},
            ]))
        else:
            ok(db.transact([{"op": "mutate", "table": "Logical_Flow",
                             "where": [["priority", "==", 1]],
                             "mutations": [["priority", "+=", 0],
                                           ["tags", "insert", ["map", [[f"t{i}", "v"]]]]]}]))


# --- reopen and compaction ---------------------------------------------------------------------

def test_reopen_gives_identical_rows(tmp_path: Path, sb: DatabaseSchema) -> None:
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        workload(db, 40)
        before = dump(db)
        stats = db.statistics()
        assert stats.commits == 80 and stats.log.fsyncs >= 80
        assert violations(db) == []
    with DurableDatabase.open(tmp_path / "db", sb, verify=True) as db:
        assert dump(db) == before
        # indexes and reference counts were rebuilt too
        dp_uuid, dp = next(iter(db.iter_rows("Datapath_Binding")))
        assert db.index_find("Datapath_Binding", 0, (dp[db.schema.tables[
            "Datapath_Binding"].columns["tunnel_key"].index],)) == dp_uuid
        assert db.ref_count("Datapath_Binding", dp_uuid) == child.n_flows(
            int(dict(dp[db.schema.tables["Datapath_Binding"].columns["external_ids"].index])[
                "commit"]))
        # and it keeps working
        workload(db, 5, seed=1)
        after = dump(db)
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        assert dump(db) == after


def test_every_type_round_trips(tmp_path: Path, kitchen_sink_schema_path: Path) -> None:
    schema = DatabaseSchema.from_file(kitchen_sink_schema_path)
    row = {"name": "ünïcødé \0 \U0001f600", "i": -(2**63), "r": -0.0, "b": True,
           "s": "x" * 10_000, "u": ["uuid", "01234567-89ab-cdef-0123-456789abcdef"],
           "oi": 2**63 - 1, "or": 1e-308, "ob": ["set", []], "os": "", "ou": ["set", []]}
    with DurableDatabase.open(tmp_path / "ks", schema) as db:
        ok(db.transact([{"op": "insert", "table": "Atoms", "row": row},
                        {"op": "insert", "table": "Atoms", "row": {"r": 1.5, "i": 7}}]))
        before = dump(db)
    with DurableDatabase.open(tmp_path / "ks", schema) as db:
        assert dump(db) == before


def test_compaction_keeps_data_and_shrinks_the_log(tmp_path: Path, sb: DatabaseSchema) -> None:
    with DurableDatabase.open(tmp_path / "db", sb, compact_min_bytes=16 * 1024,
                              compact_ratio=2.0, fsync=False) as db:
        workload(db, 150)
        stats = db.statistics()
        assert stats.compactions >= 2
        assert stats.log.bytes < 2 * max(16 * 1024, stats.snapshot_bytes) + 64 * 1024
        before = dump(db)
        db.compact()
        assert db.statistics().log.bytes == db.statistics().snapshot_bytes
        assert (tmp_path / "db" / LOG_NAME).stat().st_size == db.statistics().log.bytes
    with DurableDatabase.open(tmp_path / "db", sb, verify=True) as db:
        assert dump(db) == before
        workload(db, 3, seed=2)
        after = dump(db)
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        assert dump(db) == after
    assert sorted(p.name for p in (tmp_path / "db").iterdir()) == [LOG_NAME]


def test_big_commits_span_records_in_one_batch(tmp_path: Path, sb: DatabaseSchema) -> None:
    with DurableDatabase.open(tmp_path / "db", sb, chunk_bytes=2048) as db:
        ok(db.transact(child.commit_ops(7, has_global=False)))  # 40 flows
        st_ = db.statistics().log
        assert st_.records > st_.batches == 2  # header, then one multi-record commit
        before = dump(db)
        db.compact()  # the snapshot is chunked too
        assert db.statistics().log.records > 2
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        assert dump(db) == before


def test_no_op_and_failed_transactions_write_nothing(tmp_path: Path,
                                                     sb: DatabaseSchema) -> None:
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        size = db.statistics().log.bytes
        ok(db.transact([{"op": "select", "table": "Chassis", "where": []}]))
        results = db.transact([{"op": "insert", "table": "Chassis", "row": {"name": "x"}}])
        assert "error" in results[-1]  # encaps min 1: constraint violation
        assert db.statistics().log.bytes == size
        assert db.statistics().commits == 0


def test_torn_last_commit_is_dropped(tmp_path: Path, sb: DatabaseSchema) -> None:
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        workload(db, 5)
        before = dump(db)
        size = db.statistics().log.bytes
        ok(db.transact(child.commit_ops(6, has_global=True)))
    log = tmp_path / "db" / LOG_NAME
    with open(log, "r+b") as f:
        f.truncate(size + 20)
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        assert dump(db) == before


# --- errors ---------------------------------------------------------------------------------------

def test_schema_mismatch(tmp_path: Path, sb: DatabaseSchema, sb_schema_path: Path,
                         kitchen_sink_schema_path: Path) -> None:
    DurableDatabase.open(tmp_path / "db", sb).close()
    other = DatabaseSchema.from_file(kitchen_sink_schema_path)
    with pytest.raises(SchemaMismatchError, match="holds database OVN_Southbound"):
        DurableDatabase.open(tmp_path / "db", other)
    obj = json.loads(sb_schema_path.read_text())
    obj["version"] = "99.0.0"
    with pytest.raises(SchemaMismatchError, match="schema conversion is not supported"):
        DurableDatabase.open(tmp_path / "db", DatabaseSchema.from_json(obj))
    obj = json.loads(sb_schema_path.read_text())
    obj["tables"]["Chassis"]["columns"]["extra"] = {"type": "string"}
    with pytest.raises(SchemaMismatchError, match="different tables or columns"):
        DurableDatabase.open(tmp_path / "db", DatabaseSchema.from_json(obj))
    # the log is released after a failed open
    DurableDatabase.open(tmp_path / "db", sb).close()


@pytest.mark.parametrize(("record", "match"), [
    (["C", {"Nope": []}], "no table 'Nope'"),
    (["C", {"Chassis": [[b"\3" * 16, b"\x80"]]}], "has _uuid"),
    (["C", {"Chassis": [[b"\1" * 16, None]]}], "does not exist"),
    (["C", {"Chassis": [[b"short", None]]}], "uuid16"),
    (["Z", {}], "unknown record kind"),
    (["H", {}], "header record after the first"),
    ("nonsense", r"expected \[kind, body\]"),
])
def test_bad_records_are_decode_errors(tmp_path: Path, sb: DatabaseSchema, record: Any,
                                       match: str) -> None:
    DurableDatabase.open(tmp_path / "db", sb).close()
    with RecordLog.open(tmp_path / "db" / LOG_NAME) as log:
        log.append(msgpack.packb(record, use_bin_type=True))
    with pytest.raises(DecodeError, match=match):
        DurableDatabase.open(tmp_path / "db", sb)


def test_row_that_breaks_its_column_type_is_a_decode_error(tmp_path: Path,
                                                           sb: DatabaseSchema) -> None:
    DurableDatabase.open(tmp_path / "db", sb).close()
    uid = b"\2" * 16
    row = msgpack.packb({"_uuid": [msgpack.ExtType(1, uid)], "tunnel_key": ["not an int"]},
                        use_bin_type=True)
    with RecordLog.open(tmp_path / "db" / LOG_NAME) as log:
        log.append(msgpack.packb(["C", {"Datapath_Binding": [[uid, row]]}], use_bin_type=True))
    with pytest.raises(DecodeError, match="expected integer"):
        DurableDatabase.open(tmp_path / "db", sb)


def test_verify_reports_a_broken_state(tmp_path: Path, sb: DatabaseSchema) -> None:
    mem = MemoryDatabase(sb)
    ok(mem.transact(child.commit_ops(1, has_global=False)))
    # A changeset that a buggy writer might log: flows without their datapath.
    flows = {u: RowChange(None, r) for u, r in mem.iter_rows("Logical_Flow")}
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        db.apply(Changeset({"Logical_Flow": flows}))
    DurableDatabase.open(tmp_path / "db", sb).close()  # a plain open trusts the log
    with pytest.raises(StorageError, match="dangling strong reference"):
        DurableDatabase.open(tmp_path / "db", sb, verify=True)


def test_failed_append_does_not_apply(tmp_path: Path, sb: DatabaseSchema,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        ok(db.transact(child.commit_ops(1, has_global=False)))
        before = dump(db)

        def disk_full(*args: object, **kw: object) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(RecordLog, "append_many", disk_full)
        with pytest.raises(OSError):
            db.transact(child.commit_ops(2, has_global=True))
        assert dump(db) == before
        monkeypatch.undo()
        ok(db.transact(child.commit_ops(2, has_global=True)))
        after = dump(db)
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        assert dump(db) == after


def test_failed_compaction_keeps_the_commit(tmp_path: Path, sb: DatabaseSchema,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with DurableDatabase.open(tmp_path / "db", sb, compact_min_bytes=1) as db:
        monkeypatch.setattr(RecordLog, "rewrite", no_space)
        ok(db.transact(child.commit_ops(1, has_global=False)))
        monkeypatch.undo()
        assert db.statistics().compactions == 0
        before = dump(db)
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        assert dump(db) == before


def test_second_open_is_refused(tmp_path: Path, sb: DatabaseSchema) -> None:
    with DurableDatabase.open(tmp_path / "db", sb), pytest.raises(StorageError):
        DurableDatabase.open(tmp_path / "db", sb)


def test_fsync_false_still_fsyncs_durable_commits(tmp_path: Path, sb: DatabaseSchema) -> None:
    with DurableDatabase.open(tmp_path / "db", sb, fsync=False) as db:
        ok(db.transact(child.commit_ops(1, has_global=False)))
        assert db.statistics().log.fsyncs == 1  # the header only
        ok(db.transact([*child.commit_ops(2, has_global=True),
                        {"op": "commit", "durable": True}]))
        assert db.statistics().log.fsyncs == 2
        before = dump(db)
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        assert dump(db) == before


# --- a real crash: SIGKILL a committing child process ------------------------------------------

def _expected_commits(k: int) -> set[int]:
    return set(range(max(1, k - child.WINDOW + 1), k + 1))


def _check_recovered(data_dir: Path, sb: DatabaseSchema, acked: int, attempted: int,
                     store: str = "durable") -> int:
    """Reopen after the kill: the state must be exactly that after commit k, for some
    acked <= k <= attempted; returns k."""
    with child.open_store(store, str(data_dir), sb, 32 * 1024, 4096) as db:
        k = child.last_commit(db)
        assert acked <= k <= attempted + 1, (acked, k)
        assert violations(db) == []
        ext = db.schema.tables["Datapath_Binding"].columns["external_ids"].index
        dps = {int(dict(r[ext])["commit"]) for _, r in db.iter_rows("Datapath_Binding")}
        assert dps == _expected_commits(k)
        fext = db.schema.tables["Logical_Flow"].columns["external_ids"].index
        flows: dict[int, int] = {}
        for _, r in db.iter_rows("Logical_Flow"):
            c = int(dict(r[fext])["commit"])
            flows[c] = flows.get(c, 0) + 1
        assert flows == {c: child.n_flows(c) for c in _expected_commits(k)}
    return k


def _run_and_kill(data_dir: Path, schema_path: Path, delay: float,
                  torn: bool, store: str = "durable") -> tuple[int, int, int]:
    """Start the child, let it commit for ``delay`` seconds, SIGKILL it.

    Returns (commits before the run, last acknowledged commit, lines read)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = [str(data_dir), str(schema_path), str(32 * 1024), "4096", "1" if torn else "0",
            store]
    proc = subprocess.Popen([sys.executable, str(CHILD), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    lines: list[bytes] = []
    ready = threading.Event()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            ready.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert ready.wait(30), proc.stderr.read() if proc.poll() is not None else "no ready"
        time.sleep(delay)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        t.join(30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    first = lines[0].split()
    assert first[0] == b"ready"
    done = [int(x) for x in lines[1:] if x.endswith(b"\n")]
    start = int(first[1])
    assert done == list(range(start + 1, start + 1 + len(done)))
    return start, (done[-1] if done else start), len(done)


def _crash_loop(tmp_path: Path, sb: DatabaseSchema, schema_path: Path, runs: int,
                seed: int, store: str = "durable") -> None:
    rng = random.Random(seed)
    data_dir = tmp_path / "db"
    previous = 0
    total = 0
    for run in range(runs):
        start, acked, n = _run_and_kill(data_dir, schema_path, rng.uniform(0.05, 0.6),
                                        torn=run % 2 == 1, store=store)
        assert start == previous  # nothing acknowledged was lost across earlier kills
        previous = _check_recovered(data_dir, sb, acked, acked, store)
        total += n
    assert total > 0


def test_kill_9_loses_no_acknowledged_commit(tmp_path: Path, sb: DatabaseSchema,
                                              sb_schema_path: Path) -> None:
    _crash_loop(tmp_path, sb, sb_schema_path, runs=4, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_kill_9_loses_no_acknowledged_commit_slow(tmp_path: Path, sb: DatabaseSchema,
                                                   sb_schema_path: Path, seed: int) -> None:
    _crash_loop(tmp_path, sb, sb_schema_path, runs=10, seed=100 + seed)


def test_crash_helpers_agree_with_an_uncrashed_run(tmp_path: Path, sb: DatabaseSchema) -> None:
    """The checker itself: after n clean commits it accepts exactly k = n."""
    with DurableDatabase.open(tmp_path / "db", sb) as db:
        for i in itertools.count(1):
            ok(db.transact(child.commit_ops(i, has_global=i > 1)))
            if i == 30:
                break
    assert _check_recovered(tmp_path / "db", sb, 30, 30) == 30
