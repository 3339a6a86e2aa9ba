"""mDNS discovery between network namespaces joined by a bridge, all created by the test.

Two `crdtdb serve --discover` nodes, each in its own namespace with no --peer: they find each
other over mDNS and gossip; a chassis added through one is listed through the other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import SB_SCHEMA, need_ovn
from test_cluster import chassis, eventually, sbctl

from crdtdb.testing.crdtdb_server import CrdtdbServer

pytestmark = pytest.mark.ovsdb_server


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def namespaces() -> Iterator[list[tuple[str, str]]]:
    """Two namespaces with 10.77.0.1 and .2, joined by a bridge in a third namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        if os.environ.get("CI"):
            pytest.fail("the discovery test needs root and iproute2 in CI")
        pytest.skip("needs root and iproute2")
    tag = uuid.uuid4().hex[:6]
    br_ns, nss = f"crdtbr-{tag}", [f"crdta-{tag}", f"crdtb-{tag}"]
    try:
        for ns in (br_ns, *nss):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", br_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", br_ns, "link", "set", "br0", "up")
        out = []
        for i, ns in enumerate(nss):
            inner, outer = f"v{i}", f"v{i}br"
            _ip("-n", ns, "link", "add", inner, "type", "veth", "peer", "name", outer,
                "netns", br_ns)
            _ip("-n", br_ns, "link", "set", outer, "master", "br0")
            _ip("-n", br_ns, "link", "set", outer, "up")
            addr = f"10.77.0.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up", "multicast", "on")
            _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", inner)
            out.append((ns, addr))
        yield out
    finally:
        for ns in (*nss, br_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


class NamespacedServer(CrdtdbServer):
    def __init__(self, netns: str, *args: object, **kwargs: object):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.netns = netns

    def _command(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super()._command()]


def test_nodes_in_two_namespaces_find_each_other(tmp_path: Path,
                                                 namespaces: list[tuple[str, str]]) -> None:
    need_ovn("ovn-sbctl")
    nodes = [NamespacedServer(ns, [SB_SCHEMA], tmp_path / ns, data_dir=tmp_path / ns / "data",
                              extra_args=[f"--listen={addr}:6650", "--discover"])
             for ns, addr in namespaces]
    try:
        for node in nodes:
            node.start()
        a, b = nodes
        sbctl(a, "chassis-add", "hv-a", "geneve", "192.0.2.1")
        eventually("b lists a's chassis", lambda: "hv-a" in chassis(b), timeout=30)
        sbctl(b, "chassis-add", "hv-b", "geneve", "192.0.2.2")
        eventually("a lists b's chassis", lambda: chassis(a) == {"hv-a", "hv-b"}, timeout=30)
        assert "discovered" in (a.log_path.read_text() + b.log_path.read_text())
    finally:
        for node in nodes:
            node.close()
