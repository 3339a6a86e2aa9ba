"""A chassis agent that embeds a crdtdb node instead of talking to a central Southbound.

It registers its Chassis (with a geneve Encap), then watches Port_Binding: whenever a port
asks for this chassis (``options:requested-chassis``) and nobody holds it, the agent claims
it (``chassis`` and ``up``), the way ovn-controller does. Ports may be created on any node:
the agent reacts to changes merged from its peers.

    python examples/agent.py --name hv1 --listen 127.0.0.1:6650 --peer 127.0.0.1:6651

Stop with Ctrl-C (or ``--claims N``: stop after N claims).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import crdtdb

SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"
log = logging.getLogger("agent")


async def run(name: str, *, listen: Sequence[str] = (), peers: Sequence[str] = (),
              data_dir: str | None = None, schema: str = SB_SCHEMA, encap_ip: str = "192.0.2.1",
              claims: int | None = None,
              task_status: trio.TaskStatus[crdtdb.EmbeddedNode] = trio.TASK_STATUS_IGNORED
              ) -> int:
    """Run the agent; returns the number of ports it claimed."""
    async with crdtdb.open_node([schema], data_dir=data_dir, listen=listen,
                                peers=peers) as node:
        sb = node.database("OVN_Southbound")
        existing = sb.select("Chassis", {"name": name})
        if existing:
            chassis = existing[0]["_uuid"]
        else:
            encap = sb.transact([{"op": "insert", "table": "Encap", "uuid-name": "e",
                                  "row": {"type": "geneve", "ip": encap_ip,
                                          "chassis_name": name}},
                                 {"op": "insert", "table": "Chassis", "uuid-name": "c",
                                  "row": {"name": name, "hostname": name,
                                          "encaps": ["named-uuid", "e"]}}])
            chassis = crdtdb.embedded.uuidlib.UUID(encap[1]["uuid"][1])
        log.info("%s: chassis %s registered; node %s", name, chassis, node.node_id)
        task_status.started(node)
        n = 0
        async with sb.monitor("Port_Binding") as changes:
            async for change in changes:
                row = change.new
                if row is None or row["chassis"] is not None:
                    continue
                if row["options"].get("requested-chassis") != name:
                    continue
                try:
                    await _claim(sb, change.uuid, chassis)
                except crdtdb.TransactionError as exc:
                    log.warning("%s: could not claim %s: %s", name, row["logical_port"], exc)
                    continue
                n += 1
                log.info("%s: claimed %s (%s)", name, row["logical_port"],
                         "created here" if change.local else "created on a peer")
                if claims is not None and n >= claims:
                    return n
    return n


async def _claim(sb: crdtdb.Database, port: UUID, chassis: UUID) -> None:
    """Claim a port; while a compaction round holds the node's writes, wait and retry."""
    while True:
        try:
            sb.update("Port_Binding", port, {"chassis": chassis, "up": True})
            return
        except crdtdb.ReplicaFrozenError:
            await trio.sleep(0.05)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--name", required=True, help="this chassis' name")
    ap.add_argument("--listen", action="append", default=[], metavar="HOST:PORT")
    ap.add_argument("--peer", action="append", default=[], metavar="HOST:PORT")
    ap.add_argument("--data-dir", help="keep the replica here (default: in memory)")
    ap.add_argument("--schema", default=SB_SCHEMA)
    ap.add_argument("--encap-ip", default="192.0.2.1")
    ap.add_argument("--claims", type=int, help="stop after this many claims")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    n = trio.run(lambda: run(args.name, listen=args.listen, peers=args.peer,
                             data_dir=args.data_dir, schema=args.schema,
                             encap_ip=args.encap_ip, claims=args.claims))
    print(f"{args.name}: claimed {n} ports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
