"""The eventual-consistency store: a database on a pycrdt document, merged across nodes.

See docs/consistency.md for the merge semantics and the view's rules.
"""

from crdtdb.replica.conflicts import Conflict, ConflictEvent, ConflictKind, ConflictLog
from crdtdb.replica.envelope import CorruptUpdateError, EpochMismatchError, ReplicaError
from crdtdb.replica.replica import (
    ApplyResult,
    ChangeEvent,
    Replica,
    ReplicaFailedError,
    ReplicaStatistics,
    build_base,
)
from crdtdb.replica.view import View

__all__ = ["ApplyResult", "ChangeEvent", "Conflict", "ConflictEvent", "ConflictKind",
           "ConflictLog", "CorruptUpdateError", "EpochMismatchError", "Replica",
           "ReplicaError", "ReplicaFailedError", "ReplicaStatistics", "View", "build_base"]
