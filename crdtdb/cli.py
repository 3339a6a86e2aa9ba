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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crdtdb",
        description="Peer-to-peer replication for OVSDB databases.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: debug)")
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
