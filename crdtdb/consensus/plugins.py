"""Open the linearizable databases and cluster-wide locks a :class:`Config` asks for."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtdb.consensus.config import Config, ConfigError, Consistency
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.consensus.local import local_database
from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import DatabaseSchema

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Linearized:
    databases: dict[str, LinearizableDatabase] = field(default_factory=dict)
    #: Cluster-wide locks for the server (None: locks stay in this node).
    lock_gate: Any = None
    #: The running plugins by name, for statistics.
    plugins: dict[str, Any] = field(default_factory=dict)


@asynccontextmanager
async def open_linearizable(config: Config, schemas: Sequence[DatabaseSchema], *,
                            node_id: str, data_dir: Path | None = None,
                            fsync: bool = False) -> AsyncIterator[Linearized]:
    """The databases of ``schemas`` that ``config`` makes linearizable, each on its plugin,
    and the lock gate, until the block exits."""
    config.validate()
    by_plugin: dict[str, list[DatabaseSchema]] = {}
    for schema in schemas:
        policy = config.policy(schema.name)
        if policy.consistency is Consistency.LINEARIZABLE:
            by_plugin.setdefault(policy.plugin, []).append(schema)
    out = Linearized()
    async with AsyncExitStack() as stack:
        for schema in by_plugin.get("local", []):
            store: Any
            if data_dir is not None:
                from crdtdb.storage.durable import DurableDatabase

                store = DurableDatabase.open(data_dir / schema.name, schema, fsync=fsync)
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
            log.info("%s: linearizable through the %s plugin", name,
                     config.policy(name).plugin)
        yield out
