"""Linearizable databases through consensus plugins (see docs/configuration.md).

A :class:`LinearizableDatabase` is a cache of the committed state that a plugin keeps up to
date; the server core runs transactions against it and hands each to the plugin
(:class:`CommitRequest` -> :class:`Applied` / :class:`Retry` / :class:`Failed`). Plugins:
``local`` (:mod:`crdtdb.consensus.local`), ``etcd`` (:mod:`crdtdb.consensus.etcd`) and
``ovsdb`` (:mod:`crdtdb.consensus.ovsdb_relay`); :func:`open_linearizable` opens what a
:class:`Config` asks for.
"""

from crdtdb.consensus.commit import Applied, CommitOutcome, CommitRequest, Failed, Retry
from crdtdb.consensus.config import Config, ConfigError, Consistency, load_config
from crdtdb.consensus.database import LinearizableDatabase
from crdtdb.consensus.plugins import Linearized, open_linearizable

__all__ = [
    "Applied",
    "CommitOutcome",
    "CommitRequest",
    "Config",
    "ConfigError",
    "Consistency",
    "Failed",
    "LinearizableDatabase",
    "Linearized",
    "Retry",
    "load_config",
    "open_linearizable",
]
