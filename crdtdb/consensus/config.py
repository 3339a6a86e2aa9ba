"""Per-database and per-table consistency: the ``crdtdb serve --config`` TOML file.

Reference: docs/configuration.md. In short::

    profile = "ovn"            # optional: start from a built-in profile

    [plugins.etcd]             # a consensus plugin and its settings
    endpoints = ["http://127.0.0.1:2379"]

    [databases.OVN_Northbound]
    consistency = "linearizable"   # or "eventual"
    plugin = "etcd"                # "local" (default), "etcd" or "ovsdb"

    [databases.OVN_Southbound]
    consistency = "eventual"
    [databases.OVN_Southbound.tables.Chassis]   # one table at another level: a split
    consistency = "linearizable"                # database (crdtdb.consensus.split)

    [locks]                    # where OVSDB locks live (they are server-wide in OVSDB)
    plugin = "etcd"            # "local": held in this node only

Every mistake is a :class:`ConfigError` naming the key at fault.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtdb.errors import CrdtdbError

PLUGINS = ("local", "etcd", "ovsdb")


class ConfigError(CrdtdbError, ValueError):
    """The configuration is malformed or asks for something crdtdb cannot do."""


class Consistency(enum.Enum):
    EVENTUAL = "eventual"
    LINEARIZABLE = "linearizable"


@dataclass(frozen=True, slots=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    prefix: str = "/crdtdb/"
    lock_ttl_s: int = 3
    request_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class OvsdbSettings:
    #: The cluster's members, as ovsdb-server remotes: "tcp:IP:PORT,tcp:IP:PORT,...".
    remotes: str = ""


@dataclass(frozen=True, slots=True)
class DatabasePolicy:
    consistency: Consistency = Consistency.EVENTUAL
    plugin: str = "local"
    #: Per-table overrides of ``consistency`` (validated: see :meth:`Config.validate`).
    tables: Mapping[str, Consistency] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Config:
    databases: Mapping[str, DatabasePolicy] = field(default_factory=dict)
    #: Where locks live: None keeps them in this node (ovsdb-server's behaviour).
    lock_plugin: str | None = None
    etcd: EtcdSettings = EtcdSettings()
    ovsdb: OvsdbSettings = OvsdbSettings()
    #: Used for databases the file does not name.
    default: DatabasePolicy = DatabasePolicy()

    def policy(self, db: str) -> DatabasePolicy:
        return self.databases.get(db, self.default)

    def linearizable_tables(self, schema: Any) -> frozenset[str]:
        """The tables of ``schema``'s database that are linearizable (all, none, or some: a
        split database, see crdtdb.consensus.split)."""
        p = self.policy(schema.name)
        return frozenset(t for t in schema.tables
                         if p.tables.get(t, p.consistency) is Consistency.LINEARIZABLE)

    def plugins_used(self) -> set[str]:
        used = {p.plugin for p in self.databases.values()
                if Consistency.LINEARIZABLE in {p.consistency, *p.tables.values()}}
        if self.default.consistency is Consistency.LINEARIZABLE:
            used.add(self.default.plugin)
        if self.lock_plugin is not None:
            used.add(self.lock_plugin)
        return used

    def validate(self, db_names: Iterable[str] | None = None) -> None:
        """Refuse what this version cannot serve, before anything starts (``db_names``: the
        databases served, when known: the file must not name others)."""
        names = set(db_names) if db_names is not None else None
        for db in self.databases:
            if names is not None and db not in names:
                raise ConfigError(f"databases.{db}: no schema given for this database "
                                  f"(serving: {', '.join(sorted(names)) or 'nothing'})")
        for db, policy in self.databases.items():
            if policy.plugin == "ovsdb" and len({policy.consistency,
                                                 *policy.tables.values()}) > 1:
                raise ConfigError(
                    f"databases.{db}.tables: a database split between levels cannot use the "
                    "ovsdb plugin (the relay forwards whole transactions to the cluster); use "
                    "etcd or local")
        if "ovsdb" in self.plugins_used() and not self.ovsdb.remotes:
            raise ConfigError("plugins.ovsdb.remotes: the clustered ovsdb-server's remotes are "
                              "needed (e.g. \"tcp:10.0.0.1:6641,tcp:10.0.0.2:6641\")")


#: Built-in profiles: a starting point the file's own settings override.
PROFILES: dict[str, dict[str, Any]] = {
    # OVN: the Northbound holds intent and is written with verify (wait) by ovn-nbctl and
    # the CMS: it needs linearizability. The Southbound is written per chassis and merges;
    # its locks (ovn-northd's active/standby) must be cluster-wide.
    "ovn": {
        "databases": {"OVN_Northbound": {"consistency": "linearizable"},
                      "OVN_Southbound": {"consistency": "eventual"}},
        "locks": {},
    },
}


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(
            out.get(k), dict) else v
    return out


def _consistency(value: Any, where: str) -> Consistency:
    try:
        return Consistency(value)
    except ValueError:
        raise ConfigError(f"{where}: expected \"eventual\" or \"linearizable\", got "
                          f"{value!r}") from None


def _plugin(value: Any, where: str) -> str:
    if value not in PLUGINS:
        raise ConfigError(f"{where}: unknown plugin {value!r} (one of {', '.join(PLUGINS)})")
    return str(value)


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(sorted(allowed))})")


def parse_config(doc: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from a parsed TOML document."""
    _check_keys(doc, {"profile", "plugins", "databases", "locks", "default"}, "top level")
    profile = doc.get("profile")
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"profile: unknown profile {profile!r} "
                              f"(one of {', '.join(PROFILES)})")
        doc = _merge(PROFILES[profile], {k: v for k, v in doc.items() if k != "profile"})
    plugins = doc.get("plugins", {})
    _check_keys(plugins, {"etcd", "ovsdb", "local"}, "plugins")
    etcd_doc = plugins.get("etcd", {})
    _check_keys(etcd_doc, {"endpoints", "prefix", "lock_ttl_s", "request_timeout_s"},
                "plugins.etcd")
    defaults = EtcdSettings()
    endpoints = etcd_doc.get("endpoints", list(defaults.endpoints))
    if isinstance(endpoints, str):
        endpoints = [e for e in endpoints.split(",") if e]
    if not endpoints or not all(isinstance(e, str) for e in endpoints):
        raise ConfigError("plugins.etcd.endpoints: a non-empty list of URLs")
    try:
        etcd = EtcdSettings(tuple(endpoints), str(etcd_doc.get("prefix", defaults.prefix)),
                            int(etcd_doc.get("lock_ttl_s", defaults.lock_ttl_s)),
                            float(etcd_doc.get("request_timeout_s",
                                               defaults.request_timeout_s)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"plugins.etcd: {exc}") from None
    if etcd.lock_ttl_s < 1:
        raise ConfigError("plugins.etcd.lock_ttl_s: at least 1")
    ovsdb_doc = plugins.get("ovsdb", {})
    _check_keys(ovsdb_doc, {"remotes"}, "plugins.ovsdb")
    ovsdb = OvsdbSettings(str(ovsdb_doc.get("remotes", "")))

    # The plugin a linearizable database uses when it names none: the one configured.
    configured = [p for p in ("etcd", "ovsdb") if p in plugins]
    fallback = configured[0] if len(configured) == 1 else "local"

    def policy(d: Mapping[str, Any], where: str) -> DatabasePolicy:
        _check_keys(d, {"consistency", "plugin", "tables"}, where)
        consistency = _consistency(d.get("consistency", "eventual"), f"{where}.consistency")
        plugin = _plugin(d.get("plugin", fallback), f"{where}.plugin")
        tables = {}
        for t, td in d.get("tables", {}).items():
            if not isinstance(td, Mapping):
                raise ConfigError(f"{where}.tables.{t}: expected a table")
            _check_keys(td, {"consistency"}, f"{where}.tables.{t}")
            tables[t] = _consistency(td.get("consistency", consistency.value),
                                     f"{where}.tables.{t}.consistency")
        return DatabasePolicy(consistency, plugin, tables)

    databases = {name: policy(d, f"databases.{name}")
                 for name, d in doc.get("databases", {}).items()}
    default = policy(doc.get("default", {}), "default")
    locks_doc = doc.get("locks")
    lock_plugin = None
    if locks_doc is not None:
        _check_keys(locks_doc, {"plugin"}, "locks")
        lock_plugin = _plugin(locks_doc.get("plugin", fallback), "locks.plugin")
        if lock_plugin == "local":
            lock_plugin = None
    return Config(databases, lock_plugin, etcd, ovsdb, default)


def load_config(path: str | Path) -> Config:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    return parse_config(doc)


def profile_config(name: str) -> Config:
    return parse_config({"profile": name})
