"""The embedded API: Python values, typed errors, monitors; and the example agent, run for real
against a second node that plays ovn-northd."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
import trio
import trio.testing

import crdtdb
from crdtdb.embedded import RowChange

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
MERGE = str(ROOT / "tests" / "schemas" / "merge.ovsschema")


@pytest.mark.trio
async def test_python_values_and_typed_errors() -> None:
    async with crdtdb.open_node([MERGE]) as node:
        db = node.database("Merge")
        p = db.insert("Parent", {"name": "p", "n": 3, "tags": {"x", "y"}, "opts": {"k": "v"}})
        assert isinstance(p, uuid.UUID)
        row = db.get("Parent", p)
        assert row is not None
        assert (row["name"], row["n"], row["tags"], row["opts"]) == (
            "p", 3, frozenset({"x", "y"}), {"k": "v"})
        assert row["small"] == frozenset()
        c = db.insert("Link", {"target": p})
        assert db.get("Link", c)["target"] == p  # type: ignore[index]
        assert db.update("Parent", {"name": "p"}, {"n": 4}) == 1
        assert [r["n"] for r in db.select("Parent", {"name": "p"})] == [4]
        with pytest.raises(crdtdb.TransactionError) as info:
            db.insert("Parent", {"name": "p"})  # index on name
        assert info.value.tag == "constraint violation"
        with pytest.raises(crdtdb.TransactionError) as info:
            db.delete("Parent", p)  # still referenced by the Link
        assert info.value.tag == "referential integrity violation"
        with pytest.raises(KeyError):
            db.insert("Parent", {"nope": 1})


@pytest.mark.trio
async def test_monitor_yields_initial_rows_then_changes() -> None:
    async with crdtdb.open_node([MERGE]) as node:
        db = node.database("Merge")
        first = db.insert("Parent", {"name": "a"})
        seen: list[RowChange] = []
        async with trio.open_nursery() as n:
            async def watch() -> None:
                async with db.monitor("Parent") as changes:
                    async for change in changes:
                        seen.append(change)
                        if len(seen) == 3:
                            return
            n.start_soon(watch)
            await trio.testing.wait_all_tasks_blocked()
            second = db.insert("Parent", {"name": "b"})
            db.delete("Parent", first)
    assert [(c.uuid, c.old is None, c.new is None) for c in seen] == [
        (first, True, False), (second, True, False), (first, False, True)]


@pytest.mark.trio
async def test_the_example_agent_claims_ports_created_on_a_peer(tmp_path: Path) -> None:
    import agent

    sb_schema = "/usr/share/ovn/ovn-sb.ovsschema"
    if not Path(sb_schema).exists():
        pytest.skip("ovn-common not installed")
    async with crdtdb.open_node([sb_schema], listen=["127.0.0.1:0"]) as northd:
        host, port = northd.node.transport.listen_addresses[0]
        async with trio.open_nursery() as n:
            claimed: list[int] = []

            async def run_agent() -> None:
                claimed.append(await agent.run("hv1", peers=[f"{host}:{port}"],
                                               data_dir=str(tmp_path / "agent"), claims=2))
            n.start_soon(run_agent)
            sb = northd.database("OVN_Southbound")
            dp = sb.insert("Datapath_Binding", {"tunnel_key": 1})
            ports = [sb.insert("Port_Binding", {
                "logical_port": f"lp{i}", "tunnel_key": i + 1, "datapath": dp,
                "options": {"requested-chassis": "hv1" if i < 2 else "hv2"}})
                for i in range(3)]
            with trio.fail_after(20):
                while True:
                    rows = [sb.get("Port_Binding", p) for p in ports]
                    if all(r and r["chassis"] is not None for r in rows[:2]):  # type: ignore
                        break
                    await trio.sleep(0.05)
            [hv1] = sb.select("Chassis", {"name": "hv1"})
            assert [r["chassis"] for r in rows] == [hv1["_uuid"], hv1["_uuid"], None]  # type: ignore
            assert all(r["up"] for r in rows[:2])  # type: ignore[index]
    assert claimed == [2]


@pytest.mark.trio
async def test_a_monitor_that_falls_behind_is_told() -> None:
    async with crdtdb.open_node([MERGE]) as node:
        db = node.database("Merge")
        with pytest.raises(crdtdb.MonitorOverflowError):
            async with db.monitor("Parent", buffer=2) as changes:
                for i in range(5):
                    db.insert("Parent", {"name": f"p{i}"})
                async for _ in changes:
                    pass
