"""Three real `crdtdb serve` processes on loopback gossiping the Southbound.

A write through ovn-sbctl on any node becomes visible through ovn-sbctl on the others; a node
killed with SIGKILL and restarted keeps what it had and catches up with what it missed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import SB_SCHEMA, need_ovn

from crdtdb.testing.crdtdb_server import CrdtdbServer
from crdtdb.testing.ports import free_tcp_ports

pytestmark = pytest.mark.ovsdb_server

TIMEOUT_S = 20.0


def sbctl(server: CrdtdbServer, *args: str) -> str:
    tools = need_ovn("ovn-sbctl")
    out = subprocess.run([tools["ovn-sbctl"], f"--db={server.remote}", "--timeout=5", *args],
                         capture_output=True, text=True, timeout=15)
    assert out.returncode == 0, out.stderr
    return out.stdout


def chassis(server: CrdtdbServer) -> set[str]:
    return set(sbctl(server, "--bare", "--columns=name", "list", "Chassis").split())


def eventually(what: str, fn: Callable[[], bool], timeout: float = TIMEOUT_S) -> float:
    t0 = time.monotonic()
    while not fn():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - t0


class Cluster:
    def __init__(self, tmp_path: Path, n: int):
        self.ports = free_tcp_ports(n)
        self.nodes: list[CrdtdbServer] = []
        for i in range(n):
            peers = [f"--peer=127.0.0.1:{p}" for j, p in enumerate(self.ports) if j < i]
            self.nodes.append(CrdtdbServer(
                [SB_SCHEMA], tmp_path / f"node{i}", data_dir=tmp_path / f"node{i}" / "data",
                extra_args=[f"--listen=127.0.0.1:{self.ports[i]}", *peers]))

    def __enter__(self) -> Cluster:
        for node in self.nodes:
            node.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    need_ovn("ovn-sbctl")
    with Cluster(tmp_path, 3) as c:
        yield c


def test_writes_on_any_node_reach_every_node(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    sbctl(a, "chassis-add", "hv1", "geneve", "192.0.2.1")
    for node in (b, c):
        eventually(f"hv1 on {node.workdir.name}", lambda node=node: "hv1" in chassis(node))
    sbctl(c, "chassis-add", "hv3", "geneve", "192.0.2.3")
    for node in (a, b):
        eventually(f"hv3 on {node.workdir.name}",
                   lambda node=node: chassis(node) == {"hv1", "hv3"})
    sbctl(b, "chassis-del", "hv1")
    for node in (a, c):
        eventually(f"hv1 gone on {node.workdir.name}",
                   lambda node=node: chassis(node) == {"hv3"})
    # Encaps (a non-root table) went with their chassis everywhere.
    for node in (a, b, c):
        eventually("one encap left", lambda node=node: len(
            sbctl(node, "--bare", "--columns=ip", "list", "Encap").split()) == 1)
    def peers_in_status() -> int:
        status = json.loads((a.data_dir / "status.json").read_text())  # type: ignore[operator]
        return len({p["node_id"] for p in status["peers"].values() if p["node_id"]})
    eventually("status file lists both peers", lambda: peers_in_status() == 2)


def test_a_killed_node_keeps_its_data_and_catches_up(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    sbctl(b, "chassis-add", "hv-b", "geneve", "192.0.2.2")
    eventually("hv-b everywhere", lambda: all("hv-b" in chassis(n) for n in (a, c)))
    assert b.pid is not None
    os.kill(b.pid, signal.SIGKILL)
    b._proc.wait(10)  # type: ignore[union-attr]
    b.stop()
    sbctl(a, "chassis-add", "hv-a", "geneve", "192.0.2.10")
    b.start()
    eventually("b has both", lambda: chassis(b) == {"hv-a", "hv-b"})
    sbctl(b, "chassis-add", "hv-b2", "geneve", "192.0.2.20")
    eventually("a sees b's new write", lambda: "hv-b2" in chassis(a))


def test_status_command(cluster: Cluster) -> None:
    a = cluster.nodes[0]
    eventually("status written", lambda: (a.data_dir / "status.json").exists())  # type: ignore
    out = subprocess.run(
        [sys.executable, "-m", "crdtdb.cli", "status", str(a.data_dir)], capture_output=True,
        text=True, timeout=30, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert "OVN_Southbound:" in out.stdout and "peers:" in out.stdout
