"""``crdtdb`` command line.

Today it runs transactions against in-memory databases (``crdtdb transact``) and checks schemas
(``crdtdb schema``); the server, replica and cluster commands join it as they land.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from crdtdb.engine import DatabaseSchema, MemoryDatabase
from crdtdb.errors import SchemaError, WouldBlock

log = logging.getLogger("crdtdb")

#: Where Debian's ovn-common puts the OVN schemas.
DEFAULT_SCHEMAS = ("/usr/share/ovn/ovn-sb.ovsschema", "/usr/share/ovn/ovn-nb.ovsschema")


def _load_schemas(paths: Sequence[str]) -> dict[str, MemoryDatabase]:
    dbs: dict[str, MemoryDatabase] = {}
    for p in paths:
        schema = DatabaseSchema.from_file(p)
        if schema.name in dbs:
            raise SchemaError(f"{p}: database {schema.name} is given twice")
        dbs[schema.name] = MemoryDatabase(schema)
        log.info("loaded schema %s %s from %s (%d tables)", schema.name, schema.version, p,
                 len(schema.tables))
    return dbs


def _read_transactions(path: str) -> list[list[Any]]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    doc = json.loads(text)
    # One transaction is ["DB", op...]; a file of several is a list of those.
    if isinstance(doc, list) and doc and isinstance(doc[0], str):
        return [doc]
    if isinstance(doc, list) and all(isinstance(t, list) for t in doc):
        return doc
    raise ValueError(f'{path}: expected ["DB", op, ...] or a list of such transactions')


def _transact(dbs: dict[str, MemoryDatabase], params: list[Any]) -> tuple[Any, bool]:
    """The reply ovsdb-server would give to ``transact params``: (reply, success)."""
    if not params or not isinstance(params[0], str):
        return {"error": "syntax error",
                "details": "transact request params must begin with <db-name>"}, False
    db = dbs.get(params[0])
    if db is None:
        return {"error": "unknown database",
                "details": f"transact request specifies unknown database {params[0]}"}, False
    try:
        results = db.transact(params[1:])
    except WouldBlock:
        return {"error": "timed out",
                "details": "a \"wait\" is not satisfied and nothing else can commit here"}, False
    ok = all(not (isinstance(r, dict) and "error" in r) for r in results)
    return results, ok


def cmd_transact(args: argparse.Namespace) -> int:
    dbs = _load_schemas(args.schema or [p for p in DEFAULT_SCHEMAS if Path(p).exists()])
    if not dbs:
        log.error("no schema given and none of %s is installed", ", ".join(DEFAULT_SCHEMAS))
        return 2
    failures = 0
    n = 0
    started = time.perf_counter()
    for path in args.files:
        for params in _read_transactions(path):
            n += 1
            reply, ok = _transact(dbs, params)
            failures += not ok
            out = json.dumps(reply, indent=2 if args.pretty else None)
            print(out)
    elapsed_ms = (time.perf_counter() - started) * 1000
    rows = {name: sum(db.row_count(t) for t in db.schema.tables) for name, db in dbs.items()}
    log.info("%d transaction(s), %d failed, in %.1f ms; rows now: %s", n, failures, elapsed_ms,
             ", ".join(f"{k}={v}" for k, v in rows.items()))
    return 1 if failures else 0


def cmd_schema(args: argparse.Namespace) -> int:
    status = 0
    for p in args.schemas:
        try:
            s = DatabaseSchema.from_file(p)
        except (SchemaError, OSError) as exc:
            print(f"{p}: {exc}", file=sys.stderr)
            status = 1
            continue
        n_cols = sum(len(t.user_columns) for t in s.tables.values())
        n_ix = sum(len(t.indexes) for t in s.tables.values())
        roots = sum(t.is_root for t in s.tables.values())
        print(f"{p}: {s.name} {s.version}: {len(s.tables)} tables ({roots} root), "
              f"{n_cols} columns, {n_ix} indexes")
    return status


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    import trio

    from crdtdb.ovsdb.server import Limits, Remote, SslFiles, open_ovsdb_server

    remotes = [Remote.parse(r) for r in (args.remote or ["punix:db.sock"])]
    ssl_args = (args.private_key, args.certificate, args.ca_cert)
    ssl_files = SslFiles(*ssl_args) if all(ssl_args) else None
    if any(r.kind == "pssl" for r in remotes) and ssl_files is None:
        log.error("pssl remotes need --private-key, --certificate and --ca-cert")
        return 2
    # As ovsdb-server sees a schema after ovsdb-tool create stored it (see stored()).
    schemas = [DatabaseSchema.from_file(p).stored() for p in args.schemas]
    names = [s.name for s in schemas]
    if len(set(names)) != len(names):
        log.error("two schemas name the same database: %s", ", ".join(names))
        return 2
    from crdtdb.consensus.config import Config, ConfigError, load_config

    try:
        config = load_config(args.config) if args.config else Config()
        config.validate(names)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    # Databases with a linearizable table go to the plugins; those with only linearizable
    # tables have no replica.
    linearizable = [s for s in schemas if config.linearizable_tables(s)]
    fully = {s.name for s in linearizable if config.linearizable_tables(s) == set(s.tables)}
    fsync = args.fsync == "always"
    gossiping = bool(args.listen or args.peer or args.discover)
    if args.txn_history < 0:
        log.error("--txn-history must be 0 or more, not %d", args.txn_history)
        return 2
    limits = Limits(probe_interval_s=args.probe_interval,
                    max_message_bytes=args.max_message_bytes,
                    max_backlog_bytes=args.max_backlog_bytes,
                    txn_history=args.txn_history)

    if gossiping and args.store != "replica":
        log.error("--listen/--peer need --store=replica")
        return 2
    if args.discover and not args.listen:
        log.error("--discover needs --listen: discovered peers dial this address")
        return 2
    if not args.data_dir:
        log.warning("no --data-dir: databases are in memory only and lost on exit")
    databases: dict[str, Any] = {}
    try:
        _open_databases(args, schemas, fully, fsync, gossiping, databases)
    except BaseException:  # (each one opened holds its log's lock until closed)
        _close_all(databases)
        raise

    async def until_signal(signals: Any) -> None:
        async for signum in signals:
            log.info("received %s: shutting down", signal.Signals(signum).name)
            return

    async def run() -> None:
        from crdtdb.consensus.plugins import open_linearizable
        from crdtdb.node import load_node_id

        data_dir = Path(args.data_dir) if args.data_dir else None
        node_id = args.node_id or load_node_id(data_dir)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with open_linearizable(config, linearizable, node_id=node_id,
                                         data_dir=data_dir, fsync=fsync) as lin:
                served = lin.served(databases)
                if gossiping:
                    from crdtdb.gossip import GossipConfig
                    from crdtdb.node import open_node
                    from transport.tcp import TlsConfig, parse_hostport

                    status_file = (Path(args.status_file) if args.status_file
                                   else data_dir / "status.json" if data_dir else None)
                    async with open_node(
                            databases, node_id=node_id, linearizable={
                                n: d for n, d in served.items()
                                if n not in databases or n in lin.split},
                            lock_gate=lin.lock_gate,
                            listen=[parse_hostport(x) for x in args.listen or ()],
                            peers=[parse_hostport(x) for x in args.peer or ()],
                            tls=TlsConfig(*ssl_args) if all(ssl_args) else None,
                            remotes=remotes, ssl_files=ssl_files, limits=limits,
                            status_file=status_file, discover=args.discover,
                            gossip_config=GossipConfig(
                                fanout=args.gossip_fanout,
                                compact_after_updates=args.compact_after_updates)) as node:
                        log.info("node %s serving %s", node.node_id,
                                 ", ".join(served))
                        await until_signal(signals)
                    return
                async with open_ovsdb_server(served, remotes,
                                             ssl_files=ssl_files, limits=limits,
                                             lock_gate=lin.lock_gate) as server:
                    addresses = [server.address_of(lst, r)
                                 for lst, r in zip(server.listeners, remotes, strict=True)]
                    log.info("serving %s on %s", ", ".join(served),
                             ", ".join(addresses))
                    await until_signal(signals)

    from crdtdb.engine.collection import settle_for_serving

    settle_for_serving()
    try:
        trio.run(run)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    finally:
        _close_all(databases)
    return 0


def _open_databases(args: argparse.Namespace, schemas: list[DatabaseSchema], fully: set[str],
                    fsync: bool, gossiping: bool, databases: dict[str, Any]) -> None:
    """Open each database ``serve`` keeps itself (those with only linearizable tables are
    the plugins') into ``databases`` as it goes: the caller closes those opened before a
    failure."""
    for schema in schemas:
        if schema.name in fully:
            continue
        t0 = time.perf_counter()
        where = Path(args.data_dir) / schema.name if args.data_dir else None
        db: Any
        if args.store == "replica":
            from crdtdb.replica import Replica

            db = (Replica.open(where, schema, fsync=fsync) if where is not None
                  else Replica.in_memory(schema))
            db.keep_recent = gossiping  # (else no peer will pull from it: see Replica.diff)
        elif where is not None:
            from crdtdb.storage.durable import DurableDatabase

            db = DurableDatabase.open(where, schema, fsync=fsync)
        else:
            db = MemoryDatabase(schema)
        if where is not None:
            rows = sum(db.row_count(t) for t in schema.tables)
            log.info("%s: loaded %d rows from %s (%s store) in %.2f s", schema.name, rows,
                     where, args.store, time.perf_counter() - t0)
        databases[schema.name] = db


def _close_all(databases: dict[str, Any]) -> None:
    for db in databases.values():
        close = getattr(db, "close", None)
        if close is not None:
            close()


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        path = path / "status.json"
    try:
        st = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.error("cannot read node status from %s: %s", path, exc)
        return 1
    if args.json:
        print(json.dumps(st, indent=1))
        return 0
    age = time.time() - st.get("time", 0)
    print(f"node {st['node_id']}  up {st['uptime_s']:.0f} s  listening on "
          f"{', '.join(st['listen']) or '-'}  (status {age:.1f} s old"
          f"{'; is the node running?' if age > 5 else ''})")
    peers = [p for p in st["peers"].values() if p["node_id"]]
    print(f"peers: {len(peers)}")
    for key, p in sorted(st["peers"].items()):
        lag = ", ".join(f"{db}: they lack {v['they_lack']}, we lack {v['we_lack']}"
                        for db, v in p.get("lag", {}).items())
        print(f"  {p['node_id'] or '(no hello yet)':24} {key:32} in {p['bytes_in']:>10,} B "
              f"out {p['bytes_out']:>10,} B  lag (items) {lag or '-'}")
    g = st["gossip"]
    print(f"gossip: {g['pushes_sent']} pushed, {g['pushes_new']} new / "
          f"{g['pushes_duplicate']} duplicate received, {g['pulls']} pulls, "
          f"{g['gaps']} gaps, {g['disconnects']} peers dropped")
    print(f"compaction: {g.get('rounds_cut', 0)} rounds cut and {g.get('rounds_given_up', 0)} "
          f"given up by this node, {g.get('adoptions', 0)} moves to a newer epoch; writes "
          f"held {g.get('held_s_last', 0):.3f} s in the last round (at most "
          f"{g.get('held_s_max', 0):.3f} s), now held for: "
          f"{', '.join(g.get('holding') or ()) or 'none'}")
    for db, epoch in (g.get("stranded") or {}).items():
        print(f"STRANDED: {db} wrote past the cut of epoch {epoch} and stays in its own "
              "(see docs/consistency.md, \"Moving to a newer epoch\")")
    for name, d in st["databases"].items():
        conflicts = {k: v for k, v in d["conflicts"].items() if v}
        epoch = d.get("epoch_id", d["epoch"])
        print(f"{name}: {d['rows']} rows, {d['hidden_rows']} hidden, epoch {epoch}, "
              f"{d['local_commits']} local commits, {d['remote_updates']} merged, "
              f"{d['rejected_updates']} rejected; conflicts: "
              f"{', '.join(f'{k}={v}' for k, v in conflicts.items()) or 'none'}")
    return 0


def cmd_sim(args: argparse.Namespace) -> int:
    import os

    if os.environ.get("PYTHONHASHSEED") != "0":
        # set iteration order must not depend on the process: same seed, same trace
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "crdtdb.cli", *sys.argv[1:]])
    from sims.cloud import PROFILES, SimConfig, run

    if not args.verbose:  # thousands of simulated peers and conflicts: only real trouble
        logging.getLogger("crdtdb").setLevel(logging.ERROR)

    if args.profile and args.profile not in PROFILES:
        log.error("unknown profile %r (one of %s)", args.profile, ", ".join(PROFILES))
        return 2
    seeds = list(range(args.seed, args.seed + args.swarm))
    results = []
    failed = 0
    for seed in seeds:
        config = SimConfig(seed=seed, nodes=args.nodes, fault_s=args.fault_s,
                           chassis_period_s=(args.chassis_period_s[0],
                                             args.chassis_period_s[1]),
                           heal_limit_s=args.heal_limit_s, profile=args.profile,
                           compact_after_updates=args.compact_after_updates)
        label = f"seed {seed}"

        step = [0]

        def progress(done: float, total: float, label: str = label,
                     step: list[int] = step) -> None:
            if sys.stderr.isatty():
                width = 30
                k = int(width * min(1.0, done / total))
                sys.stderr.write(f"\r{label}: [{'#' * k}{'.' * (width - k)}] "
                                 f"{done:5.1f}/{total:.0f} simulated s")
                sys.stderr.flush()
            elif int(10 * done / total) > step[0]:  # a log line every 10%
                step[0] = int(10 * done / total)
                print(f"{label}: {done:.0f} of at most {total:.0f} simulated s",
                      file=sys.stderr, flush=True)

        t0 = time.perf_counter()
        result = run(config, progress=progress)
        wall = time.perf_counter() - t0
        if sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 70 + "\r")
        verdict = "ok" if result.ok else "FAILED: " + "; ".join(result.failures)
        nb = {True: "linearizable", False: "NOT linearizable", None: "undecided"}[
            result.linearizable]
        print(f"seed {seed}: {args.nodes} nodes, faults {result.profile}: {verdict} "
              f"(trace {result.trace_hash}, converged in {result.convergence_s} s after the "
              f"heal, {result.acknowledged_writes} writes, {result.crashes} crashes, "
              f"NB {nb} over {result.nb_ops} ops, "
              f"{result.simulated_s / wall:.1f} simulated s per wall s)")
        if not result.ok:
            failed += 1
            print(f"  reproduce with seed={seed}: crdtdb sim --seed={seed} "
                  f"--nodes={args.nodes} --fault-s={args.fault_s}"
                  + (f" --profile={args.profile}" if args.profile else ""))
        out = result.to_json()
        out["wall_s"] = wall
        results.append(out)
    if args.json:
        Path(args.json).write_text(json.dumps(results[0] if len(results) == 1 else results,
                                              indent=1))
    if args.swarm > 1:
        print(f"swarm: {len(seeds) - failed}/{len(seeds)} seeds passed")
    return 1 if failed else 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from crdtdb.sandbox import SandboxError, run_sandbox

    try:
        return run_sandbox(Path(args.dir).resolve(), args.chassis, central=args.central,
                           nb_plugin=args.nb_plugin, ports_per_chassis=args.ports,
                           keep_running=not args.once,
                           compact_after_updates=args.compact_after_updates)
    except SandboxError as exc:
        log.error("sandbox: %s", exc)
        return 1


def _non_negative(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {n}")
    return n


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from crdtdb.replica import encoding, envelope

    try:
        number = version("crdtdb")
    except PackageNotFoundError:  # (run from a source tree that was never installed)
        number = "unknown"

    def which(module: ModuleType, source: str) -> str:
        if module.COMPILED:
            return "compiled"
        if module.BUILT:
            return "Python (CRDTDB_PURE_PYTHON=1)"
        return f"Python (crdtdb/replica/{source} is not built)"

    return (f"crdtdb {number} (marker reader: {which(encoding, '_markers.pyx')}; "
            f"update headers: {which(envelope, '_envelope.pyx')})")


class _ShowVersion(argparse.Action):
    """argparse's "version" action, its text made only when asked for (it imports the
    replica, which other commands' parsing does not need)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from crdtdb.ovsdb.server import Limits

    parser = argparse.ArgumentParser(
        prog="crdtdb",
        description="Peer-to-peer replication for OVSDB databases.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: debug)")
    parser.add_argument("--version", action=_ShowVersion,
                        help="show the version and whether the compiled module is in use")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "transact", help="run OVSDB transactions against in-memory databases",
        description="Run transactions (each [\"DB\", op, ...], the params of an OVSDB transact) "
                    "against fresh in-memory databases and print each result array as "
                    "ovsdb-server would return it. Exit status 1 if any transaction failed.")
    p.add_argument("--schema", action="append", metavar="FILE",
                   help="an .ovsschema to serve (repeatable); default: the installed OVN "
                        "Southbound and Northbound schemas")
    p.add_argument("--pretty", action="store_true", help="indent the JSON output")
    p.add_argument("files", nargs="+", metavar="FILE",
                   help="JSON file of one transaction or a list of them; - for stdin")
    p.set_defaults(func=cmd_transact)

    p = sub.add_parser(
        "serve", help="serve databases to OVSDB clients over JSON-RPC",
        description="Serve each SCHEMA's database to unmodified OVSDB clients (ovn-nbctl, "
                    "ovn-sbctl, ovn-northd, ovsdb-client, the ovs IDL), as ovsdb-server does.")
    p.add_argument("--remote", action="append", metavar="REMOTE",
                   help="punix:PATH, ptcp:PORT[:IP] or pssl:PORT[:IP] (repeatable; default "
                        "punix:db.sock)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="keep committed data here, one subdirectory per database; without it "
                        "everything is lost on exit")
    p.add_argument("--fsync", choices=("durable", "always"), default="durable",
                   help="durable (default, as ovsdb-server): a commit is written before it is "
                        "acknowledged, so it survives the process being killed, and fsynced "
                        "when the transaction asks for a durable commit; always: fsync every "
                        "commit, so it survives a power cut too (several times slower)")
    p.add_argument("--store", choices=("replica", "log"), default="replica",
                   help="replica (default): each database is a CRDT replica that can merge "
                        "with peers; log: a plain single-node store (an append-only log)")
    p.add_argument("--config", metavar="FILE",
                   help="TOML file saying, per database (or per table), eventual (a CRDT "
                        "replica) or linearizable (through a consensus plugin: local, etcd, "
                        "ovsdb) and where locks live; see docs/configuration.md (default: "
                        "everything eventual, locks in this node)")
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="accept gossip connections from peers here (repeatable)")
    p.add_argument("--peer", action="append", metavar="HOST:PORT",
                   help="a peer to gossip with; kept connected with backoff (repeatable)")
    p.add_argument("--discover", action="store_true",
                   help="announce this node and find peers with mDNS (_crdtdb._tcp) on the "
                        "--listen address's network")
    p.add_argument("--node-id", metavar="NAME",
                   help="this node's name among its peers (default: kept in --data-dir)")
    p.add_argument("--status-file", metavar="FILE",
                   help="where to write the node's status every second (default: "
                        "DATA_DIR/status.json); read it with crdtdb status")
    p.add_argument("--compact-after-updates", type=int, default=None, metavar="N",
                   help="coordinate a compaction round of a gossiped database once it has "
                        "taken N changes in its epoch: every node moves to a new, compact "
                        "document (give it to one node per cluster; default: never; see "
                        "docs/consistency.md)")
    p.add_argument("--gossip-fanout", type=_non_negative, default=2, metavar="N",
                   help="forward a peer's new update to N others (default: 2). The hub of a "
                        "star, whose leaves pull it anyway, does better with 0 (see "
                        "docs/gossip.md)")
    p.add_argument("--private-key", metavar="FILE", help="TLS key for pssl remotes")
    p.add_argument("--certificate", metavar="FILE", help="TLS certificate for pssl remotes")
    p.add_argument("--ca-cert", metavar="FILE", help="CA that signs client certificates")
    p.add_argument("--probe-interval", type=float, default=5.0, metavar="SECONDS",
                   help="tcp/ssl: echo-probe idle clients after this long, drop them after "
                        "twice as long (0: never)")
    defaults = Limits()
    p.add_argument("--max-message-bytes", type=int, default=defaults.max_message_bytes,
                   metavar="BYTES", help="drop a client that sends a larger JSON-RPC message "
                                         "(default %(default)s)")
    p.add_argument("--max-backlog-bytes", type=int, default=defaults.max_backlog_bytes,
                   metavar="BYTES", help="drop a client with more unsent replies and updates "
                                         "than this (default %(default)s)")
    p.add_argument("--txn-history", type=int, default=defaults.txn_history, metavar="N",
                   help="transactions kept per database so that monitor_cond_since can "
                        "resume a client with only what it missed, as a clustered "
                        "ovsdb-server does; 0 keeps none, as a standalone one "
                        "(default %(default)s)")
    p.add_argument("schemas", nargs="+", metavar="SCHEMA", help=".ovsschema file")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="show a running node's peers, lag and conflicts",
                       description="Print the status a gossiping node writes every second "
                                   "(its --status-file, or status.json in its --data-dir).")
    p.add_argument("path", metavar="FILE|DIR", help="status file, or the node's data dir")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "sim", help="simulate an OVN cloud on crdtdb nodes under faults",
        description="Run a seeded, deterministic simulation: N real nodes on a simulated "
                    "network with an OVN-like workload (Southbound gossiped, Northbound on a "
                    "simulated majority plugin), a fault phase, then a healed phase that must "
                    "converge; checks views, invariants, acknowledged writes and the "
                    "Northbound's history for linearizability. "
                    "Exit status 1 if a run failed (it prints how to reproduce it).")
    p.add_argument("--seed", type=int, default=1, help="the run's seed (first of a swarm)")
    p.add_argument("--nodes", type=int, default=5, help="nodes (chassis; node 0 is northd)")
    p.add_argument("--json", metavar="FILE", help="write the result(s) as JSON")
    p.add_argument("--fault-s", type=float, default=10.0, help="simulated seconds of faults")
    p.add_argument("--heal-limit-s", type=float, default=60.0,
                   help="simulated seconds the healed phase may take to converge")
    p.add_argument("--profile", help="fault profile (default: drawn from the seed): none, "
                                     "halves, minority, one-way, flapping, loss, delay, "
                                     "crash, clock-jump, mixed")
    p.add_argument("--compact-after-updates", type=int, default=None, metavar="N",
                   help="node 0 coordinates a compaction round of the Southbound every N "
                        "changes (default: never)")
    p.add_argument("--swarm", type=int, default=1, metavar="K",
                   help="run K seeds: seed, seed+1, ...")
    p.add_argument("--chassis-period-s", type=float, nargs=2, metavar=("LO", "HI"),
                   default=[0.3, 1.0],
                   help="each chassis's pause between workload rounds, drawn uniformly "
                        "(default: 0.3 1.0); every write is applied on every node, so "
                        "longer pauses make large N affordable")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser(
        "sandbox", help="run a real OVN cloud on this machine, its Southbound on crdtdb nodes",
        description="Start N real chassis (ovsdb-server, ovs-vswitchd with the dummy datapath, "
                    "ovn-controller), each with its own crdtdb node serving the Southbound and "
                    "gossiping with a central node that serves the Northbound (linearizable) "
                    "and the Southbound to ovn-northd; add ports, wait for --wait=hv, show "
                    "the result, and keep running until Ctrl-C. See docs/sandbox.md.")
    p.add_argument("--chassis", type=int, default=3, help="number of chassis (default 3)")
    p.add_argument("--compact-after-updates", type=int, default=None, metavar="N",
                   help="the central node coordinates a compaction round of the Southbound "
                        "every N changes (default: never; see docs/consistency.md)")
    p.add_argument("--dir", default="sandbox", help="where everything runs (default ./sandbox)")
    p.add_argument("--central", choices=("crdtdb", "ovsdb"), default="crdtdb",
                   help="crdtdb (default): a crdtdb node per chassis; ovsdb: one central "
                        "ovsdb-server, for comparison")
    p.add_argument("--nb-plugin", choices=("local", "etcd"), default="local",
                   help="the Northbound's consensus plugin (etcd starts a local etcd)")
    p.add_argument("--ports", type=int, default=2, help="logical ports per chassis")
    p.add_argument("--once", action="store_true", help="stop after showing the cloud")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("schema", help="check .ovsschema files",
                       description="Parse and validate schemas; print a summary of each.")
    p.add_argument("schemas", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose + 1, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (SchemaError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
