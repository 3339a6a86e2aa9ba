"""The ``crdtdb`` command: the README's main job runs and reports honestly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crdtdb.cli import main
from crdtdb.replica import encoding as enc
from crdtdb.replica import envelope

ROOT = Path(__file__).resolve().parent.parent
SB = "/usr/share/ovn/ovn-sb.ovsschema"
needs_sb = pytest.mark.skipif(not Path(SB).exists(), reason="ovn-common not installed")


@needs_sb
def test_demo_transactions_all_succeed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["transact", "--schema", SB, str(ROOT / "examples" / "sb-bootstrap.json")]) == 0
    replies = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(replies) == 7
    assert replies[-1][0]["rows"][0]["up"] is True
    assert replies[-2][1]["rows"] == [{"name": "hv1", "nb_cfg": 1, "external_ids": [
        "map", [["agent", "ovn-controller"]]]}]


@needs_sb
def test_failures_set_exit_status_and_unknown_db(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "t.json"
    f.write_text(json.dumps([["OVN_Southbound", {"op": "insert", "table": "Nope", "row": {}}],
                             ["Nope", {"op": "comment", "comment": "x"}]]))
    assert main(["transact", "--schema", SB, str(f)]) == 1
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first[0]["error"] == "syntax error"
    assert second == {"error": "unknown database",
                      "details": "transact request specifies unknown database Nope"}


def test_schema_command_reports_bad_schema(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ovsschema"
    bad.write_text(json.dumps({"name": "X", "tables": {"T": {"columns": {"c": {"type": "int"}}}}}))
    out = subprocess.run([sys.executable, "-m", "crdtdb.cli", "schema", str(bad)],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 1
    assert "table T, column c" in out.stderr and "atomic-type" in out.stderr


def test_version_says_which_compiled_modules_run() -> None:
    base = {k: v for k, v in os.environ.items() if k != "CRDTDB_PURE_PYTHON"}
    for env, reader in (({}, "compiled"), ({"CRDTDB_PURE_PYTHON": "1"}, "Python")):
        out = subprocess.run([sys.executable, "-m", "crdtdb.cli", "--version"],
                             capture_output=True, text=True, check=True,
                             env={**base, **env})
        assert out.stdout.startswith("crdtdb "), out.stdout
        if enc.BUILT:  # (test_replica_join checks that it is)
            assert f"(marker reader: {reader}" in out.stdout, out.stdout
        if envelope.BUILT:  # (test_replica_envelope checks that it is)
            assert f"; update headers: {reader}" in out.stdout, out.stdout


def test_help_lists_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "crdtdb.cli", "--help"], capture_output=True,
                         text=True, check=True)
    assert "transact" in out.stdout and "schema" in out.stdout
