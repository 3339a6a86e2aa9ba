"""Open the linearizable databases and cluster-wide locks a :class:`Config` asks for."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtdb.consensus.config import Config, ConfigError
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.consensus.local import local_database
from crdtdb.consensus.split import SplitDatabase, check_split
from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import DatabaseSchema

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Linearized:
    databases: dict[str, LinearizableDatabase] = field(default_factory=dict)
    #: Split databases (tables of both levels): name -> the linearizable tables. Their entry
    #: in ``databases`` holds those tables only; :meth:`served` joins it to the replica.
    split: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Cluster-wide locks for the server (None: locks stay in this node).
    lock_gate: Any = None
    #: The running plugins by name, for statistics.
    plugins: dict[str, Any] = field(default_factory=dict)

    def served(self, eventual: dict[str, Any]) -> dict[str, Any]:
        """What the server serves: the eventual stores (replicas), the linearizable
        databases, and for a split database one SplitDatabase over both."""
        out: dict[str, Any] = {**eventual, **self.databases}
        for name, tables in self.split.items():
            lin = self.databases[name]
            out[name] = SplitDatabase(lin.schema, eventual[name], lin, tables)
        return out


@asynccontextmanager
async def open_linearizable(config: Config, schemas: Sequence[DatabaseSchema], *,
                            node_id: str, data_dir: Path | None = None,
                            fsync: bool = False) -> AsyncIterator[Linearized]:
    """The databases of ``schemas`` that ``config`` makes linearizable, each on its plugin,
    and the lock gate, until the block exits."""
    config.validate()
    by_plugin: dict[str, list[DatabaseSchema]] = {}
    out = Linearized()
    for schema in schemas:
        tables = config.linearizable_tables(schema)
        if tables:
            by_plugin.setdefault(config.policy(schema.name).plugin, []).append(schema)
            if tables != frozenset(schema.tables):
                out.split[schema.name] = check_split(schema, tables)
    async with AsyncExitStack() as stack:
        for schema in by_plugin.get("local", []):
            store: Any
            if data_dir is not None:
                from crdtdb.storage.durable import DurableDatabase

                # A split database's replica has data_dir/NAME: this part goes beside it.
                where = data_dir / (f"{schema.name}.linearizable" if schema.name in out.split
                                    else schema.name)
                store = DurableDatabase.open(where, schema, fsync=fsync)
                stack.callback(store.close)
            else:
                store = MemoryDatabase(schema)
            out.databases[schema.name] = local_database(schema, store)
        if "etcd" in by_plugin or config.lock_plugin == "etcd":
            from crdtdb.consensus.etcd import EtcdOptions, open_etcd_plugin
            from crdtdb.consensus.etcd_client import open_etcd_client

            s = config.etcd
            client = await stack.enter_async_context(open_etcd_client(
                list(s.endpoints), request_timeout_s=s.request_timeout_s))
            plugin = await stack.enter_async_context(open_etcd_plugin(
                client, by_plugin.get("etcd", []), node_id=node_id,
                options=EtcdOptions(prefix=s.prefix, lock_ttl_s=s.lock_ttl_s)))
            out.databases.update(plugin.databases)
            out.plugins["etcd"] = plugin
            if config.lock_plugin == "etcd":
                out.lock_gate = plugin.locks
        if "ovsdb" in by_plugin or config.lock_plugin == "ovsdb":
            from crdtdb.consensus.ovsdb_relay import open_ovsdb_relay

            if not by_plugin.get("ovsdb"):
                raise ConfigError("locks.plugin = \"ovsdb\" needs a database on the ovsdb "
                                  "plugin too (locks live in the leader of its cluster)")

            relay = await stack.enter_async_context(open_ovsdb_relay(
                config.ovsdb.remotes, by_plugin.get("ovsdb", [])))
            out.databases.update(relay.databases)
            out.plugins["ovsdb"] = relay
            if config.lock_plugin == "ovsdb":
                out.lock_gate = relay.locks
        for name in out.databases:
            if name in out.split:
                log.info("%s: tables %s linearizable through the %s plugin, the others "
                         "eventual", name, ", ".join(sorted(out.split[name])),
                         config.policy(name).plugin)
            else:
                log.info("%s: linearizable through the %s plugin", name,
                         config.policy(name).plugin)
        yield out
