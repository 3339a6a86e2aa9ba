"""crdtdb: peer-to-peer replication for OVSDB databases.

Embed a node in an agent with :func:`open_node` (see :mod:`crdtdb.embedded`); the pieces
live in :mod:`crdtdb.engine`, :mod:`crdtdb.replica`, :mod:`crdtdb.gossip`,
:mod:`crdtdb.ovsdb` and :mod:`crdtdb.node`.
"""

from crdtdb.embedded import (
    Database,
    EmbeddedNode,
    MonitorOverflowError,
    RowChange,
    TransactionError,
    open_node,
)
from crdtdb.replica import ReplicaFrozenError

__all__ = ["Database", "EmbeddedNode", "MonitorOverflowError", "ReplicaFrozenError",
           "RowChange", "TransactionError", "open_node"]
