"""Durable storage: what makes an acknowledged commit survive a crash.

* :mod:`crdtdb.storage.recordlog` — a generic append-only log of checksummed byte records
  with atomic batches, torn-tail recovery and atomic rewrite (compaction).
* :mod:`crdtdb.storage.durable` — :class:`DurableDatabase`, a
  :class:`~crdtdb.engine.MemoryDatabase` whose commits are logged (and fsynced) before they
  are applied.
"""

from crdtdb.storage.durable import DurableDatabase, DurableStatistics, SchemaMismatchError
from crdtdb.storage.recordlog import (
    CorruptLogError,
    LogFailedError,
    LogLockedError,
    LogStatistics,
    RecordLog,
    RecordTooLargeError,
    StorageError,
)

__all__ = [
    "CorruptLogError",
    "DurableDatabase",
    "DurableStatistics",
    "LogFailedError",
    "LogLockedError",
    "LogStatistics",
    "RecordLog",
    "RecordTooLargeError",
    "SchemaMismatchError",
    "StorageError",
]
