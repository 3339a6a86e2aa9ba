"""crdtdb serve on pssl (mutual TLS) and ptcp (inactivity probes), with real clients.

Certificates come from openssl, made by the test: a CA, a server certificate and a client
certificate signed by it, and a client certificate from another CA that must be refused.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import require_binaries

from crdtdb.testing.crdtdb_server import CrdtdbServer

SB = Path("/usr/share/ovn/ovn-sb.ovsschema")
pytestmark = pytest.mark.ovsdb_server


def _need() -> None:
    require_binaries()
    if not SB.exists() or not shutil.which("ovsdb-client"):
        pytest.skip("ovn-common / ovsdb-client not installed")


def _port(server: CrdtdbServer, kind: str, timeout_s: float = 10.0) -> int:
    """The server's ``kind`` listener port, from its log. The unix socket (which the fixture
    waits for) is listened on first: the others may be logged a moment later."""
    deadline = time.monotonic() + timeout_s
    while True:
        for addr in server.addresses():
            if addr.startswith(kind + ":"):
                return int(addr.rsplit(":", 1)[1])
        if time.monotonic() > deadline:
            raise AssertionError(f"no {kind} address in {server.addresses()}")
        time.sleep(0.02)


def test_pssl_mutual_tls_with_ovsdb_client(pki: Path, tmp_path: Path) -> None:
    _need()
    args = (f"--private-key={pki / 'server-privkey.pem'}",
            f"--certificate={pki / 'server-cert.pem'}", f"--ca-cert={pki / 'cacert.pem'}")
    with CrdtdbServer([SB], tmp_path, remotes=["pssl:0:127.0.0.1"], extra_args=args) as srv:
        port = _port(srv, "ssl")

        def client(who: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ovsdb-client", f"--private-key={pki / (who + '-privkey.pem')}",
                 f"--certificate={pki / (who + '-cert.pem')}",
                 f"--ca-cert={pki / 'cacert.pem'}", "--timeout=10",
                 "transact", f"ssl:127.0.0.1:{port}",
                 json.dumps(["OVN_Southbound", {"op": "insert", "table": "SB_Global",
                                                "row": {"nb_cfg": 7}}])],
                capture_output=True, text=True, timeout=30, check=False)

        ok = client("client")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)[0]["uuid"][0] == "uuid"
        refused = client("stranger")
        assert refused.returncode != 0, "a client certificate from another CA was accepted"
        assert srv.running
        dump = subprocess.run(["ovsdb-client", "dump", srv.remote, "OVN_Southbound",
                               "SB_Global", "nb_cfg"], capture_output=True, text=True,
                              timeout=30, check=True)
        assert "7" in dump.stdout.split()


def test_tcp_idle_client_is_probed_then_dropped(tmp_path: Path) -> None:
    _need()
    with CrdtdbServer([SB], tmp_path, remotes=["ptcp:0:127.0.0.1"],
                      extra_args=("--probe-interval=0.5",)) as srv:
        port = _port(srv, "tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            probe = json.loads(s.recv(65536))
            assert probe == {"id": "echo", "method": "echo", "params": []}
            # (before the socket's 5 s timeout, which would raise instead)
            assert s.recv(65536) == b"", "an unanswered probe must end the connection"
        # A client that answers its probes stays connected.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            for _ in range(3):
                assert json.loads(s.recv(65536))["method"] == "echo"
                s.sendall(b'{"id":"echo","result":[],"error":null}')
            s.sendall(b'{"id":1,"method":"echo","params":["alive"]}')
            assert json.loads(s.recv(65536)) == {"id": 1, "result": ["alive"], "error": None}
        assert "inactivity probe" in srv.log_tail(200)
