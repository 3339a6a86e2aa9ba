"""The OVSDB engine: schemas, data and transactions that behave like ovsdb-server's.

Pure and synchronous: every backend reuses it and none re-implements a check.
"""

from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import ColumnSchema, DatabaseSchema, TableSchema
from crdtdb.engine.snapshot import Changeset, LockOwnership, ReadSet, RowChange, Snapshot
from crdtdb.engine.transaction import Outcome, execute
from crdtdb.engine.types import AtomicType, BaseType, RefType, Type

__all__ = [
    "AtomicType",
    "BaseType",
    "Changeset",
    "ColumnSchema",
    "DatabaseSchema",
    "LockOwnership",
    "MemoryDatabase",
    "Outcome",
    "ReadSet",
    "RefType",
    "RowChange",
    "Snapshot",
    "TableSchema",
    "Type",
    "execute",
]
