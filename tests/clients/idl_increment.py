"""Read-modify-write with verify through the real Python ``ovs`` IDL: increment
NB_Global.nb_cfg N times, retrying on "try again" as IDL users do.

Usage: idl_increment.py REMOTE SCHEMA N. Prints {"done": N, "try_again": K} as JSON.
"""

from __future__ import annotations

import json
import sys
import time

import ovs.db.idl
import ovs.poller


def wait_for_change(idl: ovs.db.idl.Idl, deadline: float) -> None:
    seqno = idl.change_seqno
    while idl.change_seqno == seqno and time.monotonic() < deadline:
        idl.run()
        poller = ovs.poller.Poller()
        idl.wait(poller)
        poller.timer_wait(100)
        poller.block()


def main() -> int:
    remote, schema, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    helper = ovs.db.idl.SchemaHelper(schema)
    helper.register_columns("NB_Global", ["nb_cfg"])
    idl = ovs.db.idl.Idl(remote, helper)
    deadline = time.monotonic() + 60
    while not idl.has_ever_connected() or not idl.tables["NB_Global"].rows:
        if time.monotonic() > deadline:
            print("never connected or no NB_Global row", file=sys.stderr)
            return 1
        wait_for_change(idl, deadline)
    done = try_again = 0
    while done < n:
        if time.monotonic() > deadline:
            print(f"only {done} of {n} increments in 60 s", file=sys.stderr)
            return 1
        row = next(iter(idl.tables["NB_Global"].rows.values()))
        txn = ovs.db.idl.Transaction(idl)
        row.verify("nb_cfg")
        row.nb_cfg = row.nb_cfg + 1
        status = txn.commit_block()
        if status == ovs.db.idl.Transaction.SUCCESS:
            done += 1
        elif status == ovs.db.idl.Transaction.TRY_AGAIN:
            try_again += 1
            # Our cache may already hold the newer value (updates come before replies), or
            # not yet: wait a little for a change, no longer.
            wait_for_change(idl, min(deadline, time.monotonic() + 0.2))
        else:
            print(f"transaction failed: {status} {txn.get_error()}", file=sys.stderr)
            return 1
    print(json.dumps({"done": done, "try_again": try_again}))
    idl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
