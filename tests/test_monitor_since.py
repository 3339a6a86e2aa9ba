"""monitor_cond_since resumes, with the real ovsdb-client, against a clustered ovsdb-server.

A standalone ovsdb-server keeps no transaction history; a clustered one does, and crdtdb
keeps one the same way (crdtdb/ovsdb/history.py). The same script runs against a one-member
Raft cluster and against ``crdtdb serve``: load a database big enough for the history to
keep transactions, take the last transaction id after each change, then resume a monitor
from each of those ids (and from one the server never issued). Outputs must match after
UUIDs are numbered in order of appearance.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support import NB_SCHEMA, need_ovn

from crdtdb.testing.crdtdb_server import CrdtdbServer
from crdtdb.testing.ovsdb_cluster import OvsdbCluster
from tests.test_serve_clients import (
    CLIENT_TIMEOUT,
    NB,
    Background,
    assert_same,
    literal_uuids,
    number_uuids,
)

pytestmark = pytest.mark.ovsdb_cluster


def _uuid(i: int) -> str:
    return f"11111111-0000-4000-8000-{i:012d}"


BULK = [NB, *({"op": "insert", "table": "Logical_Switch", "uuid": _uuid(i),
               "row": {"name": f"bulk{i}", "other_config": ["map", [["k", f"v{i}"]]]}}
              for i in range(30))]
STEPS: list[list[Any]] = [
    [NB, {"op": "insert", "table": "Logical_Switch", "uuid": _uuid(100),
          "row": {"name": "new-a"}}],
    [NB, {"op": "update", "table": "Logical_Switch", "where": [["name", "==", "bulk0"]],
          "row": {"name": "bulk0-renamed"}}],
    [NB, {"op": "delete", "table": "Logical_Switch", "where": [["name", "==", "bulk1"]]}],
    [NB, {"op": "insert", "table": "Logical_Switch", "uuid": _uuid(101),
          "row": {"name": "short-lived"}}],
    [NB, {"op": "delete", "table": "Logical_Switch", "where": [["name", "==", "short-lived"]]},
     {"op": "mutate", "table": "Logical_Switch", "where": [["name", "==", "new-a"]],
      "mutations": [["other_config", "insert", ["map", [["x", "y"]]]]]}],
]
NEVER_ISSUED = "12345678-1234-1234-1234-123456789abc"


def _transact(remote: str, txn: list[Any]) -> None:
    out = subprocess.run(["ovsdb-client", f"--timeout={CLIENT_TIMEOUT}", "transact", remote,
                          json.dumps(txn)], capture_output=True, text=True, timeout=15)
    assert out.returncode == 0 and '"error"' not in out.stdout, out


def _monitor(remote: str, last_id: str | None, rows_expected: bool) -> str:
    """What ``ovsdb-client monitor-cond-since`` prints at once (the reply), from
    ``last_id`` (none: from scratch)."""
    since = [last_id] if last_id else []
    mon = Background(["ovsdb-client", f"--timeout={CLIENT_TIMEOUT}", "--format=json",
                      "monitor-cond-since", remote, NB, *since, "[true]", "Logical_Switch",
                      "name,other_config"])
    try:
        mon.wait_for("headings" if rows_expected else "last_id:")
    finally:
        out, _ = mon.stop()
    return out


def _last_id(text: str) -> str:
    return text.split("last_id: ", 1)[1].split()[0]


def _script(remote: str) -> str:
    _transact(remote, BULK)
    ids = [_last_id(_monitor(remote, None, True))]
    for step in STEPS:
        _transact(remote, step)
        ids.append(_last_id(_monitor(remote, None, True)))
    out = []
    for i, last_id in enumerate(ids):
        out.append(f"## resume after step {i}\n"
                   + _monitor(remote, last_id, rows_expected=i < len(ids) - 1))
    out.append("## resume from an id never issued\n" + _monitor(remote, NEVER_ISSUED, True))
    return number_uuids("\n".join(out), literal_uuids(BULK, STEPS))


def test_monitor_cond_since_resumes_as_a_clustered_ovsdb_server(tmp_path: Path) -> None:
    need_ovn("ovsdb-client")
    with OvsdbCluster(NB_SCHEMA, tmp_path / "cluster", n_members=1) as cluster:
        real = _script(cluster.remote(0, unix=True))
    with CrdtdbServer([NB_SCHEMA], tmp_path / "crdtdb") as ours:
        mine = _script(ours.remote)
        assert ours.running, ours.log_tail()
    assert "found: true" in real and "found: false" in real, real
    assert_same(real, mine, "ovsdb-client monitor-cond-since resumes")


def test_without_a_history_every_resume_is_a_full_dump(tmp_path: Path) -> None:
    """``--txn-history=0``: a standalone ovsdb-server's answer, the zero id and found=false."""
    need_ovn("ovsdb-client")
    with CrdtdbServer([NB_SCHEMA], tmp_path / "crdtdb", extra_args=["--txn-history=0"]) as s:
        _transact(s.remote, BULK)
        first = _monitor(s.remote, None, True)
        _transact(s.remote, STEPS[0])
        resumed = _monitor(s.remote, _last_id(first), True)
    zero = "00000000-0000-0000-0000-000000000000"
    assert _last_id(first) == zero and "found: false" in resumed and "initial" in resumed
