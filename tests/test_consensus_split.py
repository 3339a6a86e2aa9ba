"""A database with tables of both levels (crdtdb.consensus.split).

* the configuration refuses a split whose references cross levels, naming the column;
* in the server core, a transaction on eventual tables runs on the replica, one on
  linearizable tables goes through the plugin, one on both is refused whole; monitors see
  both kinds of change;
* with real processes: the OVN Northbound eventual (gossiped) except Chassis_Template_Var
  (no reference to or from it) on etcd, through two nodes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import NB_SCHEMA, drive_local_commits, need_ovn

from crdtdb.consensus.config import ConfigError, parse_config
from crdtdb.consensus.local import local_database
from crdtdb.consensus.split import SplitDatabase, check_split
from crdtdb.engine import DatabaseSchema, MemoryDatabase
from crdtdb.ovsdb.core import ServerCore
from crdtdb.ovsdb.jsonrpc import Notification, Reply, Request
from crdtdb.replica import Replica
from crdtdb.testing.crdtdb_server import CrdtdbServer
from crdtdb.testing.etcd_server import EtcdCluster, find_etcd
from crdtdb.testing.ports import free_tcp_ports

NB = DatabaseSchema.from_file(NB_SCHEMA).stored()


def test_a_split_cannot_cut_a_reference() -> None:
    assert check_split(NB, ["Chassis_Template_Var"]) == {"Chassis_Template_Var"}
    with pytest.raises(ConfigError, match=r"NAT\.exempted_ext_ips references Address_Set"):
        check_split(NB, ["Address_Set"])
    with pytest.raises(ConfigError, match=r"Logical_Switch\.ports references "
                                          r"Logical_Switch_Port"):
        check_split(NB, ["Logical_Switch_Port"])
    with pytest.raises(ConfigError, match="no such table"):
        check_split(NB, ["Address_Sets"])


def test_config_names_the_linearizable_tables() -> None:
    config = parse_config({"databases": {"OVN_Northbound": {"consistency": "eventual", "tables": {
        "Chassis_Template_Var": {"consistency": "linearizable"}}}}})
    assert config.linearizable_tables(NB) == {"Chassis_Template_Var"}
    assert config.plugins_used() == {"local"}
    whole = parse_config({"databases": {"OVN_Northbound": {"consistency": "linearizable"}}})
    assert whole.linearizable_tables(NB) == set(NB.tables)


def _core() -> tuple[ServerCore, SplitDatabase]:
    replica = Replica.in_memory(NB)
    db = SplitDatabase(NB, replica, local_database(NB, MemoryDatabase(NB)),
                       ["Chassis_Template_Var"])
    core = ServerCore({"OVN_Northbound": db}, now_ms=lambda: 0)
    db.add_listener(lambda ev: None if ev.local else core.publish("OVN_Northbound",
                                                                   ev.changes))
    return core, db


def test_transactions_are_routed_and_mixed_ones_refused() -> None:
    core, db = _core()
    s = core.open_session()
    core.handle(s, Request(1, "monitor_cond", ["OVN_Northbound", "m", {
        "Chassis_Template_Var": [{"columns": ["chassis"]}],
        "Logical_Switch": [{"columns": ["name"]}]}]))
    s.drain()
    # Eventual: committed on the replica at once (no plugin round).
    core.handle(s, Request(2, "transact", ["OVN_Northbound", {
        "op": "insert", "table": "Logical_Switch", "row": {"name": "sw0"}}]))
    assert not core.commits
    out = s.drain()
    assert [type(e) for e in out] == [Notification, Reply]
    assert db.eventual.row_count("Logical_Switch") == 1
    # Linearizable: through the plugin; the update comes from its feed, before the reply.
    core.handle(s, Request(3, "transact", ["OVN_Northbound", {
        "op": "insert", "table": "Chassis_Template_Var", "row": {"chassis": "hv1"}}]))
    assert len(core.commits) == 1 and s.drain() == []
    drive_local_commits(core)
    out = s.drain()
    assert [type(e) for e in out] == [Notification, Reply]
    assert "Chassis_Template_Var" in out[0].params[1]
    assert db.linearizable_store.row_count("Chassis_Template_Var") == 1
    assert db.eventual.row_count("Chassis_Template_Var") == 0
    # Both levels in one transaction: refused whole, nothing applied.
    core.handle(s, Request(4, "transact", ["OVN_Northbound",
                                           {"op": "insert", "table": "Logical_Switch",
                                            "row": {"name": "sw1"}},
                                           {"op": "insert", "table": "Chassis_Template_Var",
                                            "row": {"chassis": "hv2"}}]))
    drive_local_commits(core)
    (reply,) = s.drain()
    assert reply.result[0]["error"] == "not supported"
    assert "different consistency" in reply.result[0]["details"] and reply.result[1] is None
    assert db.row_count("Logical_Switch") == 1 and db.row_count("Chassis_Template_Var") == 1
    # Reads see one database.
    core.handle(s, Request(5, "transact", ["OVN_Northbound", {
        "op": "select", "table": "Logical_Switch", "where": [], "columns": ["name"]}]))
    assert s.drain() == [Reply(5, [{"rows": [{"name": "sw0"}]}])]

    # A linearizable write may read eventual tables (ovn-nbctl reads NB_Global every time).
    core.handle(s, Request(6, "transact", ["OVN_Northbound",
                                           {"op": "select", "table": "Logical_Switch",
                                            "where": [], "columns": ["name"]},
                                           {"op": "insert", "table": "Chassis_Template_Var",
                                            "row": {"chassis": "hv3"}}]))
    drive_local_commits(core)
    replies = [e for e in s.drain() if isinstance(e, Reply)]
    assert replies[0].result[0] == {"rows": [{"name": "sw0"}]}
    assert "uuid" in replies[0].result[1]

@pytest.mark.ovsdb_server
@pytest.mark.etcd
@pytest.mark.skipif(find_etcd() is None, reason="etcd not installed")
def test_two_nodes_gossip_the_eventual_tables_and_share_the_linearizable_one(
        tmp_path: Path) -> None:
    tools = need_ovn("ovn-nbctl")
    with EtcdCluster(1, tmp_path / "etcd") as etcd:
        config = tmp_path / "crdtdb.toml"
        config.write_text("\n".join([
            "[plugins.etcd]", f"endpoints = {json.dumps(etcd.endpoints)}",
            "[databases.OVN_Northbound]", 'consistency = "eventual"', 'plugin = "etcd"',
            "[databases.OVN_Northbound.tables.Chassis_Template_Var]",
            'consistency = "linearizable"']) + "\n")
        ports = free_tcp_ports(2)
        nodes = [CrdtdbServer([NB_SCHEMA], tmp_path / f"n{i}", data_dir=tmp_path / f"n{i}" / "d",
                              extra_args=[f"--config={config}", f"--node-id=n{i}",
                                          f"--listen=127.0.0.1:{ports[i]}",
                                          *([f"--peer=127.0.0.1:{ports[0]}"] if i else [])])
                 for i in range(2)]

        def nbctl(node: CrdtdbServer, *args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([tools["ovn-nbctl"], f"--db={node.remote}", "--timeout=10",
                                   *args], capture_output=True, text=True, timeout=20)

        with nodes[0], nodes[1]:
            a, b = nodes
            # ovn-nbctl inserts NB_Global with whatever it writes when the row is missing:
            # create it first (an eventual write) and let it reach b.
            assert nbctl(a, "init").returncode == 0
            for _ in range(200):
                if nbctl(b, "--no-wait", "--bare", "--columns=_uuid", "list",
                         "NB_Global").stdout.strip():
                    break
                subprocess.run(["sleep", "0.05"])
            assert nbctl(a, "create", "Chassis_Template_Var", "chassis=hv1",
                         "variables:vip=10.0.0.1").returncode == 0
            # Linearizable: visible through b at once, no gossip involved.
            out = nbctl(b, "--bare", "--columns=variables", "find", "Chassis_Template_Var",
                        "chassis=hv1")
            assert out.stdout.strip() == "vip=10.0.0.1", out.stderr
            # Eventual: gossiped.
            assert nbctl(a, "ls-add", "sw0").returncode == 0
            for _ in range(200):
                if "sw0" in nbctl(b, "ls-list").stdout:
                    break
                subprocess.run(["sleep", "0.05"])
            else:
                pytest.fail("sw0 never reached node b")
            # One transaction on both levels: refused, nothing applied.
            mixed = nbctl(a, "ls-add", "sw1", "--", "create", "Chassis_Template_Var",
                          "chassis=hv2")
            assert mixed.returncode != 0 and "different consistency" in mixed.stderr, mixed
            assert "sw1" not in nbctl(a, "ls-list").stdout
            log = a.log_path.read_text()
            assert "tables Chassis_Template_Var linearizable through the etcd plugin" in log
