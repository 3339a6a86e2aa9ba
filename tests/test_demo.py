"""The README's main job: scripts/demo runs three gossiping nodes; real ovn-nbctl/ovn-sbctl
write through one node and read through another."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.ovsdb_server
def test_demo_serves_real_ovn_clients_and_keeps_data(tmp_path: Path) -> None:
    if not (shutil.which("ovn-nbctl") and shutil.which("ovn-sbctl")):
        if os.environ.get("CI"):
            pytest.fail("ovn-nbctl/ovn-sbctl missing in CI")
        pytest.skip("ovn-common not installed")
    env = {**os.environ, "CRDTDB_RUN_DIR": str(tmp_path / "run")}
    for attempt in range(2):  # the second run starts from the first run's --data-dir
        out = subprocess.run([str(ROOT / "scripts" / "demo"), "--once"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr + out.stdout
        assert "switch" in out.stdout and "(sw0)" in out.stdout
        assert 'addresses: ["50:54:00:00:00:01 192.168.0.11"]' in out.stdout
        assert "Chassis hv1" in out.stdout and 'ip: "192.0.2.11"' in out.stdout
        assert out.stdout.count("(sw0)") == 1, f"run {attempt}: --may-exist kept one switch"
        assert "node2 has both writes" in out.stdout
        assert "peers: 2" in out.stdout
        assert "the Northbound on etcd" in out.stdout
    log = (tmp_path / "run" / "node0" / "crdtdb.log").read_text()
    assert "loaded" in log and "shutting down" in log
    assert "OVN_Northbound: linearizable through the etcd plugin" in log
