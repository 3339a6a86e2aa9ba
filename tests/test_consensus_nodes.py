"""The Northbound on a consensus plugin (a real etcd; a real 3-member Raft ovsdb-server),
through several real `crdtdb serve` nodes.

* ovn-nbctl writes through one node and reads through another (reads are linearizable: no
  waiting for a feed);
* read-modify-write with verify (the Python IDL incrementing NB_Global.nb_cfg from several
  processes on two nodes, retrying on "try again") never loses an increment;
* ovn-northd active/standby across two nodes with the Southbound lock on the plugin: never
  two active at once; failover when the active ovn-northd dies and when its node dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import NB_SCHEMA, SB_SCHEMA, need_ovn

from crdtdb.testing.crdtdb_server import CrdtdbServer
from crdtdb.testing.etcd_server import EtcdCluster, find_etcd
from crdtdb.testing.ovsdb_cluster import OvsdbCluster
from crdtdb.testing.ports import free_tcp_ports

pytestmark = pytest.mark.ovsdb_server

CLIENTS = Path(__file__).parent / "clients"
#: etcd's defaults (128 operations, 1.5 MiB per request) are too small for OVN transactions.
ETCD_ARGS = ("--max-txn-ops=65536", "--max-request-bytes=33554432")


class Backend:
    """A running consensus engine and the --config text that puts the NB (and, with
    ``sb``, the locks) on it."""

    name: str

    def config(self, path: Path, *, sb: bool = False) -> Path:
        lines = [*self.plugin_lines(), '[databases.OVN_Northbound]',
                 'consistency = "linearizable"', f'plugin = "{self.name}"']
        if sb:
            lines += ['[databases.OVN_Southbound]', 'consistency = "eventual"',
                      '[locks]', f'plugin = "{self.name}"']
        path.write_text("\n".join(lines) + "\n")
        return path

    def plugin_lines(self) -> list[str]:
        raise NotImplementedError


class EtcdBackend(Backend):
    name = "etcd"

    def __init__(self, cluster: EtcdCluster):
        self.cluster = cluster

    def plugin_lines(self) -> list[str]:
        return ['[plugins.etcd]', f'endpoints = {json.dumps(self.cluster.endpoints)}',
                'lock_ttl_s = 2']


class OvsdbBackend(Backend):
    name = "ovsdb"

    def __init__(self, cluster: OvsdbCluster):
        self.cluster = cluster

    def plugin_lines(self) -> list[str]:
        return ['[plugins.ovsdb]', f'remotes = "{self.cluster.remotes}"']


@pytest.fixture(params=[
    pytest.param("etcd", marks=[pytest.mark.etcd, pytest.mark.skipif(
        find_etcd() is None, reason="etcd not installed")]),
    pytest.param("ovsdb", marks=pytest.mark.ovsdb_cluster)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "etcd":
        with EtcdCluster(1, tmp_path / "etcd", extra_args=ETCD_ARGS) as cluster:
            yield EtcdBackend(cluster)
    else:
        with OvsdbCluster(NB_SCHEMA, tmp_path / "raft", 3) as raft:
            yield OvsdbBackend(raft)


def nbctl(node: CrdtdbServer, *args: str, check: bool = True) -> str:
    tools = need_ovn("ovn-nbctl")
    out = subprocess.run([tools["ovn-nbctl"], f"--db={node.remote}", "--timeout=10", *args],
                         capture_output=True, text=True, timeout=20)
    if check:
        assert out.returncode == 0, f"{args}: {out.stderr}\n{node.log_tail()}"
    return out.stdout


def eventually(what: str, fn: Callable[[], bool], timeout_s: float = 15.0) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


def nb_nodes(tmp_path: Path, backend: Backend, n: int) -> list[CrdtdbServer]:
    config = backend.config(tmp_path / "crdtdb.toml")
    return [CrdtdbServer([NB_SCHEMA], tmp_path / f"node{i}",
                         extra_args=[f"--config={config}", f"--node-id=n{i}"])
            for i in range(n)]


def test_nbctl_writes_on_one_node_reads_on_another(tmp_path: Path, backend: Backend) -> None:
    a, b = nb_nodes(tmp_path, backend, 2)
    with a, b:
        nbctl(a, "ls-add", "sw0")
        nbctl(a, "lsp-add", "sw0", "p1", "--", "lsp-set-addresses", "p1",
              "00:00:00:00:00:01 10.0.0.1")
        # No waiting: a read through b is linearized after a's acknowledged commit.
        shown = nbctl(b, "show")
        assert "sw0" in shown and "p1" in shown and "10.0.0.1" in shown, shown
        nbctl(b, "lsp-del", "p1")
        assert "p1" not in nbctl(a, "show")
        # A third node started later loads the database from the plugin.
        (c,) = [CrdtdbServer([NB_SCHEMA], tmp_path / "node-late",
                             extra_args=[f"--config={tmp_path / 'crdtdb.toml'}",
                                         "--node-id=late"])]
        with c:
            assert nbctl(c, "--bare", "--columns=name", "list", "Logical_Switch").split() \
                == ["sw0"]


def test_verify_read_modify_write_never_loses_an_update(tmp_path: Path,
                                                        backend: Backend) -> None:
    a, b = nb_nodes(tmp_path, backend, 2)
    per_client, clients_per_node = 15, 2
    with a, b:
        nbctl(a, "init")
        procs = [subprocess.Popen(
            [sys.executable, str(CLIENTS / "idl_increment.py"), node.remote, str(NB_SCHEMA),
             str(per_client)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for node in (a, b) for _ in range(clients_per_node)]
        results = []
        for p in procs:
            out, err = p.communicate(timeout=90)
            assert p.returncode == 0, err
            results.append(json.loads(out))
        total = per_client * clients_per_node * 2
        for node in (a, b):
            assert nbctl(node, "get", "NB_Global", ".", "nb_cfg").strip() == str(total)
        retried = sum(r["try_again"] for r in results)
        print(f"{total} increments, {retried} retried after a failed verify")


def test_northd_lock_is_never_held_twice(tmp_path: Path, backend: Backend) -> None:
    from test_serve_northd import Northd

    ports = free_tcp_ports(2)
    config = backend.config(tmp_path / "crdtdb.toml", sb=True)
    nodes = [CrdtdbServer([NB_SCHEMA, SB_SCHEMA], tmp_path / f"node{i}",
                          extra_args=[f"--config={config}", f"--node-id=n{i}",
                                      f"--listen=127.0.0.1:{ports[i]}",
                                      *([f"--peer=127.0.0.1:{ports[0]}"] if i else [])])
             for i in range(2)]
    ctl_dir = Path(tempfile.mkdtemp(prefix="northd-"))  # short: unix socket paths
    with nodes[0], nodes[1]:
        northds = [Northd(f"northd{i}", nodes[i], tmp_path / f"northd{i}", ctl_dir).start()
                   for i in range(2)]
        try:
            statuses: list[tuple[str, str]] = []
            #: Indexes of northds whose node was killed: such a northd can write nothing,
            #: and until it notices its connection is gone (on a loaded machine that can be
            #: after the lock has moved) it still reports the lock it had.
            cut_off: set[int] = set()

            def sample() -> tuple[str, str]:
                s = (northds[0].status(), northds[1].status())
                statuses.append(s)
                live = [status for i, status in enumerate(s) if i not in cut_off]
                assert live.count("active") <= 1, f"two active ovn-northd: {statuses[-20:]}"
                return s

            eventually("one ovn-northd active", lambda: "active" in sample())
            for _ in range(10):
                sample()
            active = sample().index("active")
            standby = 1 - active
            assert sample()[standby] == "standby"
            # The SB is gossiped between the nodes, the NB on the plugin: northd works.
            nbctl(nodes[standby], "--wait=sb", "ls-add", "sw0")

            # 1. The active ovn-northd dies: its node releases the lock, the other takes it.
            northds[active].kill()
            took = eventually("standby takes over",
                              lambda: sample()[standby] == "active")
            print(f"failover after ovn-northd died: {took:.2f} s")
            nbctl(nodes[active], "--wait=sb", "ls-add", "sw1")

            # 2. Restart it (standby), then kill the *node* of the active one: the lease
            #    expires and the lock moves.
            northds[active] = Northd(f"northd{active}b", nodes[active],
                                     tmp_path / f"northd{active}b", ctl_dir).start()
            eventually("restarted northd is standby",
                       lambda: sample()[active] == "standby")
            cut_off.add(standby)
            os.kill(nodes[standby].pid, signal.SIGKILL)
            took = eventually("lock moves after its node died",
                              lambda: sample()[active] == "active", timeout_s=20)
            print(f"failover after the node died: {took:.2f} s")
            eventually("the northd of the dead node no longer says active",
                       lambda: sample()[standby] != "active")
        finally:
            for n in northds:
                n.stop()
            shutil.rmtree(ctl_dir, ignore_errors=True)
