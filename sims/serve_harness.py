"""`crdtdb serve`'s per-transaction work in one process, for instruction counts (issue 3).

What sims/bench_serve.py's pipelined run makes the server do, without trio or sockets: the
server's codec, :class:`~crdtdb.ovsdb.core.ServerCore` and a durable replica (as ``crdtdb
serve --data-dir`` opens it), one session pipelining single-row Logical_Flow inserts and
one holding an update2 ``monitor_cond`` on Logical_Flow. The requests' bytes arrive in
bursts of ``--window`` and are handled as crdtdb/ovsdb/server.py's reader handles them
(commits held for the burst, released before anything is encoded).

Every byte the server would send (replies, update2 notifications), the log file and, with
``--check``, every change event's sealed update (what peers would receive) are hashed:
random bytes are seeded, so a change that keeps behaviour keeps the digests.

Per-transaction instructions: the difference of two runs under callgrind, which leaves
start-up out::

    for n in 512 2560; do PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/cg.$n python -m sims.serve_harness --txns $n; done
    # (total of cg.2560 - total of cg.512) / 2048

``--profile`` prints cProfile's view of the measured transactions instead.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from crdtdb.engine import DatabaseSchema
from crdtdb.ovsdb.core import ServerCore, Session
from crdtdb.ovsdb.jsonrpc import NEED_DATA, JsonRpcConnection
from crdtdb.ovsdb.server import Limits
from crdtdb.replica import Replica
from crdtdb.testing.ovsdb_server import find_sb_schema
from sims.bench_serve import MONITOR
from sims.workload import DB, datapath_txn, insert_flow_txn


class Conn:
    """A session and its codec; what it sends goes into a digest, not a socket."""

    def __init__(self, core: ServerCore):
        self.session: Session = core.open_session()
        self.codec = JsonRpcConnection(max_message_bytes=Limits().max_message_bytes)
        self.digest = 0  # (crc32: sha256 was 5% of the harness's count)
        self.sent: list[bytes] = []
        self.keep = False

    def queue(self) -> None:
        out = bytearray()
        for ev in self.session.drain():
            out += self.codec.send(ev)
        self.digest = zlib.crc32(out, self.digest)
        if self.keep:
            self.sent.append(bytes(out))


class Harness:
    def __init__(self, data_dir: Path, schema: DatabaseSchema, check: bool):
        self.db = Replica.open(data_dir / schema.name, schema, fsync=False,
                               rng=random.Random(1))
        self.db.keep_recent = False  # as cmd_serve without peers
        self.core = ServerCore({schema.name: self.db}, now_ms=lambda: 0,
                               txn_history=Limits().txn_history)
        self.limits = Limits()
        self.seals = hashlib.sha256()
        self.n_events = 0
        self.check = check

        def on_change(ev: Any) -> None:  # as open_ovsdb_server's feed
            self.n_events += 1
            if check and ev.update is not None:
                self.seals.update(ev.update)
            if not ev.local:
                self.core.publish(schema.name, ev.changes)
        self.db.add_listener(on_change)
        self.client = Conn(self.core)
        self.watcher = Conn(self.core)
        self.conns = [self.client, self.watcher]

    def flush(self) -> None:
        """OvsdbServer._flush: durable first, then every session's messages encoded."""
        self.db.release_commits()
        for c in self.conns:
            if c.session.outbox:
                c.queue()
        assert not self.core.commits

    def feed(self, conn: Conn, data: bytes) -> None:
        """OvsdbServer._read_requests for one received chunk."""
        conn.codec.receive_data(data)
        batch = 0
        while True:
            event = conn.codec.next_event()
            if event is NEED_DATA:
                break
            self.db.hold_commits()
            reason = self.core.handle(conn.session, event)
            assert reason is None, reason
            batch += 1
            if (batch >= self.limits.flush_every or self.core.commits
                    or self.core.waits_changed):
                self.flush()
                batch = 0
        self.flush()


class _GcStats:
    """Collections per generation and the time they took, until ``stop``."""

    def __init__(self) -> None:
        self.n = [0, 0, 0]
        self.s = [0.0, 0.0, 0.0]
        self._t0 = 0.0
        self._cpu0 = time.process_time()
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.n[info["generation"]] += 1
            self.s[info["generation"]] += time.perf_counter() - self._t0

    def stop(self) -> None:
        gc.callbacks.remove(self._cb)
        cpu = time.process_time() - self._cpu0
        passes = zip(self.n, self.s, strict=True)
        print(f"cpu {cpu * 1000:.0f} ms; collections: " + ", ".join(
            f"gen{g} {n} ({s * 1000:.1f} ms)" for g, (n, s) in enumerate(passes)))


def request(method: str, params: list[Any], rid: Any) -> bytes:
    return json.dumps({"method": method, "params": params, "id": rid}).encode()


def _bursts(dp: str, n: int, window: int) -> list[bytes]:
    """The pipelined inserts' bytes, ``window`` requests a burst. Kept in a file between
    runs (the user's cache directory, named after the workload's first request, so a
    changed workload is encoded anew): encoding them here cost as much as a tenth of what
    the server does with them."""
    first_request = request("transact", [DB, *insert_flow_txn(1_000_000, dp)], 0)
    key = hashlib.sha256(first_request).hexdigest()[:16]
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "crdtdb-sims")
    cache = cache_dir / f"serve-harness-{key}-{n}-{window}.bin"
    try:
        return _split_bursts(cache.read_bytes())
    except (OSError, ValueError):
        pass
    bursts = [b"".join(request("transact", [DB, *insert_flow_txn(1_000_000 + i, dp)], i)
                       for i in range(first, min(first + window, n)))
              for first in range(0, n, window)]
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in bursts))
    return bursts


def _split_bursts(blob: bytes) -> list[bytes]:
    """The bursts of a cache file (each after its 4-byte length)."""
    out, at = [], 0
    while at < len(blob):
        size = int.from_bytes(blob[at:at + 4], "big")
        if at + 4 + size > len(blob):
            raise ValueError("truncated cache file")
        out.append(blob[at + 4:at + 4 + size])
        at += 4 + size
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--txns", type=int, default=2048, help="pipelined inserts")
    ap.add_argument("--window", type=int, default=64, help="requests per received burst")
    ap.add_argument("--check", action="store_true", help="also hash every sealed update")
    ap.add_argument("--profile", action="store_true", help="cProfile the inserts")
    ap.add_argument("--sort", default="tottime", help="cProfile's sort key")
    ap.add_argument("--gc-stats", action="store_true",
                    help="count and time the collector's passes over the inserts")
    ap.add_argument("--dump", metavar="DIR", help="write what each session was sent here")
    args = ap.parse_args(argv)
    seeded = random.Random(0)
    urandom, os.urandom = os.urandom, seeded.randbytes  # uuids, server id, births: the same
    try:                                                 # every run
        return _main(args)
    finally:
        os.urandom = urandom


def _main(args: argparse.Namespace) -> int:
    path = find_sb_schema()
    if path is None:
        print("OVN_Southbound schema not found (install ovn-common)", file=sys.stderr)
        return 2
    schema = DatabaseSchema.from_file(path).stored()
    with tempfile.TemporaryDirectory(prefix="serve-harness-") as tmp:
        h = Harness(Path(tmp), schema, args.check)
        h.client.keep = True
        h.feed(h.client, request("transact", [DB, *datapath_txn()], "dp"))
        dp = json.loads(h.client.sent.pop())["result"][0]["uuid"][1]
        for c in h.conns:
            c.keep = args.dump is not None
        h.feed(h.watcher, request("monitor_cond", [DB, "bench", MONITOR], 0))
        bursts = _bursts(dp, args.txns, args.window)
        gc.collect()
        try:  # as cmd_serve does once its databases are loaded
            from crdtdb.engine.collection import settle_for_serving
        except ImportError:  # (a tree from before it)
            pass
        else:
            settle_for_serving()
        passes = _GcStats() if args.gc_stats else None
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
        for burst in bursts:
            h.feed(h.client, burst)
        if passes is not None:
            passes.stop()
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats(args.sort).print_stats(50)
        h.db.close()
        logs = sorted(Path(tmp, schema.name).iterdir())
        log = zlib.crc32(b"".join(p.read_bytes() for p in logs))
    if args.dump:
        out = Path(args.dump)
        out.mkdir(parents=True, exist_ok=True)
        for name, c in (("client", h.client), ("watcher", h.watcher)):
            (out / name).write_bytes(b"".join(c.sent))
    print(f"txns {args.txns} events {h.n_events}")
    print(f"client  {h.client.digest:08x}")
    print(f"watcher {h.watcher.digest:08x}")
    print(f"log     {log:08x} ({', '.join(p.name for p in logs)})")
    if args.check:
        print(f"seals   {h.seals.hexdigest()[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
