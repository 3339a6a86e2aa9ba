"""A short run of each benchmark, so CI notices when one breaks (timings are not asserted)."""

from __future__ import annotations

import pytest
from support import need_ovn, require_binaries

from crdtdb.testing.etcd_server import find_etcd
from crdtdb.testing.ovsdb_server import find_sb_schema


def _need() -> None:
    require_binaries()
    if find_sb_schema() is None:
        pytest.skip("ovn-common not installed")


@pytest.mark.ovsdb_server
def test_bench_engine_quick(capsys: pytest.CaptureFixture[str]) -> None:
    _need()
    from sims import bench_engine

    assert bench_engine.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    for line in ("single-row insert", "single-row update", "single-row mutate", "bulk load",
                 "memory for"):
        assert line in out


@pytest.mark.ovsdb_server
def test_bench_serve_quick(capsys: pytest.CaptureFixture[str]) -> None:
    _need()
    from sims import bench_serve

    assert bench_serve.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    for line in ("transactions (pipelined single-row inserts)", "server CPU per transaction",
                 "commit-to-update latency p50", "initial monitor dump, 2,000 flows"):
        assert line in out


def test_bench_storage_quick(capsys: pytest.CaptureFixture[str]) -> None:
    if find_sb_schema() is None:
        pytest.skip("ovn-common not installed")
    from sims import bench_storage

    assert bench_storage.main(["--quick"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.ovsdb_server
def test_bench_replica_quick(capsys: pytest.CaptureFixture[str]) -> None:
    _need()
    from sims import bench_replica

    assert bench_replica.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    for line in ("RSS holding 2,000 flows", "full state vs initial monitor dump",
                 "join: apply the full state", "RSS after an epoch rebuild",
                 "remote single-column updates merged by a node", "the replica alone",
                 "Replica.apply_update called one at a time"):
        assert line in out
    from crdtdb.replica import encoding

    if encoding.COMPILED:  # (the join the goal is measured on: from the state's bytes)
        assert "markers read where they lie in it" in out


def test_bench_gossip_quick(capsys: pytest.CaptureFixture[str]) -> None:
    if find_sb_schema() is None:
        pytest.skip("ovn-common not installed")
    from sims import bench_gossip

    assert bench_gossip.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "| 10 |" in out and "redundancy" in out


@pytest.mark.ovsdb_server
@pytest.mark.etcd
@pytest.mark.ovsdb_cluster
def test_bench_consensus_quick(capsys: pytest.CaptureFixture[str]) -> None:
    need_ovn()
    if find_etcd() is None:
        pytest.skip("etcd not installed")
    from sims import bench_consensus

    assert bench_consensus.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    for line in ("ovsdb cluster, direct (leader)", "crdtdb -> ovsdb cluster", "crdtdb -> etcd",
                 "write (ls-add / ls-del) p50", "read (select NB_Global) p50",
                 "verified read-modify-write", "write throughput, 4 clients", "goal ("):
        assert line in out


@pytest.mark.ovsdb_server
def test_bench_sandbox_quick(capsys: pytest.CaptureFixture[str]) -> None:
    from crdtdb.sandbox import TOOLS

    need_ovn(*TOOLS)
    from sims import bench_sandbox

    assert bench_sandbox.main(["--quick", "--no-write"]) == 0
    out = capsys.readouterr().out
    for line in ("sandbox start-up (2 chassis registered)", "`--wait=sb` p50",
                 "`--wait=hv` p90", "database CPU during the changes, total",
                 "database RSS, total", "no slower than with ovsdb-server at N = 2",
                 "has reached the last chassis node"):
        assert line in out


def test_pull_cost_quick(capsys: pytest.CaptureFixture[str]) -> None:
    if find_sb_schema() is None:
        pytest.skip("ovn-common not installed")
    from sims import pull_cost

    assert pull_cost.main(["--rounds", "8,16", "--writers", "3", "--pull-every", "1"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| 8 ", "| 16 "))]
    assert len(rows) == 2  # (pull_cost raises if the leaf did not converge)
    # A pull lacking 3 commits is answered with them merged, not pycrdt's diff.
    assert [int(r[3]) for r in rows] == [0, 0]


@pytest.mark.ovsdb_server
def test_chassis_cpu_quick(capsys: pytest.CaptureFixture[str]) -> None:
    _need()
    from sims import chassis_cpu

    assert chassis_cpu.main(["--changes", "5"]) == 0
    assert "chassis node CPU" in capsys.readouterr().out
