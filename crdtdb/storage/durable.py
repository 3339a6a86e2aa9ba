"""A MemoryDatabase whose commits survive a crash: log first, then apply, then acknowledge.

:class:`DurableDatabase` keeps the committed state in a :class:`~crdtdb.engine.MemoryDatabase`
(so reads and the engine run at memory speed) and one :class:`~crdtdb.storage.recordlog.RecordLog`
in its data directory. A commit's changeset is encoded, appended and fsynced *before* it is
applied and ``execute`` returns; a commit that raised was not applied. On open the log is
replayed: a header, a snapshot, then the commits since.

Log records (msgpack arrays ``[kind, body]``):

* ``["H", {"format": 1, "name", "version", "digest"}]`` — always first. Identifies the schema
  (``digest`` is a SHA-256 of its canonical JSON), so that a data directory is never read
  with another schema: conversion is out of scope, a clear error is not.
* ``["S", {table: [[uuid16, row], ...]}]`` — part of a snapshot (all rows), written by
  compaction right after the header.
* ``["C", {table: [[uuid16, row or nil], ...]}]`` — part of a commit: the new value of each
  changed row, ``nil`` for a delete.

Rows are :func:`crdtdb.engine.binary.encode_row` bytes (columns by name, tagged atoms), so
replaying validates every value against the schema, as for bytes from a peer. A commit
bigger than ``chunk_bytes`` is split over several records written as one atomic batch, and
a snapshot is chunked the same way (its file rename makes it atomic), so no record grows
with the size of a transaction or of the database.

Compaction rewrites the log as header + snapshot once it is larger than both
``compact_min_bytes`` and ``compact_ratio`` times the last snapshot (the defaults are
ovsdb-server's: 10 MiB and 4x). It runs synchronously inside the commit that crosses the
threshold; a failed compaction is logged and retried later, never reported as a failed
commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import msgpack

from crdtdb.engine import integrity
from crdtdb.engine.binary import decode_row, encode_row
from crdtdb.engine.memory import MemoryDatabase
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import Changeset, LockOwnership, Row, RowChange
from crdtdb.engine.transaction import Outcome, execute, random_uuid
from crdtdb.errors import DecodeError
from crdtdb.storage.recordlog import (
    DEFAULT_MAX_RECORD_BYTES,
    HEADER_SIZE,
    RECORD_OVERHEAD,
    LogStatistics,
    RecordLog,
    StorageError,
    fsync_dir,
)

logger = logging.getLogger(__name__)

LOG_NAME = "db.log"
FORMAT = 1
HEADER, SNAPSHOT, COMMIT = "H", "S", "C"
DEFAULT_COMPACT_MIN_BYTES = 10 * 1024 * 1024
DEFAULT_COMPACT_RATIO = 4.0
DEFAULT_CHUNK_BYTES = 1024 * 1024
#: Per-row bytes a chunk counts on top of the encoded row (uuid, framing).
_ENTRY_OVERHEAD = 24


class SchemaMismatchError(StorageError):
    """The data directory was written with another schema (name, version or content)."""


@dataclass(frozen=True, slots=True)
class DurableStatistics:
    log: LogStatistics
    #: Rows in all tables.
    rows: int
    #: Commits logged since the database was opened.
    commits: int
    #: Compactions since the database was opened.
    compactions: int
    #: Size of the header and snapshot at the start of the log (the compaction baseline).
    snapshot_bytes: int
    #: Seconds :meth:`DurableDatabase.open` spent replaying the log.
    replay_seconds: float


def schema_digest(schema: DatabaseSchema) -> str:
    """SHA-256 of the schema's canonical JSON (without its ``cksum``, which is a comment)."""
    obj = schema.to_json()
    obj.pop("cksum", None)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(payload: bytes, where: str) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"{where}: not a valid msgpack value: {exc}") from None


class DurableDatabase:
    """Committed state of one database, persisted in a directory. Open with :meth:`open`.

    Readable as a :class:`~crdtdb.engine.Snapshot`; ``execute``/``transact``/``apply`` behave
    like :class:`~crdtdb.engine.MemoryDatabase`'s, except that a change is durable before
    they return. If they raise (disk full, I/O error) the change was not applied; after a
    failed fsync the log refuses further writes until the database is reopened, and whether
    that last commit reached the disk is unknown (as for any database). Not thread-safe.
    """

    def __init__(self, schema: DatabaseSchema, log: RecordLog, memory: MemoryDatabase, *,
                 new_uuid: Callable[[], str], compact_min_bytes: int, compact_ratio: float,
                 chunk_bytes: int, fsync: bool, snapshot_bytes: int, replay_seconds: float):
        self.schema = schema
        self.data_dir = log.path.parent
        self._log = log
        self._mem = memory
        self._new_uuid = new_uuid
        self._compact_min_bytes = compact_min_bytes
        self._compact_ratio = compact_ratio
        self._chunk_bytes = chunk_bytes
        self._fsync = fsync
        self._snapshot_bytes = snapshot_bytes
        self._replay_seconds = replay_seconds
        self._commits = 0
        self._compactions = 0
        self._compact_at = self._threshold()

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], schema: DatabaseSchema, *,
             compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
             compact_ratio: float = DEFAULT_COMPACT_RATIO,
             chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
             fsync: bool = True,
             new_uuid: Callable[[], str] = random_uuid,
             verify: bool = False,
             discard_corrupt_tail: bool = False) -> Self:
        """Open (creating if needed) the database in ``data_dir`` and replay its log.

        ``fsync=False`` acknowledges a commit once the OS has it (it survives the process
        being killed, not a power cut), except changesets marked ``durable`` (OVSDB
        ``commit`` with ``durable: true``), which are always fsynced. ``verify`` runs
        :func:`crdtdb.engine.integrity.violations` after the replay.
        Raises :class:`SchemaMismatchError`, :class:`~crdtdb.errors.DecodeError` (a record
        that checksums fine but does not decode against the schema), and the log's errors.
        """
        if compact_ratio < 1 or compact_min_bytes < 0 or chunk_bytes <= 0:
            raise ValueError("compact_ratio must be >= 1, compact_min_bytes >= 0, "
                             "chunk_bytes > 0")
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            data_dir.mkdir(parents=True)
            fsync_dir(data_dir.parent)
        log = RecordLog.open(data_dir / LOG_NAME, max_record_bytes=max_record_bytes,
                             discard_corrupt_tail=discard_corrupt_tail)
        try:
            t0 = time.perf_counter()
            memory = MemoryDatabase(schema, new_uuid=new_uuid)
            snapshot_bytes = _Replayer(schema, memory, log.path).run(log)
            if snapshot_bytes == 0:  # a new (or never-written) log
                log.append(_pack([HEADER, _header_body(schema)]))
                snapshot_bytes = log.statistics().bytes
            replay_seconds = time.perf_counter() - t0
            if verify:
                problems = integrity.violations(memory)
                if problems:
                    raise StorageError(f"{log.path}: replayed state breaks its schema in "
                                       f"{len(problems)} ways, e.g. {problems[0]}")
        except BaseException:
            log.close()
            raise
        return cls(schema, log, memory, new_uuid=new_uuid,
                   compact_min_bytes=compact_min_bytes, compact_ratio=compact_ratio,
                   chunk_bytes=chunk_bytes, fsync=fsync, snapshot_bytes=snapshot_bytes,
                   replay_seconds=replay_seconds)

    # --- Snapshot (reads go to memory) ----------------------------------------------------

    def get_row(self, table: str, uuid: str) -> Row | None:
        return self._mem.get_row(table, uuid)

    def iter_rows(self, table: str) -> Iterator[tuple[str, Row]]:
        return self._mem.iter_rows(table)

    def row_count(self, table: str) -> int:
        return self._mem.row_count(table)

    def ref_count(self, table: str, uuid: str) -> int:
        return self._mem.ref_count(table, uuid)

    def weak_referrers(self, table: str, uuid: str) -> Iterable[tuple[str, str]]:
        return self._mem.weak_referrers(table, uuid)

    def index_find(self, table: str, index: int, key: tuple) -> str | None:
        return self._mem.index_find(table, index, key)

    @property
    def n_commits(self) -> int:
        """Changesets applied to the in-memory state, the replayed ones included."""
        return self._mem.n_commits

    # --- transactions ---------------------------------------------------------------------

    def execute(self, operations: Sequence[Any], *, locks: LockOwnership | None = None,
                elapsed_ms: int = 0) -> Outcome:
        """Run a transaction; if it changed anything, log it durably, then apply it."""
        outcome = execute(self._mem, operations, locks=locks, elapsed_ms=elapsed_ms,
                          new_uuid=self._new_uuid)
        if outcome.changeset:
            self.apply(outcome.changeset)
        return outcome

    def transact(self, operations: Sequence[Any], *,
                 locks: LockOwnership | None = None) -> list[Any]:
        """The result array ovsdb-server would send; raises :class:`WouldBlock` on a pending wait.
        """
        return self.execute(operations, locks=locks).results_nowait()

    def apply(self, changeset: Changeset) -> None:
        """Log a changeset computed against the current state, then apply it."""
        if not changeset:
            return
        entries = ((tname, uuid, change.new)
                   for tname, changes in changeset.tables.items()
                   for uuid, change in changes.items())
        records = list(self._chunks(COMMIT, entries))
        self._log.append_many(records, sync=self._fsync or changeset.durable)
        self._mem.apply(changeset)
        self._commits += 1
        if self._log.statistics().bytes >= self._compact_at:
            try:
                self.compact()
            except (OSError, StorageError):
                # The commit itself is durable and applied: it must not look failed. Try
                # again once the log has grown some more (a log that failed its directory
                # fsync refuses the next commit anyway).
                logger.warning("%s: compaction failed; will retry later", self.data_dir,
                               exc_info=True)
                self._compact_at = self._log.statistics().bytes + max(
                    self._compact_min_bytes, 1 << 20)

    # --- compaction -----------------------------------------------------------------------

    def compact(self) -> None:
        """Rewrite the log as header + snapshot of the current rows (atomic: see rewrite)."""
        header = _pack([HEADER, _header_body(self.schema)])

        def records() -> Iterator[bytes]:
            yield header
            yield from self._chunks(SNAPSHOT, (
                (tname, uuid, row)
                for tname in self.schema.tables
                for uuid, row in self._mem.iter_rows(tname)))

        t0 = time.perf_counter()
        self._log.rewrite(records())
        self._snapshot_bytes = self._log.statistics().bytes
        self._compactions += 1
        self._compact_at = self._threshold()
        logger.info("%s: compacted to %d bytes in %.3f s", self.data_dir,
                    self._snapshot_bytes, time.perf_counter() - t0)

    def _threshold(self) -> int:
        return max(self._compact_min_bytes, int(self._compact_ratio * self._snapshot_bytes))

    def _chunks(self, kind: str, entries: Iterable[tuple[str, str, Row | None]]
                ) -> Iterator[bytes]:
        """Encode ``(table, uuid, row or None)`` as records of about ``chunk_bytes`` each."""
        tables = self.schema.tables
        body: dict[str, list[list[Any]]] = {}
        size = 0
        for tname, uuid, row in entries:
            encoded = None if row is None else encode_row(tables[tname], row)
            body.setdefault(tname, []).append([bytes.fromhex(uuid.replace("-", "")), encoded])
            size += _ENTRY_OVERHEAD + (len(encoded) if encoded is not None else 0)
            if size >= self._chunk_bytes:
                yield _pack([kind, body])
                body = {}
                size = 0
        if body:
            yield _pack([kind, body])

    # --- misc -----------------------------------------------------------------------------

    def statistics(self) -> DurableStatistics:
        return DurableStatistics(
            log=self._log.statistics(),
            rows=sum(self._mem.row_count(t) for t in self.schema.tables),
            commits=self._commits, compactions=self._compactions,
            snapshot_bytes=self._snapshot_bytes, replay_seconds=self._replay_seconds)

    @property
    def closed(self) -> bool:
        return self._log.closed

    def close(self) -> None:
        """Release the log (reads still work on the in-memory state; writes fail)."""
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DurableDatabase {self.schema.name} in {self.data_dir}>"


def _uuid_str(raw: bytes) -> str:
    """``str(uuid.UUID(bytes=raw))``, 3x faster (it runs once per replayed row)."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _header_body(schema: DatabaseSchema) -> dict[str, Any]:
    return {"format": FORMAT, "name": schema.name, "version": schema.version,
            "digest": schema_digest(schema)}


class _Replayer:
    """Rebuilds a MemoryDatabase from a log, validating every record."""

    def __init__(self, schema: DatabaseSchema, memory: MemoryDatabase, path: Path):
        self.schema = schema
        self.memory = memory
        self.path = path
        self.index = 0

    def run(self, log: RecordLog) -> int:
        """Replays the log; returns where its commits start (the bytes of the file header,
        header record and snapshot), or 0 for an empty log."""
        snapshot_bytes = HEADER_SIZE
        seen_commit = False
        for batch in log.replay_batches():
            changes: dict[str, dict[str, RowChange]] = {}
            for payload in batch:
                where = f"{self.path} record #{self.index}"
                obj = _unpack(payload, where)
                if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str)):
                    raise DecodeError(f"{where}: expected [kind, body]")
                kind, body = obj
                if self.index == 0:
                    if kind != HEADER:
                        raise DecodeError(f"{where}: the first record is not a header")
                    self._check_header(body, where)
                elif kind == HEADER:
                    raise DecodeError(f"{where}: header record after the first")
                elif kind == SNAPSHOT:
                    if seen_commit:
                        raise DecodeError(f"{where}: snapshot record after a commit")
                    self._decode_changes(body, changes, where)
                elif kind == COMMIT:
                    seen_commit = True
                    self._decode_changes(body, changes, where)
                else:
                    raise DecodeError(f"{where}: unknown record kind {kind!r}")
                if not seen_commit:
                    snapshot_bytes += len(payload) + RECORD_OVERHEAD
                self.index += 1
            if changes:
                self.memory.apply(Changeset(changes))
        return snapshot_bytes if self.index else 0

    def _check_header(self, body: Any, where: str) -> None:
        if not isinstance(body, dict) or not {"format", "name", "version", "digest"} <= set(body):
            raise DecodeError(f"{where}: malformed header {body!r}")
        if body["format"] != FORMAT:
            raise StorageError(f"{where}: data format {body['format']!r} is not supported "
                               f"(this build reads format {FORMAT})")
        s = self.schema
        held = f"database {body['name']} (schema version {body['version']})"
        if body["name"] != s.name:
            raise SchemaMismatchError(f"{self.path.parent} holds {held}, not {s.name}")
        if body["version"] != s.version:
            raise SchemaMismatchError(
                f"{self.path.parent} holds {held}; opened with schema version {s.version}: "
                "schema conversion is not supported")
        if body["digest"] != schema_digest(s):
            raise SchemaMismatchError(
                f"{self.path.parent} holds {held} but that schema differs from the one given "
                "(same name and version, different tables or columns)")

    def _decode_changes(self, body: Any, changes: dict[str, dict[str, RowChange]],
                        where: str) -> None:
        if not isinstance(body, dict):
            raise DecodeError(f"{where}: body must be a map")
        memory = self.memory
        for tname, entries in body.items():
            table = self.schema.tables.get(tname)
            if table is None:
                raise DecodeError(f"{where}: no table {tname!r} in schema {self.schema.name}")
            if not isinstance(entries, list):
                raise DecodeError(f"{where}: {tname} entries must be an array")
            out = changes.setdefault(tname, {})
            for entry in entries:
                if not (isinstance(entry, list) and len(entry) == 2
                        and isinstance(entry[0], bytes) and len(entry[0]) == 16):
                    raise DecodeError(f"{where}: {tname} entry must be [uuid16, row or nil]")
                uuid = _uuid_str(entry[0])
                if uuid in out:
                    raise DecodeError(f"{where}: {tname} row {uuid} twice in one commit")
                old = memory.get_row(tname, uuid)
                if entry[1] is None:
                    if old is None:
                        raise DecodeError(f"{where}: deletes {tname} row {uuid}, which does "
                                          "not exist")
                    new = None
                else:
                    if not isinstance(entry[1], bytes):
                        raise DecodeError(f"{where}: {tname} row {uuid} must be bytes")
                    try:
                        new = decode_row(table, entry[1])
                    except DecodeError as exc:
                        raise DecodeError(f"{where}: {tname} row {uuid}: {exc}") from None
                    if new[0] != (uuid,):
                        raise DecodeError(f"{where}: {tname} row {uuid} has _uuid {new[0]}")
                out[uuid] = RowChange(old, new)
