"""The eventual-consistency store: a database on a pycrdt document, merged across nodes.

See docs/consistency.md for the merge semantics and the view's rules.
"""

from crdtdb.replica.conflicts import Conflict, ConflictEvent, ConflictKind, ConflictLog
from crdtdb.replica.envelope import CorruptUpdateError, EpochMismatchError, ReplicaError
from crdtdb.replica.epoch import EpochId, EpochOrigin
from crdtdb.replica.replica import (
    ApplyResult,
    ChangeEvent,
    Replica,
    ReplicaFailedError,
    ReplicaFrozenError,
    ReplicaStatistics,
    StrandedError,
    build_base,
)
from crdtdb.replica.view import View

__all__ = ["ApplyResult", "ChangeEvent", "Conflict", "ConflictEvent", "ConflictKind",
           "ConflictLog", "CorruptUpdateError", "EpochId", "EpochMismatchError", "EpochOrigin",
           "Replica", "ReplicaError", "ReplicaFailedError", "ReplicaFrozenError",
           "ReplicaStatistics", "StrandedError", "View", "build_base"]
