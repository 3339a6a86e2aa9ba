"""Issue 8's proof: real OVN chassis (ovs-vswitchd dummy datapath + ovn-controller), each on
its own crdtdb node, against the same cloud on a central ovsdb-server.

* the same NB script gives the same logical flows and, chassis by chassis, the same OpenFlow
  tables (as multisets) as with a central ovsdb-server; every port is claimed by its chassis;
  ``ovn-nbctl --wait=hv sync`` returns;
* a chassis cut off from the others keeps its flows and can still claim a new local port; the
  rest keep working; after the heal everything converges and ``--wait=hv`` returns;
* a chassis's node killed (SIGKILL) and restarted: ovn-controller reconnects, nothing is lost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtdb.sandbox import Sandbox, SandboxError, find_tools

pytestmark = pytest.mark.ovsdb_server

N_CHASSIS = int(os.environ.get("CRDTDB_SANDBOX_CHASSIS", "3"))


@pytest.fixture(autouse=True)
def _tools() -> None:
    try:
        find_tools()
    except SandboxError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def build_cloud(sb: Sandbox) -> None:
    """Two switches behind a router, an ACL, two ports per chassis; every step --wait=sb so
    that tunnel keys are allocated in the same order on both sides."""
    steps = [
        ["ls-add", "sw0"], ["ls-add", "sw1"], ["lr-add", "lr0"],
        ["lrp-add", "lr0", "lr0-sw0", "00:00:00:00:ff:01", "10.0.0.254/24"],
        ["lrp-add", "lr0", "lr0-sw1", "00:00:00:00:ff:02", "10.0.1.254/24"],
        ["lsp-add", "sw0", "sw0-lr0", "--", "lsp-set-type", "sw0-lr0", "router", "--",
         "lsp-set-addresses", "sw0-lr0", "router", "--", "lsp-set-options", "sw0-lr0",
         "router-port=lr0-sw0"],
        ["lsp-add", "sw1", "sw1-lr0", "--", "lsp-set-type", "sw1-lr0", "router", "--",
         "lsp-set-addresses", "sw1-lr0", "router", "--", "lsp-set-options", "sw1-lr0",
         "router-port=lr0-sw1"],
        ["acl-add", "sw0", "to-lport", "1000", "tcp.dst==80", "allow-related"],
    ]
    for ch in sb.chassis:
        for sw, j in (("sw0", 1), ("sw1", 2)):
            port = f"{ch.name}-p{j}"
            steps.append(["lsp-add", sw, port, "--", "lsp-set-addresses", port,
                          f"00:00:00:0{j}:00:{ch.index + 1:02x} 10.0.{j - 1}.{ch.index + 1}"])
    for step in steps:
        sb.nbctl("--wait=sb", *step)
    for ch in sb.chassis:
        for j in (1, 2):
            sb.bind_port(ch, f"{ch.name}-p{j}")


def claimed_by_their_chassis(sb: Sandbox, remote: str | None = None) -> bool:
    owners = sb.port_chassis(remote)
    return all(owners.get(f"{ch.name}-p{j}") == ch.name for ch in sb.chassis for j in (1, 2))


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox(tmp_path / "crdtdb", N_CHASSIS) as sb:
        build_cloud(sb)
        sb.wait_for("every port claimed by its chassis", lambda: claimed_by_their_chassis(sb))
        sb.wait_hv()
        yield sb


def test_same_flows_as_with_a_central_ovsdb_server(cloud: Sandbox, tmp_path: Path) -> None:
    with Sandbox(tmp_path / "ovsdb", N_CHASSIS, central="ovsdb") as ref:
        build_cloud(ref)
        ref.wait_for("every port claimed", lambda: claimed_by_their_chassis(ref))
        ref.wait_hv()
        assert cloud.registered() == ref.registered() == {c.name for c in cloud.chassis}
        assert cloud.logical_flows() == ref.logical_flows()
        for ours, theirs in zip(cloud.chassis, ref.chassis, strict=True):
            # Each chassis's node agrees with the central one about who claimed what.
            assert claimed_by_their_chassis(cloud, ours.sb_remote)
            a, b = cloud.openflow(ours), ref.openflow(theirs)
            assert sum(a.values()) > 100
            assert a == b, (f"{ours.name}: only with crdtdb: {list((a - b).elements())[:5]}; "
                            f"only with ovsdb-server: {list((b - a).elements())[:5]}")


def test_partitioned_chassis_keeps_working_and_converges(cloud: Sandbox) -> None:
    hv1, hv2 = cloud.chassis[0], cloud.chassis[1]
    # A port for hv1, known to its node before the cut; its VIF appears during the cut.
    cloud.nbctl("--wait=hv", "lsp-add", "sw0", "hv1-late", "--", "lsp-set-addresses",
                "hv1-late", "00:00:00:0a:00:01 10.0.0.101")
    flows_before = cloud.openflow(hv1)
    cloud.partition(hv1)
    cloud.bind_port(hv1, "hv1-late")
    cloud.wait_for("hv1 claims its new port on its own node", lambda: cloud.port_chassis(
        hv1.sb_remote).get("hv1-late") == "hv1")
    assert sum(cloud.openflow(hv1).values()) >= sum(flows_before.values())
    # The rest of the cloud keeps working: a new port on hv2 is claimed.
    cloud.nbctl("--wait=sb", "lsp-add", "sw1", "hv2-late", "--", "lsp-set-addresses",
                "hv2-late", "00:00:00:0b:00:02 10.0.1.102")
    cloud.bind_port(hv2, "hv2-late")
    cloud.wait_for("hv2 claims its new port", lambda: cloud.port_chassis().get(
        "hv2-late") == "hv2")
    assert cloud.port_chassis().get("hv1-late") != "hv1"  # not heard of yet: cut off
    cloud.heal(hv1)
    cloud.wait_for("hv1's claim reaches the central node", lambda: cloud.port_chassis().get(
        "hv1-late") == "hv1", timeout_s=30)
    cloud.wait_hv()
    for ch in cloud.chassis:  # other chassis's claims come with a node's next pull
        cloud.wait_for(f"{ch.name}'s node converges", lambda ch=ch: cloud.port_chassis(
            ch.sb_remote) == cloud.port_chassis())


def test_chassis_node_killed_and_restarted_loses_nothing(cloud: Sandbox) -> None:
    hv2 = cloud.chassis[1]
    # Other chassis's claims reach hv2's node with its next pull (the central node does not
    # forward them): wait for them, so that "before" is the whole picture.
    cloud.wait_for("hv2's node has every claim", lambda: cloud.port_chassis(
        hv2.sb_remote) == cloud.port_chassis())
    before = cloud.port_chassis(hv2.sb_remote)
    cloud.kill_node(hv2)
    cloud.restart_node(hv2)
    assert cloud.port_chassis(hv2.sb_remote) == before
    cloud.nbctl("--wait=sb", "lsp-add", "sw0", "hv2-new", "--", "lsp-set-addresses",
                "hv2-new", "00:00:00:0c:00:02 10.0.0.202")
    cloud.bind_port(hv2, "hv2-new")
    cloud.wait_for("the restarted chassis claims a new port", lambda: cloud.port_chassis().get(
        "hv2-new") == "hv2", timeout_s=30)
    cloud.wait_hv()
    assert claimed_by_their_chassis(cloud, hv2.sb_remote)


@pytest.mark.parametrize("central", ["crdtdb", "ovsdb"])
def test_two_chassis_claiming_one_port_settle_the_same_everywhere(tmp_path: Path,
                                                                  central: str) -> None:
    """A live-migration race: the VIF exists on hv1 and hv2 at once. Both ovn-controllers
    fight over Port_Binding.chassis (rate-limited by ovn-controller itself, with
    ovsdb-server too); once the VM has left hv1, every node says hv2 and stays so."""
    with Sandbox(tmp_path / central, 2, central=central) as sb:
        sb.nbctl("--wait=sb", "ls-add", "sw0")
        sb.nbctl("--wait=sb", "lsp-add", "sw0", "vm1", "--", "lsp-set-addresses", "vm1",
                 "00:00:00:00:00:99 10.0.0.99")
        hv1, hv2 = sb.chassis
        sb.bind_port(hv1, "vm1")
        sb.wait_for("hv1 claims vm1", lambda: sb.port_chassis().get("vm1") == "hv1")
        sb.bind_port(hv2, "vm1")
        sb.wait_for("hv2 claims vm1", lambda: sb.port_chassis().get("vm1") == "hv2")
        time.sleep(2.0)  # the race: both chassis have the VIF
        sb.vsctl(hv1, "del-port", "br-int", "vm1")  # the migration completes

        def views() -> list[str | None]:
            remotes = [None, *(c.sb_remote for c in sb.chassis if central == "crdtdb")]
            return [sb.port_chassis(r).get("vm1") for r in remotes]

        sb.wait_for("every node says hv2", lambda: set(views()) == {"hv2"})
        for _ in range(10):
            time.sleep(0.2)
            assert set(views()) == {"hv2"}, views()
        sb.wait_hv()
        flaps = [(c.dir / "ovn-controller.log").read_text().count("Changing chassis for lport vm1")
                 for c in sb.chassis]
        print(f"{central}: chassis changes logged by hv1, hv2 during the race: {flaps}")


def test_compaction_rounds_under_a_running_cloud(tmp_path: Path) -> None:
    """The central node compacts the SB every 25 changes while the cloud is built and
    changed: every node moves to each new epoch (none stranded), ovn-controller keeps its
    ports and flows, and ``--wait=hv`` returns."""
    with Sandbox(tmp_path / "compacting", 2, compact_after_updates=25) as sb:
        build_cloud(sb)
        sb.wait_for("every port claimed by its chassis", lambda: claimed_by_their_chassis(sb))
        for i in range(4):  # more changes, each to every chassis
            sb.nbctl("--wait=hv", "lsp-add", "sw1", f"extra{i}", "--", "lsp-set-addresses",
                     f"extra{i}", f"00:00:00:0d:00:{i + 1:02x} 10.0.1.{100 + i}")
        sb.wait_hv()
        sb.wait_for("a round cut on the central node",
                    lambda: sb.node_status()["gossip"]["rounds_cut"] >= 1)

        def settled() -> bool:
            # The central node may start its next round at any time (it counts the cloud's
            # own changes too): a node holding its writes for one is in it, not stuck.
            statuses = [sb.node_status(), *(sb.node_status(ch) for ch in sb.chassis)]
            epochs = {st["databases"]["OVN_Southbound"]["epoch_id"] for st in statuses}
            return len(epochs) == 1 and all(st["gossip"]["holding"] == [] for st in statuses)
        sb.wait_for("every node in the central node's epoch, none in a round", settled)
        for ch in sb.chassis:
            st = sb.node_status(ch)
            assert st["gossip"]["stranded"] == {}
            assert claimed_by_their_chassis(sb, ch.sb_remote)
            assert sb.logical_flows(ch.sb_remote) == sb.logical_flows()
            assert sum(sb.openflow(ch).values()) > 100
        sb.wait_hv()
