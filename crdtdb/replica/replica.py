"""One database's CRDT replica: a pycrdt document, the view readers see, and its durable log.

Local transactions run in the engine against the view; their changeset is written into the
document as one pycrdt transaction, whose update is sealed, logged (fsync) and only then
acknowledged and handed to listeners (the gossip layer ships it); a group of held commits
(:meth:`Replica.hold_commits`) shares one. Remote updates are checked, merged and logged.
The document's map events say which rows changed; those rows are re-read from the document
and the view recomputes what readers see (a :class:`~crdtdb.engine.Changeset` that drives
monitors). Held local commits skip the events: the view takes the engine's rows. A replica
with an empty document (a node joining from a peer's full state, or one reopened from its
log) skips them too: it reads the document whole and builds its view in one go, with the
same result.

The replica is synchronous and single-threaded (pycrdt never releases the GIL; there is
nothing to gain from threads). The node's trio code calls it between awaits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import itertools
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import msgpack
import pycrdt
from pycrdt import Doc, Map

from crdtdb.engine.collection import (
    LARGE_TRANSACTION_OPS,
    collection_paused,
    collector_paused,
)
from crdtdb.engine.frozen import fast_init
from crdtdb.engine.schema import DatabaseSchema
from crdtdb.engine.snapshot import Changeset, LockOwnership, Row, RowChange
from crdtdb.engine.transaction import Outcome, execute, random_uuid
from crdtdb.errors import DecodeError
from crdtdb.replica import encoding as enc
from crdtdb.replica.conflicts import Conflict, ConflictKind, ConflictLog
from crdtdb.replica.envelope import (
    CorruptUpdateError,
    EpochMismatchError,
    ReplicaError,
    check_update,
    decode_state_vector,
    open_sealed,
    open_sealed_fields,
    pycrdt_errors,
    seal,
    single_writer_span,
)
from crdtdb.replica.epoch import ORIGIN_KEY, EpochId, EpochOrigin, base_digest, covers
from crdtdb.replica.recent import RecentUpdates
from crdtdb.replica.view import RowKey, View
from crdtdb.storage.durable import schema_digest
from crdtdb.storage.recordlog import RecordLog, StorageError, fsync_dir

logger = logging.getLogger("crdtdb.replica")

LOG_NAME = "replica.log"
#: The log header's format: 2 since versions are stored as strings (envelope format 5; a log
#: of format 1 still reads). A log of a later format is refused.
LOG_FORMAT = 2
#: The document's root map for the replica's own bookkeeping (not a table: OVSDB table names
#: cannot hold a colon). Holds one entry per writer, moved by its delete-only commits.
META_MAP = "crdtdb:meta"
#: The client id that builds every epoch's base document (never a node's own id).
BASE_CLIENT_ID = 0
DEFAULT_COMPACT_MIN_BYTES = 64 * 1024 * 1024
#: Local row changes remembered per epoch so that writes past a compaction cut can be made
#: again in the new epoch (see Replica.adopt); beyond this many, the replica would be
#: stranded instead.
MAX_TRACKED_WRITES = 10_000
_INSERT, _DELETE = "insert", "delete"
DEFAULT_COMPACT_RATIO = 4.0
#: A whole document read from at least this many update bytes (a join, a reopen) is
#: followed by malloc_trim: what it frees grows with the update (27 MB, 100k rows: ~10
#: MiB), while the trim's walk of the heap grows with the process (~4 ms at 500 MB), which
#: a simulation of many small nodes in one process would pay for every one.
TRIM_AFTER_LOAD_BYTES = 4 * 1024 * 1024
_HEADER, _STATE, _UPDATE = "header", "state", "update"
#: Peers' updates queued while holding changes (see Replica._queue_update) go into the
#: document once this many, or this many bytes, wait: a burst's merge stays small.
MAX_QUEUED_UPDATES = 128
MAX_QUEUED_BYTES = 4 * 1024 * 1024


class ReplicaFailedError(ReplicaError):
    """A local commit could not be made durable; the replica refuses writes until reopened."""


class ReplicaFrozenError(ReplicaError):
    """A compaction round holds this replica's local writes (for a few seconds at most):
    retry the commit once it thaws (see :meth:`Replica.freeze`)."""


class StrandedError(ReplicaError):
    """A newer epoch does not hold every write this replica made in its own: moving to it
    would lose them, so the replica stays where it is (see :meth:`Replica.adopt`)."""

    def __init__(self, message: str, *, mine: EpochId, theirs: EpochId):
        super().__init__(message)
        self.mine = mine
        self.theirs = theirs


class ChangeEvent:
    """What listeners hear after every change of the view.

    A local commit's update is sealed when a listener first reads :attr:`update`, not at
    commit: a server without peers (no gossip listener) never pays for it (~4 us a commit:
    an envelope, a digest)."""

    __slots__ = ("_seal", "_update", "changes", "local", "span")

    def __init__(self, changes: Changeset, update: bytes | None, local: bool,
                 span: tuple[int, int, int] | None = None, *,
                 seal: Callable[[], bytes] | None = None):
        self.changes = changes
        self.local = local
        #: A local commit's ``(client, first clock, count)`` (see ApplyResult.span).
        self.span = span
        self._update = update
        self._seal = seal

    @property
    def update(self) -> bytes | None:
        """The sealed update to disseminate, for local commits; ``None`` for remote
        merges."""
        if self._seal is not None:
            self._update, self._seal = self._seal(), None
        return self._update

    def __repr__(self) -> str:
        return (f"ChangeEvent(changes={self.changes!r}, local={self.local!r}, "
                f"span={self.span!r})")


@fast_init  # (built for every merged update)
@dataclass(frozen=True, slots=True)
class ApplyResult:
    changes: Changeset
    #: The update depends on something this replica has not seen: ask a peer for a diff.
    gap: bool
    #: False if the update brought nothing new (a duplicate).
    new: bool
    #: ``(client, first clock, count)`` when the update holds one writer's items (see
    #: :func:`~crdtdb.replica.envelope.single_writer_span`): what a peer that sent it has.
    span: tuple[int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class _Held:
    """An update held back until what it follows is here (see ``Replica._ready``)."""

    update: bytes
    #: (writer, first clock, length) of the items of *other* writers it deletes (its own
    #: earlier items are covered by the check on its writer's clock).
    deletes: list[tuple[int, int, int]]


class _Burst:
    """Held local commits written into one transaction of pycrdt's underlying document,
    still open (see ``Replica._commit_in_burst``)."""

    __slots__ = ("event", "sync", "tables", "touched", "txn")

    def __init__(self, txn: Any):
        self.txn = txn
        #: The tables written, whose map events are off until the transaction is committed.
        self.tables: list[str] = []
        #: The commits' ``_own_writes`` entries, their clock filled in at the end.
        self.touched: list[list[Any]] = []
        #: Whether one of the commits must be fsynced.
        self.sync = False
        #: The last commit's change event: it carries the burst's update.
        self.event: ChangeEvent | None = None


@dataclass(slots=True)
class ReplicaStatistics:
    client_id: int
    epoch: int
    rows: int
    hidden_rows: int
    local_commits: int = 0
    remote_updates: int = 0
    duplicate_updates: int = 0
    rejected_updates: int = 0
    gaps: int = 0
    #: Full re-reads of the document after a gap.
    rescans: int = 0
    log_bytes: int = 0
    #: Pulls answered from the last commits kept (see diff), and with pycrdt's whole diff.
    recent_diffs: int = 0
    full_diffs: int = 0
    conflicts: dict[str, int] = field(default_factory=dict)


class _EveryUuid:
    """The container of every uuid: ``fresh`` for a commit all of whose inserted rows are
    under uuids its engine run drew (see ``Replica._execute``)."""

    __slots__ = ()

    def __contains__(self, item: object) -> bool:
        return True


EVERY_UUID: Container[str] = _EveryUuid()


def new_client_id(rng: random.Random) -> int:
    """A random 32-bit client id (never :data:`BASE_CLIENT_ID`)."""
    return rng.randrange(1, 2**32)


class Replica:
    """The eventual-consistency store of one database. Build with :meth:`open` (durable) or
    :meth:`in_memory`; readable as a :class:`~crdtdb.engine.Snapshot`."""

    def __init__(self, schema: DatabaseSchema, *, client_id: int, epoch: int = 0,
                 base: bytes = b"", rng: random.Random | None = None, log: RecordLog | None = None,
                 fsync: bool = True, new_uuid: Callable[[], str] = random_uuid,
                 compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
                 compact_ratio: float = DEFAULT_COMPACT_RATIO,
                 max_parked_updates: int = 1024, max_parked_bytes: int = 16 * 1024 * 1024,
                 max_recent_updates: int = 4096, max_recent_bytes: int = 8 * 1024 * 1024):
        if not 0 < client_id < 2**53:
            raise ValueError(f"client_id must be in 1..2**53-1, not {client_id}")
        self.schema = schema
        self.name = schema.name
        #: table -> column name -> encoding.register_form of the column (the column first),
        #: for the columns but _uuid (see _merge_registers; filled as merged updates name
        #: them; the compiled loop of _merge_rows reads them as they are)
        self._registers: dict[str, dict[str, Any]] = {t: {} for t in schema.tables}
        self.client_id = client_id
        self.epoch = epoch
        #: The digest of the epoch's base document (empty for epoch 0): see EpochId.
        self.base = base
        #: Where this epoch's base was cut (``None`` for epoch 0), from the document.
        self.origin: EpochOrigin | None = None
        self.schema_digest = schema_digest(schema)
        self._rng = rng or random.Random()
        self._log = log
        self._fsync = fsync
        self._new_uuid = new_uuid
        self._compact_min_bytes = compact_min_bytes
        self._compact_ratio = compact_ratio
        self._snapshot_bytes = 0
        #: The log's size when last read (None: not yet), and the bytes appended since,
        #: counted high (see _maybe_compact_log).
        self._log_bytes: int | None = None
        self._appended_bytes = 0
        #: Between hold_commits and release_commits: local commits' log records (None: not
        #: holding), whether one of them must be fsynced, and their change events.
        self._held: list[bytes] | None = None
        self._held_sync = False
        self._held_events: list[ChangeEvent] = []
        #: Between hold_changes and release_changes; whether remote updates merged since
        #: wait in _events to be shown, and whether showing them needs a full re-read.
        self._holding_changes = False
        self._changes_pending = False
        self._pending_rescan = False
        #: While holding: the local commits written into one still open pycrdt transaction.
        self._burst: _Burst | None = None
        #: While holding: peers' updates known new and ready from clocks alone, not yet in
        #: the document; they go in together, in one pycrdt transaction (see _queue_update).
        self._queued: list[bytes] = []
        self._queued_spans: list[tuple[int, int, int]] = []  # (each one's)
        self._queued_bytes = 0
        self._max_parked = max_parked_updates
        self._max_parked_bytes = max_parked_bytes
        #: Bounds of the commits kept to answer pulls (see diff and RecentUpdates).
        self._max_recent = (max_recent_updates, max_recent_bytes)
        #: Keep the last commits to answer pulls (see diff). A replica no peer pulls from
        #: (``crdtdb serve`` without gossip) turns it off: ~2% of a served single-row
        #: insert. Turned on again, it keeps from then on (a pull behind that gets
        #: pycrdt's diff, as after an eviction).
        self.keep_recent = True
        self.conflicts = ConflictLog()
        self._listeners: list[Callable[[ChangeEvent], None]] = []
        self._failed: str | None = None
        self._unlogged: str | None = None
        #: Local writes are held by a compaction round (see freeze).
        self.frozen = False
        #: This epoch's local row changes (also in the log): (table, uuid) -> [[own clock
        #: after the commit, _INSERT | _DELETE | changed columns' indexes], ...], a repeated
        #: change of the same kind kept once, at its latest clock; None once past
        #: MAX_TRACKED_WRITES entries.
        self._own_writes: dict[tuple[str, str], list[list[Any]]] | None = {}
        #: (epoch left, own clock there, epoch entered): writes made again after a move.
        self.recommits: list[tuple[EpochId, int, EpochId]] = []
        self._stats = ReplicaStatistics(client_id, epoch, 0, 0)
        self._epoch_start = 0
        #: During a commit: the uuids drawn for it, and its birth for other inserted rows
        #: (0: not drawn yet). See _write_row.
        self._fresh: Container[str] = ()
        self._commit_birth = 0
        self._decoders = {name: enc.RowDecoder(t) for name, t in schema.tables.items()}
        self._reset_doc(Doc(client_id=client_id))
        self._pristine = True

    def _reset_doc(self, doc: Doc, update: bytes | None = None) -> None:
        """Make ``doc`` this replica's document, read whole; ``update``: the only update
        ever applied to it, if it is (see _load_document)."""
        self._unsubscribe()
        self.doc = doc
        self.view = View(self.schema, self.conflicts)
        self._maps: dict[str, Map] = {}
        #: (observed object, subscription): pycrdt keeps callback and document in a cycle
        #: Python's GC cannot see, so a document is only freed once they are unobserved.
        self._subs: list[tuple[Any, Any]] = []
        #: The table maps' subscriptions (see _observe_maps).
        self._map_subs: dict[str, Any] = {}
        #: table -> uuid -> the row's non-marker keys present in the document
        self._extras: dict[str, dict[str, set[str]]] = {t: {} for t in self.schema.tables}
        self._events: list[tuple[str, str, str, Any]] = []
        #: table -> uuid -> the birth of the row's marker, for every row of the view's raw
        #: state born to a birth other than 0 (most are born 0: see _write_row; a dict
        #: entry and an int each cost 6.7 MiB per 100k rows)
        self._births: dict[str, dict[str, int]] = {t: {} for t in self.schema.tables}
        #: the updates of the transaction just made (the document observer's)
        self._captured: list[bytes] = []
        #: The document may hold items applied past a gap (see _apply_raw).
        self._gapped = False
        #: Nothing was ever applied to the document or written into it (see _apply_raw);
        #: only its creator can tell.
        self._pristine = False
        #: The highest clock of every client in the updates applied so far.
        self._wanted: dict[int, int] = {}
        #: The clients whose wanted clock is past the document's (a gap while not empty):
        #: kept so that a gap check costs the clients involved, not every writer ever seen.
        self._behind: set[int] = set()
        #: The document's state vector, kept up to date without decoding it every time.
        self._clocks: dict[int, int] = decode_state_vector(doc.get_state())
        #: Updates held back until what they follow or delete is here (see _ready):
        #: (client, first clock, count) -> the update.
        self._parked: OrderedDict[tuple[int, int, int], _Held] = OrderedDict()
        self._parked_bytes = 0
        #: (state vector bytes, decoded): see _doc_clocks.
        self._decoded_state: tuple[bytes, Mapping[int, int]] = (b"", {})
        #: The last single-writer updates, to answer pulls (see diff).
        self._recent = RecentUpdates(max_updates=self._max_recent[0],
                                     max_bytes=self._max_recent[1])
        self._meta = doc.get(META_MAP, type=Map)
        origin = self._meta.get(ORIGIN_KEY)
        self.origin = None if origin is None else EpochOrigin.unpack(origin, self.epoch)
        for tname in self.schema.tables:
            self._maps[tname] = doc.get(tname, type=Map)
        self._observe_maps()
        self._subscribe_doc()
        # A document that already holds data (a base or a replayed log): read it whole.
        self._events.clear()
        self._captured.clear()
        self._load_document(update)
        # Rows a rebuild dropped (hidden ones) are not revisited: end their conflicts.
        raw = self.view.raw
        self.conflicts.end_unless(lambda t, u: u in raw[t])

    def _release_doc(self) -> None:
        """Drop every reference to the document (the view goes too; _reset_doc follows)."""
        self._unsubscribe()
        self.doc = Doc(client_id=self.client_id)
        self._maps = {}
        self._meta = self.doc.get(META_MAP, type=Map)
        self._captured.clear()
        self._events.clear()
        self._queued.clear()
        self._queued_spans.clear()
        self._queued_bytes = 0
        self._parked.clear()
        self._recent.clear()
        self.view = View(self.schema, self.conflicts)
        gc.collect()

    def _subscribe_doc(self) -> None:
        """Capture the update of every transaction (see commit and _apply_raw).

        On pycrdt's underlying document, as _observe_maps: ``Doc.observe`` wraps the
        callback in a ``partial`` of its ``observe_callback``, two more calls per merged
        update (~1% of its instructions). An error is kept as observe_callback keeps it,
        for whoever ends the transaction to raise (_apply_to_doc, pycrdt's Transaction)."""
        doc = self.doc
        # Neither the replica nor the document in the closure: pycrdt holds it where
        # Python's collector cannot see, so a reference back would keep both alive for
        # good once the replica is dropped without close().
        captured, exceptions = self._captured, doc._exceptions

        def on_transaction(ev: Any) -> None:
            try:
                captured.append(ev.update)
            except Exception as exc:  # (as pycrdt's observe_callback)
                exceptions.append(exc)
        sub = doc._doc.observe(on_transaction)
        doc._subscriptions.append(sub)  # (as Doc.observe: Doc.unobserve removes it)
        self._subs.append((doc, sub))

    def _unsubscribe_doc(self) -> None:
        """Stop capturing (until _subscribe_doc)."""
        doc = self.doc
        for owner, sub in [x for x in self._subs if x[0] is doc]:
            owner.unobserve(sub)
            self._subs.remove((owner, sub))

    def _unsubscribe(self) -> None:
        self._unobserve_maps()
        for owner, sub in getattr(self, "_subs", ()):
            owner.unobserve(sub)
        self._subs = []

    def _observe_maps(self) -> None:
        """Observe the table maps' underlying (Rust) maps: pycrdt's ``Map.observe`` wraps
        every event in Python (a read transaction, a ``Map`` for its target, its path, a
        walk of its keys), ~5 us of each remote update, for the ``keys`` read here alone.
        Internals of pycrdt 0.14, as in _decode_table; the events carry the same keys,
        actions and values (``test_raw_map_events_carry_what_pycrdts_public_events_do``)."""
        self._map_subs = {tname: m.integrated.observe(self._on_map_event(tname))
                          for tname, m in self._maps.items()}

    def _unobserve_maps(self) -> None:
        """No map events until _observe_maps: pycrdt builds one Python object per changed
        key for them, which a replica that reads its whole document does not need."""
        for sub in getattr(self, "_map_subs", {}).values():
            sub.drop()
        self._map_subs = {}

    def _on_map_event(self, tname: str) -> Callable[[Any], None]:
        append = self._events.append

        def on_event(ev: Any) -> None:  # runs inside pycrdt: only queue work
            for key, change in ev.keys.items():
                append((tname, key, change["action"], change.get("newValue")))
        return on_event

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def in_memory(cls, schema: DatabaseSchema, *, client_id: int | None = None,
                  rng: random.Random | None = None, **kwargs: Any) -> Self:
        rng = rng or random.Random()
        return cls(schema, client_id=client_id or new_client_id(rng), rng=rng, **kwargs)

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], schema: DatabaseSchema, *,
             fsync: bool = True, rng: random.Random | None = None,
             new_uuid: Callable[[], str] = random_uuid,
             compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
             compact_ratio: float = DEFAULT_COMPACT_RATIO) -> Self:
        """Open (creating if needed) the replica stored in ``data_dir``.

        The client id is created with the directory and kept in its log: a replica never
        writes under its id without the state that id already wrote.
        """
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            data_dir.mkdir(parents=True)
            fsync_dir(data_dir.parent)
        log = RecordLog.open(data_dir / LOG_NAME)
        try:
            return cls.open_log(log, schema, fsync=fsync, rng=rng, new_uuid=new_uuid,
                                compact_min_bytes=compact_min_bytes,
                                compact_ratio=compact_ratio)
        except BaseException:
            log.close()
            raise

    @classmethod
    def open_log(cls, log: Any, schema: DatabaseSchema, *, fsync: bool = True,
                 rng: random.Random | None = None,
                 new_uuid: Callable[[], str] = random_uuid,
                 compact_min_bytes: int = DEFAULT_COMPACT_MIN_BYTES,
                 compact_ratio: float = DEFAULT_COMPACT_RATIO) -> Self:
        """Open the replica kept in ``log`` (a :class:`RecordLog`, or anything with its
        ``append``/``replay``/``rewrite``/``statistics``/``close``: simulations pass a
        simulated disk)."""
        rng = rng or random.Random()
        t0 = time.perf_counter()
        header, epoch, base, updates, own_writes = _read_log(log, schema)
        if header is None:
            client_id = new_client_id(rng)
            log.append(_pack([_HEADER, {"schema": schema_digest(schema),
                                        "client_id": client_id, "format": LOG_FORMAT}]))
            epoch, base = 0, b""
        else:
            client_id = header["client_id"]
        doc = Doc(client_id=client_id)
        for u in updates:
            doc.apply_update(u)
        self = cls(schema, client_id=client_id, epoch=epoch, base=base, rng=rng, log=log,
                   fsync=fsync, new_uuid=new_uuid, compact_min_bytes=compact_min_bytes,
                   compact_ratio=compact_ratio)
        self._reset_doc(doc, updates[0] if len(updates) == 1 else None)
        self._own_writes = _tracked(own_writes, {})
        self._pristine = not updates
        if sum(map(len, updates)) >= TRIM_AFTER_LOAD_BYTES:
            del updates
            _return_free_memory()  # the log's records, the applies' and decoding's garbage
        self._snapshot_bytes = log.statistics().bytes
        logger.info("%s: opened replica of %s (client %d, epoch %d, %d rows) in %.2f s",
                    log.path, schema.name, client_id, epoch, self.row_total(),
                    time.perf_counter() - t0)
        return self

    # --- Snapshot ---------------------------------------------------------------------------

    def get_row(self, table: str, uuid: str) -> Row | None:
        if self._changes_pending:
            self._show_pending()
        return self.view.rows.get_row(table, uuid)

    def iter_rows(self, table: str) -> Iterator[tuple[str, Row]]:
        if self._changes_pending:
            self._show_pending()
        return self.view.rows.iter_rows(table)

    def row_count(self, table: str) -> int:
        if self._changes_pending:
            self._show_pending()
        return self.view.rows.row_count(table)

    def ref_count(self, table: str, uuid: str) -> int:
        if self._changes_pending:
            self._show_pending()
        return self.view.rows.ref_count(table, uuid)

    def weak_referrers(self, table: str, uuid: str) -> Any:
        if self._changes_pending:
            self._show_pending()
        return self.view.rows.weak_referrers(table, uuid)

    def index_find(self, table: str, index: int, key: tuple) -> str | None:
        if self._changes_pending:
            self._show_pending()
        return self.view.rows.index_find(table, index, key)

    def row_total(self) -> int:
        if self._changes_pending:
            self._show_pending()
        return sum(self.view.rows.row_count(t) for t in self.schema.tables)

    # --- listeners --------------------------------------------------------------------------

    def add_listener(self, fn: Callable[[ChangeEvent], None]) -> None:
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[ChangeEvent], None]) -> None:
        self._listeners.remove(fn)

    def _emit(self, ev: ChangeEvent) -> None:
        for fn in list(self._listeners):
            fn(ev)

    @property
    def unlogged(self) -> str | None:
        """Why this replica's document holds commits its log lacks (their record could not
        be written), else None. Such a replica takes no commit or update and gives out
        nothing (diff, full_state): those commits are not durable, and a restart reuses
        their clocks for others. Reopen it. (A log that could not be rewritten for a new
        epoch leaves no such commit: that replica refuses writes but still replicates.)"""
        return self._unlogged

    # --- group commit -----------------------------------------------------------------------

    def hold_commits(self) -> None:
        """Group commit: until :meth:`release_commits`, local commits are applied and shown
        at once, but their log records are written (one write, one fsync if any of them
        asks for it) and their change events heard only then. They share one pycrdt
        transaction, so one update and one record (see ``_commit_in_burst``).

        For a server running a pipelined burst of transactions back to back: it must not
        acknowledge any of them (nor send their monitor updates) before the release, and
        must release before it waits for anything (no peer may see a commit that is not
        durable: a restart would reuse its clocks). Whatever else writes the log or shows
        the document releases what is held first."""
        if self._held is None:
            self._held = []

    def release_commits(self) -> None:
        """Make the held commits durable, then tell listeners (an exception of one is
        logged); stop holding. Raises :class:`ReplicaFailedError` if the log write fails
        (none of them is durable: the caller must not acknowledge them)."""
        try:
            self._write_held()
        finally:
            self._held = None

    def hold_changes(self) -> None:
        """Until :meth:`release_changes`, peers' updates go into the document (and the log)
        as they come, but the view catches up with them, and listeners hear of them, only
        then: one refresh and one change event for a burst of updates (a hub merges a frame
        per leaf and change), where each would cost them again. Reads, local commits and
        whatever else uses the view show what is pending first."""
        self._holding_changes = True

    def release_changes(self) -> None:
        """Stop holding; show what is pending (see :meth:`hold_changes`)."""
        self._holding_changes = False
        if self._changes_pending:
            self._show_pending()

    def _show_pending(self) -> None:
        """The view catches up with the updates merged while holding; listeners hear it."""
        self._flush_queued()
        self._changes_pending = False
        diff = None if self._pending_rescan else self._merge_registers()
        if diff is None:
            dirty: set[RowKey] = set()
            by_row = self._drain_events(dirty)
            if self._pending_rescan:
                self._pending_rescan = False
                self._rescan(dirty)  # (see _apply_raw)
                by_row = {}
            diff = self._refresh(dirty, {}, by_row)
        if diff:
            self._emit(ChangeEvent(diff, None, False))

    def _write_held(self) -> None:
        if self._queued:
            self._flush_queued()
        if self._burst is not None:
            self._close_burst()
        records, events = self._held, self._held_events
        if not records and not events:
            return
        sync, self._held_sync = self._held_sync, False
        self._held_events = []
        if records:
            self._held = []
            if self._log is not None:
                try:
                    append_many = getattr(self._log, "append_many", None)
                    if append_many is not None:
                        append_many(records, sync=sync)
                    else:  # a log without batches (a simulated disk)
                        for i, r in enumerate(records):
                            self._log.append(r, sync=sync and i == len(records) - 1)
                except (OSError, StorageError) as exc:
                    self._failed = self._unlogged = (
                        f"{self.name}: {len(records)} commits could not be logged ({exc}); "
                        "reopen")
                    raise ReplicaFailedError(self._failed) from exc
        for ev in events:
            try:
                for fn in list(self._listeners):  # (_emit, inline: once a held commit)
                    fn(ev)
            except Exception:  # the commits are durable: they must not look failed
                logger.exception("%s: a listener failed on a held commit", self.name)
        if records:
            self._maybe_compact_log(sum(map(len, records)))

    # --- local transactions -----------------------------------------------------------------

    def execute(self, operations: Sequence[Any], *, locks: LockOwnership | None = None,
                elapsed_ms: int = 0) -> Outcome:
        """Run a transaction against the view; commit it if it succeeded.

        The outcome's changeset is what readers saw change (normally the engine's own).
        """
        if self._changes_pending:
            self._show_pending()
        if len(operations) < LARGE_TRANSACTION_OPS:
            return self._execute(operations, locks, elapsed_ms)  # (no context to enter)
        with collection_paused(len(operations)):
            return self._execute(operations, locks, elapsed_ms)

    def _execute(self, operations: Sequence[Any], locks: LockOwnership | None,
                 elapsed_ms: int) -> Outcome:
        fresh: Container[str]
        for op in operations:
            # (a dict subclass or another mapping is parsed as an object too, so it may name
            # a uuid: noted the slow way, never taken for a drawn one)
            if type(op) is not dict or "uuid" in op:
                outcome, fresh = self._execute_noting_draws(operations, locks, elapsed_ms)
                break
        else:
            # No operation names a uuid: every row it inserts is under one the engine drew
            # (fresh, see _write_row's births), known without a closure call per uuid drawn.
            outcome = execute(self.view.rows, operations, locks=locks,
                              elapsed_ms=elapsed_ms, new_uuid=self._new_uuid)
            fresh = EVERY_UUID
        changeset = outcome.changeset
        if changeset is not None and any(changeset.tables.values()):  # (its bool, inline)
            if self.frozen:
                # Held like a blocked wait: the server runs it again when the replica
                # changes, which thawing counts as (see freeze).
                return Outcome(None, read_set=outcome.read_set, blocked=True)
            diff = None
            if self._held is not None and not self._failed:
                # (commit's path for it, straight: its other checks are passed here)
                diff = self._commit_in_burst(changeset, True, fresh)
            if diff is None:
                diff = self.commit(changeset, fresh=fresh)
            # (the engine's own Outcome, which nothing else holds: a new one, or
            # dataclasses.replace, cost ~1 us a commit)
            outcome.changeset = diff
        return outcome

    def _execute_noting_draws(self, operations: Sequence[Any], locks: LockOwnership | None,
                              elapsed_ms: int) -> tuple[Outcome, set[str]]:
        """The engine's run, and the uuids it drew (see _write_row's births)."""
        drawn: list[str] = []
        new_uuid, keep = self._new_uuid, drawn.append

        def draw() -> str:
            u = new_uuid()
            keep(u)
            return u
        outcome = execute(self.view.rows, operations, locks=locks, elapsed_ms=elapsed_ms,
                          new_uuid=draw)
        return outcome, set(drawn)

    def transact(self, operations: Sequence[Any], *,
                 locks: LockOwnership | None = None) -> list[Any]:
        return self.execute(operations, locks=locks).results_nowait()

    def commit(self, changeset: Changeset, *, tell: bool = True,
               engine_checked: bool = True, fresh: Container[str] = ()) -> Changeset:
        """Write a changeset computed against the view; durable before this returns.
        ``tell=False``: listeners get the update but not the changes (the caller reports
        them with others, see adopt). ``engine_checked=False``: the engine did not run it
        (writes made again after a move), so the view checks every constraint. ``fresh``:
        uuids drawn for this commit (by :meth:`execute`'s engine run, from ``new_uuid``):
        rows it inserts under one of them are born 0 (see ``_write_row``)."""
        if self._failed:
            raise ReplicaFailedError(self._failed)
        if self._changes_pending:
            self._show_pending()
        if not changeset:
            return Changeset()
        if self.frozen:
            raise ReplicaFrozenError(f"{self.name}: a compaction round holds local writes")
        if self._held is not None and engine_checked:
            diff = self._commit_in_burst(changeset, tell, fresh)
            if diff is not None:
                return diff
        if self._burst is not None:
            self._close_burst()  # (what the burst wrote comes first)
        known: dict[RowKey, Row | None] = {}
        self._captured.clear()
        self._pristine = False
        # One transaction on pycrdt's underlying document, as pycrdt's own Transaction
        # would make and commit (committed even if a write fails; observer errors raised
        # as it raises them), without its Python layers (~1.5 us of every commit; pycrdt
        # 0.14 internals, as in _apply_to_doc). Nothing here reads the origin pycrdt's
        # would carry.
        self._fresh, self._commit_birth = fresh, 0
        doc = self.doc
        txn = doc._doc.create_transaction()
        try:
            for tname, changes in changeset.tables.items():
                for uuid, change in changes.items():
                    self._write_row(tname, uuid, change.old, change.new, known, txn)
        finally:
            self._fresh = ()
            try:
                txn.commit()
            finally:
                txn.drop()
        update, span = self._local_update()
        touched = self._touched(changeset, self.own_clock()) \
            if self._own_writes is not None else None
        written = self._log_update(update, touched, self._fsync or changeset.durable)
        dirty: set[RowKey] = set()
        by_row = self._drain_events(dirty)
        diff = self._refresh(dirty, known, by_row,
                             engine_checked=engine_checked and dirty.issubset(known))
        self._stats.local_commits += 1
        if touched is not None and self._own_writes is not None:
            self._own_writes = _tracked(touched, self._own_writes)
        ev = ChangeEvent(diff if tell else Changeset(), None, True, span,
                         seal=functools.partial(seal, self.schema_digest, self.epoch,
                                                self.client_id, update, base=self.base)
                         if update else None)
        if self._held is not None:
            self._held_events.append(ev)
            return diff
        self._emit(ev)
        self._maybe_compact_log(written)
        return diff

    def _local_update(self) -> tuple[bytes, tuple[int, int, int] | None]:
        """After a local pycrdt transaction (a commit's, a burst's): raise its observers'
        errors as pycrdt would, and take its update and span, the clocks moved and the
        update kept for pulls."""
        doc = self.doc
        if doc._exceptions:
            exceptions = tuple(doc._exceptions)
            doc._exceptions.clear()
            raise ExceptionGroup("Observer callback error", exceptions)
        update = _merge(self._captured)
        span = single_writer_span(update) if update else None
        if update and span is None:
            # Only deletions: no item of this writer, so its clock would not move and a peer
            # at the same state vector could still lack them. One entry in the (unobserved)
            # meta map moves it: equal state vectors then mean equal documents, which is
            # what lets gossip answer an in-sync pull with nothing.
            with doc.transaction(origin="local"):
                self._meta[str(self.client_id)] = b""
            update = _merge(self._captured)
            span = single_writer_span(update)
        self._captured.clear()
        if span is not None:
            self._advance_clocks(span)
            if self.keep_recent:
                self._recent.add(span, update)
        elif update:
            self._clocks = decode_state_vector(doc.get_state())
        return update, span

    def _log_update(self, update: bytes, touched: list[list[Any]] | None, sync: bool
                    ) -> int:
        """Log a local transaction's update: held (see hold_commits) or written now, when
        the size written is returned (else 0). A failed write fails the replica: the
        commit is not durable, so it must not be acknowledged."""
        if not update or self._log is None:
            return 0
        record = _pack([_UPDATE, self.epoch, update, touched])
        if self._held is not None:
            self._held.append(record)
            self._held_sync = self._held_sync or sync
            return 0
        try:
            self._log.append(record, sync=sync)
        except (OSError, StorageError) as exc:
            self._failed = self._unlogged = (
                f"{self.name}: a commit could not be logged ({exc}); reopen")
            self._events.clear()
            raise ReplicaFailedError(self._failed) from exc
        return len(record)

    def _commit_in_burst(self, changeset: Changeset, tell: bool,
                         fresh: Container[str]) -> Changeset | None:
        """:meth:`commit` while holding: the changeset goes into one pycrdt transaction
        that the held commits share, committed when they are written (``_close_burst``);
        None (nothing done) where a commit of its own is needed.

        pycrdt's transaction commit and its observers (the update's encoding, the map
        events and their Python wrapping), the update's checks and its log record are
        then paid once a burst, not once a commit. The view is updated from the changeset
        alone: it is the engine's (run against the view), so the rows' new raw values are
        the engine's new rows, and the keys written are booked as the map events would
        have booked them. Not for an update of a row shown otherwise than stored (a
        conflict): its new raw value would need a read of the document.

        One update (a single writer's span) and one log record then hold the whole burst:
        listeners hear every commit's changes as before, the last one's event carrying the
        burst's update and span (the others' have none: nothing to ship). Every commit's
        ``_own_writes`` entries get the clock after the burst, which no cut can fall
        within: nothing sees the document before the burst's transaction is committed
        (whatever reads it, or the clocks, closes the burst first)."""
        raw = self.view.raw
        for tname, changes in changeset.tables.items():
            traw = raw[tname]
            for uuid, ch in changes.items():
                if ch.old is not None and ch.new is not None and traw.get(uuid) is not ch.old:
                    return None
        burst = self._burst
        if burst is None:
            burst = self._burst = _Burst(self.doc._doc.create_transaction())
        self._pristine = False
        known: dict[RowKey, Row | None] = {}
        booked: list[tuple[str, str, str, bool]] = []
        self._fresh, self._commit_birth = fresh, 0  # (births as in commit: see _write_row)
        try:
            for tname, changes in changeset.tables.items():
                if tname not in burst.tables:
                    # No map events for what the burst writes (see above).
                    sub = self._map_subs.pop(tname, None)
                    if sub is not None:
                        sub.drop()
                    burst.tables.append(tname)
                for uuid, change in changes.items():
                    self._write_row(tname, uuid, change.old, change.new, known, burst.txn,
                                    booked)
        except BaseException:
            self._close_burst()  # (what was written, as a commit of its own would)
            raise
        finally:
            self._fresh = ()
            if booked:
                self._book(booked)
        diff = self.view.update(known, engine_checked=True)
        self._stats.local_commits += 1
        if self._own_writes is not None:
            burst.touched += self._touched(changeset, 0)
        burst.sync = burst.sync or self._fsync or changeset.durable
        ev = burst.event = ChangeEvent(diff if tell else Changeset(), None, True)
        self._held_events.append(ev)
        return diff

    def _book(self, booked: list[tuple[str, str, str, bool]]) -> None:
        """Book the non-marker keys a burst's commit added (True) or removed, as their map
        events would have (``_note_key``)."""
        for tname, uuid, key, added in booked:
            extras = self._extras[tname]
            if added:
                extras.setdefault(uuid, set()).add(key)
                continue
            keys = extras.get(uuid)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del extras[uuid]

    def _close_burst(self) -> None:
        """Commit the burst's transaction: its update is logged (held, see hold_commits) and
        goes with the last commit's event, as :meth:`commit` does with a commit's own."""
        burst, self._burst = self._burst, None
        if burst is None:
            return
        self._captured.clear()
        try:
            try:
                burst.txn.commit()
            finally:
                burst.txn.drop()
        finally:
            for tname in burst.tables:
                self._map_subs[tname] = self._maps[tname].integrated.observe(
                    self._on_map_event(tname))
        update, span = self._local_update()
        touched = None
        if self._own_writes is not None:
            touched = burst.touched
            clock = self.own_clock()
            for entry in touched:
                entry[0] = clock
        written = self._log_update(update, touched, burst.sync)
        if written:
            self._maybe_compact_log(written)
        if touched is not None and self._own_writes is not None:
            self._own_writes = _tracked(touched, self._own_writes)
        if update and burst.event is not None:
            burst.event.span = span
            burst.event._seal = functools.partial(seal, self.schema_digest, self.epoch,
                                                  self.client_id, update, base=self.base)

    def _touched(self, changeset: Changeset, clock: int) -> list[list[Any]]:
        """The rows a local commit changed, as kept in ``_own_writes`` and in its log
        record: [own clock after it, table, uuid, "insert" | "delete" | changed columns]."""
        out: list[list[Any]] = []
        for tname, changes in changeset.tables.items():
            for uuid, ch in changes.items():
                if ch.old is None or ch.new is None:
                    what: Any = _INSERT if ch.old is None else _DELETE
                else:
                    what = [i for i, (a, b) in enumerate(zip(ch.old, ch.new, strict=True))
                            if a != b]
                out.append([clock, tname, uuid, what])
        return out

    def _write_row(self, tname: str, uuid: str, old: Row | None, new: Row | None,
                   known: dict[RowKey, Row | None], txn: Any,
                   booked: list[tuple[str, str, str, bool]] | None = None) -> None:
        """Write one row's change into the document in transaction ``txn`` (the underlying
        document's, see commit). Values (bytes) are set, read and removed on the underlying
        map directly, as pycrdt's ``Map`` would after its transaction wrappers and type
        checks (half the cost of a set); a missing key is a KeyError, as there.
        ``booked``: where to note the non-marker keys added (True) and removed (see
        _commit_in_burst)."""
        m = self._maps[tname]
        put = m._integrated.insert  # (the map is integrated: the property's test, skipped)
        table = self.schema.tables[tname]
        extras = self._extras[tname].get(uuid, ())
        if new is None:
            _remove(m, txn, uuid)
            for k in extras:
                _remove(m, txn, k)
            if booked is not None:
                booked.extend((tname, uuid, k, False) for k in extras)
            self._births[tname].pop(uuid, None)
            known[tname, uuid] = None
            return
        if old is None:
            for k in extras:  # leftovers of an earlier life of this uuid
                _remove(m, txn, k)
            if booked is not None and extras:
                booked.extend((tname, uuid, k, False) for k in extras)
            # A row's birth tells its lives apart (keys of an earlier life of its uuid never
            # count in a later one). A uuid drawn for this commit never had a life before,
            # and no other replica can insert it concurrently (122 random bits): born 0,
            # as every row of an epoch's base is (its later lives are born to a random
            # birth, never 0). Any other uuid (an explicit "uuid" of an insert, a row
            # made again after a move) takes the commit's random birth: two commits
            # never share one (one life per uuid in a commit), as two rows needed not.
            birth = 0
            fresh = self._fresh
            if fresh is not EVERY_UUID and uuid not in fresh:
                birth = self._commit_birth or self._rng.randrange(1, 2**32)
                self._commit_birth = birth
            put(txn, uuid, enc.pack_marker(table, birth, new))
            if birth:
                self._births[tname][uuid] = birth
            else:
                self._births[tname].pop(uuid, None)
            known[tname, uuid] = new
            return
        raw = self.view.raw[tname].get(uuid)
        birth = self._births[tname].get(uuid, 0)
        marker: enc.Marker | None = None
        for col in table.ordered[1:]:
            i = col.index
            if old[i] == new[i]:
                continue
            if i == 1:
                key = enc.register_key(uuid, enc.VERSION)
                put(txn, key, enc.pack_version(birth, new[1][0]))
            elif not enc.is_element_column(col.type):
                key = enc.register_key(uuid, col.name)
                put(txn, key, enc.pack_register(birth, col, new[i]))
            else:
                if marker is None:  # which elements the marker holds
                    marker = enc.unpack_marker(table, uuid, _get(m, txn, uuid))
                self._write_elements(m, tname, uuid, col, birth, marker.row[i], old[i],
                                     new[i], extras, txn, booked)
                continue
            if booked is not None:
                booked.append((tname, uuid, key, True))
        # The shown row was the raw row: the new raw row is exactly the engine's.
        if raw is old:
            known[tname, uuid] = new

    def _write_elements(self, m: Map, tname: str, uuid: str, col: Any, birth: int,
                        in_marker: tuple, old: tuple, new: tuple, extras: Any, txn: Any,
                        booked: list[tuple[str, str, str, bool]] | None) -> None:
        ktype = col.type.key.type
        if col.type.value is None:
            old_d = dict.fromkeys(old)
            new_d = dict.fromkeys(new)
            marker_keys = set(in_marker)
        else:
            old_d = dict(old)
            new_d = dict(new)
            marker_keys = {k for k, _ in in_marker}
        for k, v in new_d.items():
            if k not in old_d or old_d[k] != v:
                key = enc.element_key(uuid, col.name, enc.ADD, enc.atom_key(ktype, k))
                m.integrated.insert(txn, key, enc.pack_element(birth, col, v))
                if booked is not None:
                    booked.append((tname, uuid, key, True))
        for k in old_d:
            if k in new_d:
                continue
            ks = enc.atom_key(ktype, k)
            add = enc.element_key(uuid, col.name, enc.ADD, ks)
            if add in extras:
                _remove(m, txn, add)
                if booked is not None:
                    booked.append((tname, uuid, add, False))
            rem = enc.element_key(uuid, col.name, enc.REMOVE, ks)
            if k in marker_keys and rem not in extras:
                m.integrated.insert(txn, rem, enc.pack_element(birth, col))
                if booked is not None:
                    booked.append((tname, uuid, rem, True))

    # --- remote updates ---------------------------------------------------------------------

    def apply_update(self, payload: bytes | bytearray | memoryview, *,
                     self_contained: bool = False, pushed: bool = False) -> ApplyResult:
        """Merge a sealed update from a peer.

        ``self_contained``: the update is a full state, or a diff against a state vector
        this replica had (a pull's answer): it holds everything of its writers past that
        state vector, so whatever it deletes is in it or already here and nothing it
        follows is missing. Such an update skips the check for missing items (``_ready``):
        it may start before this replica's clock of its writer (a full state starts at 0),
        and whatever it deletes is in it or here already. Updates pushed one commit at a
        time are not self-contained.

        ``pushed``: the update is a peer's commit, pushed (gossip's): one writer's items
        (every commit has one, see ``_local_update``), checked for readiness; an update of
        several writers or of none is refused. Only a full state or a diff holds several,
        and those are self-contained; taken from a push, what such an update deletes of a
        writer not in it would go unchecked (see ``_ready``).

        Raises :class:`CorruptUpdateError` (reject the peer) or :class:`EpochMismatchError`
        (resync by full state); either way the document is untouched.
        """
        if self._burst is not None or self._held or self._held_events:
            self._write_held()  # (held commits first: see hold_commits)
        if self._unlogged:
            raise ReplicaFailedError(self._unlogged)
        try:
            schema, epoch, base, _, update = open_sealed_fields(payload)
        except CorruptUpdateError:
            self._stats.rejected_updates += 1
            raise
        if schema != self.schema_digest:
            self._stats.rejected_updates += 1
            raise CorruptUpdateError(f"update for another schema ({schema[:12]}...)")
        if epoch != self.epoch or base != self.base:
            theirs = EpochId(epoch, base)
            raise EpochMismatchError(f"update from epoch {theirs}, replica is at epoch "
                                     f"{self.epoch_id}", mine=self.epoch_id, theirs=theirs)
        try:
            # (also a writer's push: one block can wrap its clocks)
            span, deletes = check_update(update)
            if span is None and pushed:
                raise CorruptUpdateError("a pushed update holds no writer's items or several "
                                         "writers' (a push is one commit)")
        except CorruptUpdateError:
            self._stats.rejected_updates += 1
            raise
        if span is not None and not self_contained:
            if (self._holding_changes and not self._gapped and not self._parked
                    and not self._pristine and span[1] == self._clocks.get(span[0], 0)
                    and self._ready(span, deletes)):
                return self._queue_update(update, span)
            if self._queued:  # (what this update may follow or delete goes in first)
                self._flush_queued()
            if not self._ready(span, deletes):
                self._clocks = decode_state_vector(self.doc.get_state())  # the exact clocks
                if not self._ready(span, deletes):
                    # Something of this writer before it, or an item it deletes, is
                    # missing: hold it back until that arrives (see _ready).
                    self._stats.gaps += 1
                    self._park(span, _Held(update, deletes))
                    return ApplyResult(Changeset(), True, False, span)
        result = self._apply_raw(update, span)
        if self._parked:
            result = self._unpark(result)
        return result

    def _queue_update(self, update: bytes, span: tuple[int, int, int]) -> ApplyResult:
        """Take a peer's update that starts right at its writer's clock and deletes nothing
        missing (see _ready) without putting it into the document yet: it is new, follows
        no gap, and its clocks are known from its header, so its result is known now. While
        holding changes the view waits anyway; the queued updates go into the document
        together (_flush_queued), one pycrdt transaction and one set of map events for a
        burst where each update cost them again (~10 us of pycrdt's a merged update).
        Whatever looks at the document, the view or the log flushes them first."""
        self._queued.append(update)
        self._queued_spans.append(span)  # (kept for pulls once they are in: _flush_queued)
        self._queued_bytes += len(update)
        client, start, n = span
        self._clocks[client] = start + n
        self._stats.remote_updates += 1
        self._changes_pending = True
        if (len(self._queued) >= MAX_QUEUED_UPDATES
                or self._queued_bytes >= MAX_QUEUED_BYTES):
            self._flush_queued()
        return ApplyResult(Changeset(), False, True, span)

    def _flush_queued(self) -> None:
        """Put the queued updates into the document (see _queue_update); their map events
        wait for the view (_show_pending), their account goes to the log."""
        if not self._queued:
            return
        queued, self._queued, self._queued_bytes = self._queued, [], 0
        spans, self._queued_spans = self._queued_spans, []
        self._captured.clear()
        refused: list[CorruptUpdateError] = []
        done = False
        try:
            self._apply_each_to_doc(queued, refused)
            done = True
        finally:
            # Also when something else was raised (an observer's error, a bug): whatever
            # went in stays in the document, so its account goes to the log and the clocks
            # come from the document, as for a refusal.
            if refused or not done:
                # Each passed the checks a single update gets; what did not go in is pulled
                # again.
                self._stats.rejected_updates += len(refused)
                for exc in refused:
                    logger.error("%s: a queued update does not apply (%s); dropped",
                                 self.name, exc)
                self._clocks = decode_state_vector(self.doc.get_state())
                self._pending_rescan = True
                # (runs of kept updates would lead past a refused one, and an answer made
                # of them would lack it: none is answered from them)
                self._recent.clear()
            elif self.keep_recent:
                self._recent.add_all(spans, queued)
            delta = _merge(self._captured)
            self._captured.clear()
            if delta and self._log is not None:
                self._log.append(_pack([_UPDATE, self.epoch, delta]), sync=False)  # (_apply_raw)
                self._maybe_compact_log()

    def _ready(self, span: tuple[int, int, int], deletes: list[tuple[int, int, int]]) -> bool:
        """Whether a single writer's update can go into the document now.

        Not while something of its writer before it is missing: pycrdt shows such items,
        then loses track of them. Nor while an item it deletes is missing: pycrdt keeps
        that delete pending and leaves it out of every diff, while the writer's clock
        already counts, so a peer pulling from this replica would reach the same state
        vector without it (found by the long gossip convergence property).
        """
        clock = self._clocks.get
        return clock(span[0], 0) >= span[1] and (not deletes or all(
            clock(owner, 0) >= start + length for owner, start, length in deletes))

    def _advance_clocks(self, span: tuple[int, int, int]) -> None:
        """Account for a single writer's contiguous update (a local commit, or a remote one
        that did not follow a gap) without decoding the document's whole state vector."""
        client, start, n = span
        if start + n > self._clocks.get(client, 0):
            self._clocks[client] = start + n

    def _park(self, span: tuple[int, int, int], held: _Held) -> None:
        self._parked[span] = held
        self._parked_bytes += len(held.update)
        while self._parked and (len(self._parked) > self._max_parked
                                or self._parked_bytes > self._max_parked_bytes):
            _, dropped = self._parked.popitem(last=False)
            self._parked_bytes -= len(dropped.update)

    def _unpark(self, result: ApplyResult) -> ApplyResult:
        """Apply the held-back updates that no longer follow a gap."""
        progress = True
        changes = result.changes
        new = result.new
        while progress:
            progress = False
            for span in sorted(self._parked):
                if self._ready(span, self._parked[span].deletes):
                    held = self._parked.pop(span)
                    self._parked_bytes -= len(held.update)
                    more = self._apply_raw(held.update, span)
                    changes = changes.then(more.changes)
                    new = new or more.new
                    progress = True
                    break
        # (new: this update, or one it let in; a duplicate that lets none in is not)
        return ApplyResult(changes, bool(self._parked) or result.gap, new, result.span)

    def _apply_raw(self, update: bytes, span: tuple[int, int, int] | None) -> ApplyResult:
        """Apply a checked update; ``span``: its single writer's clocks, if it has one.

        What the document did not have (pycrdt's own account of the transaction, exact even
        where pycrdt held items back and integrates them now) decides whether the update
        was new, and is what goes to the log.

        Into a document nothing was ever applied to, that account is the update itself
        (less what pycrdt holds back, which the update brings back when the log is
        replayed), and the document observer is not asked for it: pycrdt encodes it
        whenever the observer is there, ~50 ms of the 27 MB full state of 100k rows. If
        nothing at all went in (the state vector is still empty: an empty update, or
        deletions of items the document lacks), there is no account, as with the observer.
        """
        if self._queued:
            self._flush_queued()
        self._captured.clear()
        # Into an empty document (a node joining from a peer's full state): no per-key
        # events, the document is read whole afterwards (_load_document).
        loading = not self._changes_pending and self._is_empty()
        n_events = len(self._events)  # (those before: held, see hold_changes)
        pristine = self._pristine
        self._pristine = False
        if loading:
            self._unobserve_maps()
        if pristine:
            self._unsubscribe_doc()
        try:
            self._apply_to_doc(update)
        except CorruptUpdateError:
            del self._events[n_events:]
            self._stats.rejected_updates += 1
            raise
        finally:
            if loading:
                self._observe_maps()
            if pristine:
                self._subscribe_doc()
        captured = self._captured
        if pristine:
            delta = update if self.doc.get_state() != b"\x00" else b""
        elif len(captured) == 1:  # (_merge's common case, inline)
            delta = captured[0]
        else:
            delta = _merge(captured)
        captured.clear()
        if not delta and len(self._events) == n_events:
            # Nothing new: a duplicate, or a diff repeating what this replica has (most
            # anti-entropy rounds). Clocks, gaps and the view are as they were.
            self._stats.duplicate_updates += 1
            return ApplyResult(Changeset(), self._gapped, False, span)
        wanted: dict[int, int] = {}
        if span is None:  # a single writer's span is known from its header
            try:
                wanted = decode_state_vector(pycrdt.get_state(update))
            except (ValueError, RuntimeError, TypeError, CorruptUpdateError):
                wanted = {}
        if delta and self._log is not None:
            # Not fsynced: the next local commit's fsync covers it, and a remote update lost
            # in a crash comes back from a peer (no local update can depend on it).
            self._log.append(_pack([_UPDATE, self.epoch, delta]), sync=False)
        if loading:
            if self._gapped:
                self._stats.rescans += 1  # what the path below counts: a full re-read
            diff = self._load_document(update if pristine else None)
            if len(update) >= TRIM_AFTER_LOAD_BYTES:
                _return_free_memory()  # the apply's and the decoding's garbage
        elif self._holding_changes:
            self._changes_pending = True
            self._pending_rescan = self._pending_rescan or self._gapped
            diff = Changeset()
        else:
            diff = None if self._gapped else self._merge_registers()
            if diff is None:
                diff = self._merge_events()
        for client, clock in wanted.items():
            if clock > self._wanted.get(client, 0):
                self._wanted[client] = clock
        if span is not None:
            client, start, n = span  # (_advance_clocks, inline: every merged update)
            if start + n > self._clocks.get(client, 0):
                self._clocks[client] = start + n
            if delta and self.keep_recent:
                self._recent.add(span, update)
        else:
            self._clocks = decode_state_vector(self.doc.get_state())
        # Clocks only grow: a client neither behind before nor in this update still is not.
        if self._behind or wanted:
            self._behind = {c for c in (*self._behind, *wanted)
                            if self._clocks.get(c, 0) < self._wanted[c]}
        gap = bool(self._behind)
        self._gapped = gap
        if delta:
            self._stats.remote_updates += 1
        else:
            self._stats.duplicate_updates += 1
        if gap:
            self._stats.gaps += 1
        if self._listeners and diff:  # (no event to build for no listener)
            self._emit(ChangeEvent(diff, None, False))
        if self._log is not None:
            self._maybe_compact_log()
        return ApplyResult(diff, gap, bool(delta), span)

    def _apply_to_doc(self, update: bytes) -> None:
        """``doc.apply_update`` in a transaction of its own (_apply_each_to_doc's, for one
        update): CorruptUpdateError if pycrdt refuses it."""
        refused: list[CorruptUpdateError] = []
        self._apply_each_to_doc((update,), refused)
        if refused:
            raise refused[0]

    def _apply_each_to_doc(self, updates: Sequence[bytes],
                           refused: list[CorruptUpdateError]) -> None:
        """``updates`` into the document one after the other in one transaction: one
        commit, one account and one event per map for all, as their merge would give,
        without pycrdt's ``merge_updates`` (~12k instructions an update, as much as applying
        it). Those pycrdt refuses are left out (their errors appended to ``refused``), the
        rest go in, even after a Rust panic (the caller then takes the clocks from the
        document). Anything else is raised, and observer errors as pycrdt's
        ``Transaction`` raises them; the transaction is committed whatever happens.

        Made on pycrdt's underlying document: pycrdt's Python ``Transaction`` around it
        costs ~1.8 us of every remote update (pycrdt 0.14 internals, as in _decode_table;
        nothing that observes the document opens a transaction)."""
        doc = self.doc
        raw = doc._doc
        try:
            txn = raw.create_transaction()
            try:
                for update in updates:
                    try:
                        raw.apply_update(txn, update)
                    except BaseException as exc:
                        try:
                            _APPLY_ERRORS.convert(exc)
                        except CorruptUpdateError as one:
                            refused.append(one)
                            continue
                        raise
            finally:
                try:
                    txn.commit()
                finally:
                    txn.drop()
        except BaseException as exc:
            _APPLY_ERRORS.convert(exc)
            raise
        if doc._exceptions:
            exceptions = tuple(doc._exceptions)
            doc._exceptions.clear()
            raise ExceptionGroup("Observer callback error", exceptions)

    # --- anti-entropy -----------------------------------------------------------------------

    def state_vector(self) -> bytes:
        self._write_held()  # (held commits first: see hold_commits)
        return self._state()

    def _state(self) -> bytes:
        """``doc.get_state()`` on pycrdt's underlying document: pycrdt's own opens and
        commits a Python ``Transaction`` around it (~5 us; the read itself ~1 us), and a
        hub reads it a few times for every pull it is sent (see _doc_clocks). pycrdt 0.14
        internals, as in _apply_to_doc."""
        raw = self.doc._doc
        txn = raw.create_transaction()
        try:
            return raw.get_state(txn)
        finally:
            try:
                txn.commit()
            finally:
                txn.drop()

    def in_sync_with(self, state_vector: bytes | bytearray | memoryview | Mapping[int, int]
                     ) -> bool:
        """Whether a peer at ``state_vector`` (encoded, or decoded: client -> clock) has
        this replica's document, as far as clocks tell: every commit moves its writer's clock
        (see :meth:`commit`), and a commit's deletions go into a document only with its items
        and the items they delete (see ``_ready``), so equal state vectors mean nothing to
        send either way. Raises :class:`CorruptUpdateError` for a malformed vector."""
        theirs = state_vector if isinstance(state_vector, Mapping) else \
            decode_state_vector(bytes(state_vector))
        return theirs == self._doc_clocks()

    def covered_by(self, clocks: Mapping[int, int]) -> bool:
        """Whether a peer at these (decoded) clocks has everything this replica has: every
        item, and so (see :meth:`in_sync_with`) every delete. A diff for it would be empty
        (pycrdt's would still walk the document and carry the whole delete set)."""
        return all(clocks.get(c, 0) >= k for c, k in self._doc_clocks().items())

    def _doc_clocks(self) -> Mapping[int, int]:
        """The document's state vector, decoded (held commits written first: see
        hold_commits). A pull is answered with three looks at it (in_sync_with, covered_by,
        diff), and between commits it does not change: decoded once per change (a Python
        pass over the bytes, ~1 us a writer), kept with the bytes it came from. Not to be
        mutated."""
        self._write_held()
        state = self._state()
        if state != self._decoded_state[0]:
            self._decoded_state = (state, decode_state_vector(state))
        return self._decoded_state[1]

    def diff(self, state_vector: bytes | bytearray | memoryview, *,
             clocks: Mapping[int, int] | None = None) -> bytes:
        """A sealed update with everything this replica has beyond a peer's state vector
        (``clocks``: the same, decoded, if the caller has it):
        the last commits that the peer lacks, merged, when this replica kept them all (see
        :mod:`crdtdb.replica.recent`), else pycrdt's diff (which repeats the whole delete
        set). Either is self-contained (see :meth:`apply_update`)."""
        self._write_held()  # (held commits first: see hold_commits)
        if self._unlogged:
            raise ReplicaFailedError(self._unlogged)
        sv = bytes(state_vector)
        if len(sv) > 64 * 1024 * 1024:
            raise CorruptUpdateError(f"state vector of {len(sv)} bytes")
        parts = self._recent.covering(decode_state_vector(sv) if clocks is None else clocks,
                                      self._doc_clocks())
        if parts is not None:
            self._stats.recent_diffs += 1
            update = _merge(parts)
        else:
            self._stats.full_diffs += 1
            with pycrdt_errors("not a state vector", "state vector"):
                update = self.doc.get_update(sv)
        return seal(self.schema_digest, self.epoch, self.client_id, update, base=self.base)

    def full_state(self) -> bytes:
        self._write_held()  # (held commits first: see hold_commits)
        if self._unlogged:
            raise ReplicaFailedError(self._unlogged)
        return seal(self.schema_digest, self.epoch, self.client_id, self.doc.get_update(),
                    base=self.base)

    # --- from the document to the view ------------------------------------------------------

    def _merge_events(self) -> Changeset:
        """The view catches up with the queued map events (a merged update's)."""
        dirty: set[RowKey] = set()
        by_row = self._drain_events(dirty)
        if self._gapped:
            # pycrdt does not report every change to items it had applied past a gap
            # (a delete of such an item comes without an event): re-read the document.
            self._rescan(dirty)
            by_row = {}
        return self._refresh(dirty, {}, by_row)

    def _merge_registers(self) -> Changeset | None:
        """:meth:`_merge_events` for the queued events of most merged updates (and of most
        bursts held by hold_changes): new values of registers (no marker, element or
        delete) of rows the view has. The same bookkeeping, rows and view change as
        _drain_events, _note_key, _refresh and _delta_row make of them, in one pass without
        their calls, per-event tuples and parsed keys (a single-column update of a
        Logical_Flow row: 206k -> 179k instructions, sims/merge_harness.py); ``None``
        (nothing done) for any other events. tests/test_replica.py checks it against
        that path.

        Events of one row (most merged updates) take the shortest way; of several rows,
        _merge_rows (a general loop here cost the one row 3k instructions)."""
        events = self._events
        if not events:
            return None
        tname = events[0][0]
        registers = self._registers[tname]
        uuid = None
        cols = []
        for t, key, action, _ in events:
            parts = key.split(enc.SEP)
            if action == "delete" or len(parts) != 2:
                return None
            u, cname = parts
            if t != tname or (uuid is not None and u != uuid):
                return self._merge_rows()
            uuid = u
            form = registers.get(cname) or self._register_column(tname, cname)
            if form is None:
                return None
            cols.append(form[0])
        assert uuid is not None
        raw = self.view.raw[tname].get(uuid)
        if raw is None:
            return None
        return self.view.update_row((tname, uuid), self._merge_row(tname, uuid, raw, cols))

    def _register_column(self, tname: str, cname: str) -> Any:
        """The register_form of the column that a key ``uuid|cname`` of ``tname`` is the
        register of (kept for the next merge), or None (no such column, or _uuid: not a
        register)."""
        col = self.schema.tables[tname].columns.get(cname)
        if col is None or col.index == 0:
            return None
        form = self._registers[tname][cname] = enc.register_form(col)
        return form

    def _merge_rows(self) -> Changeset | None:
        """:meth:`_merge_registers` for events of several rows (of any tables): compiled
        where built (encoding.register_rows: ~2/3 of its instructions were this loop's and
        its calls' to read registers), else, or where that leaves the events, the loop
        below, which books new columns too."""
        events = self._events
        found = enc.register_rows(events, self.view.raw, self._registers, self._extras,
                                  self._births)
        if found is not None:
            events.clear()
            if None in found.values():
                found = {rk: self._read_row(*rk) if row is None else row
                         for rk, row in found.items()}
            return self.view.update(found)
        raws = self.view.raw
        registers = self._registers
        #: (table, uuid) -> its raw row, then its new row as a list (None: read it whole)
        rows: dict[RowKey, Any] = {}
        row_keys: list[RowKey] = []  # each event's
        cols: list[Any] = []  # each event's column
        rk: Any = None
        for t, key, action, _ in events:
            parts = key.split(enc.SEP)
            if action == "delete" or len(parts) != 2:
                return None
            u, cname = parts
            if rk is None or rk[1] != u or rk[0] != t:  # (most events: the row before's)
                rk = (t, u)
                if rk not in rows:
                    raw = raws[t].get(u)
                    if raw is None:
                        return None
                    rows[rk] = raw
            form = registers[t].get(cname) or self._register_column(t, cname)
            if form is None:
                return None
            row_keys.append(rk)
            cols.append(form[0])
        # Taken: what _note_key books (the row's other keys), then _delta_row's new rows.
        extras = self._extras
        births = self._births
        current: Any = None
        keys: set[str] = set()
        row: list | None = None
        birth = 0
        for rk, col, (t, key, _, value) in zip(row_keys, cols, events, strict=True):
            if rk is not current:
                current = rk
                u = rk[1]
                table_extras = extras[t]
                found_keys = table_extras.get(u)
                keys = table_extras[u] = set() if found_keys is None else found_keys
                row = rows[rk]
                if type(row) is tuple:  # (its raw row: the row's first event)
                    row = rows[rk] = list(row)
                birth = births[t].get(u, 0)
            keys.add(key)
            if row is not None:
                try:
                    b, d = enc.unpack_register(col, value)
                except DecodeError:
                    row = rows[rk] = None  # (read whole below, once every key is booked)
                    continue
                if b == birth:
                    row[col.index] = d
        events.clear()
        return self.view.update({rk: self._read_row(*rk) if row is None else tuple(row)
                                 for rk, row in rows.items()})

    def _merge_row(self, tname: str, uuid: str, raw: Row, cols: list[Any]) -> Row | None:
        """_merge_registers' work for queued events (of registers of ``cols``) all of one row,
        the raw row ``raw``: the row's keys booked, the events taken; the new row."""
        events = self._events
        extras = self._extras[tname]
        keys = extras.get(uuid)
        if keys is None:
            keys = extras[uuid] = set()
        birth = self._births[tname].get(uuid, 0)
        row: list | None = list(raw)
        for col, (_, key, _, value) in zip(cols, events, strict=True):
            keys.add(key)
            if row is not None:
                try:
                    b, d = enc.unpack_register(col, value)
                except DecodeError:
                    row = None  # (read whole below, once every key is booked)
                    continue
                if b == birth:
                    row[col.index] = d
        events.clear()
        return self._read_row(tname, uuid) if row is None else tuple(row)

    def _note_key(self, tname: str, key: str, action: str, dirty: set[RowKey],
                  parsed: enc.Key | None = None) -> enc.Key | str | None:
        """Book a key's add or delete; the parsed key (a marker's is its uuid), or None.
        ``parsed``: the key parsed already (a whole document's read)."""
        k = _PARSED_KEYS.get(key) if parsed is None else parsed
        if k is None:
            try:
                k = enc.parse_key(key)
            except DecodeError as exc:
                self.conflicts.report(Conflict(ConflictKind.INVALID, tname, "?", None,
                                               str(exc)))
                return None
            if isinstance(k, str):
                dirty.add((tname, k))
                return k
            if len(_PARSED_KEYS) >= _MAX_PARSED_KEYS:
                _PARSED_KEYS.clear()
            _PARSED_KEYS[key] = k
        extras = self._extras[tname]
        if action == "delete":
            s = extras.get(k.uuid)
            if s is not None:
                s.discard(key)
                if not s:
                    del extras[k.uuid]
        else:
            s = extras.get(k.uuid)  # (not setdefault: no set made for a row that has one)
            if s is None:
                extras[k.uuid] = {key}
            else:
                s.add(key)
        dirty.add((tname, k.uuid))
        return k

    def _is_empty(self) -> bool:
        """No row in the view and no key in any table map (so nothing to diff against)."""
        return self.view.is_empty() and not any(len(m) for m in self._maps.values())

    def _load_document(self, update: bytes | None = None) -> Changeset:
        """Read every table map into the empty view in one go: the view, conflicts and
        bookkeeping that map events for every key would give (_note_key, _delta_row,
        _read_row), decoding each table's markers in one loop.

        ``update``: the only update ever applied to the document, if it is; where it is a
        compacted full state, its markers are read from its bytes (see _decode_table)."""
        t0 = time.perf_counter()
        with _gc_paused():
            diff = self._load_document_now(update)
        # (DEBUG: every replica's first update into an empty document takes this path)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: read the whole document: %d rows in %.2f s (%s marker reader)",
                         self.name, self.row_total(), time.perf_counter() - t0,
                         "compiled" if enc.COMPILED else "Python")
        return diff

    def _load_document_now(self, update: bytes | None) -> Changeset:
        found = enc.full_state_markers(update) if update is not None else None
        rows: dict[str, dict[str, Row]] = {}
        later: dict[str, tuple[list[str], list[str], dict[str, Any], dict[str, enc.Key]]] = {}
        with self.doc.transaction() as txn:
            for tname, m in self._maps.items():
                entries = found.get(tname) if found is not None else None
                rows[tname], later[tname] = self._decode_table(
                    tname, m, txn._txn, None if entries is None else (update, *entries))
        # Outside the transaction, as on the event path: whatever reports a conflict.
        dirty: set[RowKey] = set()
        for tname, (extra_keys, unplain, payloads, parsed) in later.items():
            for key in extra_keys:
                self._note_key(tname, key, "add", dirty, parsed.get(key))
            trows, extras_of = rows[tname], self._extras[tname]
            for uuid in unplain:
                extras = {k: payloads[k] for k in extras_of.get(uuid, ())}
                decoded = trows.get(uuid)
                if decoded is not None:  # (its marker read with the others: the rest on top)
                    row: Row | None = self._with_extras(tname, uuid, decoded, extras, parsed)
                else:
                    row = self._decode_row(tname, uuid, payloads[uuid], extras)
                if row is not None:
                    trows[uuid] = row
        return self.view.load(rows)

    def _decode_table(self, tname: str, m: Map, txn: Any,
                      entries: tuple[bytes, list[str], bytes] | None = None) -> tuple[
            dict[str, Row], tuple[list[str], list[str], dict[str, Any], dict[str, enc.Key]]]:
        """The rows of one table whose marker is plainly valid (what _delta_row makes of a
        marker's event, before any other key of the row), and for the rest: the other keys,
        the rows to finish outside the transaction (those with other keys, those whose
        marker the batch reader refused: decoded again, checked), in uuid order, the
        payloads both need and the other keys parsed.

        Reads through pycrdt's underlying map (``Map.integrated`` with the raw transaction),
        skipping the public accessors' per-read Python wrapping and transaction (a row with
        other keys, read by _read_row, was ~0.1 ms). Both are pycrdt internals, hence the
        pin to pycrdt 0.14 (pyproject.toml); tests/test_replica_join.py checks this path
        against the event path.

        ``entries``: the update that made the document, the table's keys in it, in order,
        and where their values lie (enc.full_state_markers); when they are all markers and
        as many as the map has (a check of that reading against pycrdt's), the markers are
        read from the update's bytes, without pycrdt's keys, a copy of each value (100k
        flows: ~0.2 s) and the sort of the keys.
        """
        integrated = m.integrated
        if entries is not None:
            update, keys, spans = entries
            if enc.SEP not in "".join(keys) and integrated.len(txn) == len(keys):
                rows, refused = enc.markers_span_reader(self.schema.tables[tname])(
                    keys, update, spans, self._births[tname])
                get = functools.partial(integrated.get, txn)
                return rows, ([], refused, {uuid: get(uuid) for uuid in refused}, {})
        keys = integrated.keys(txn)
        sep = enc.SEP
        if sep in "".join(keys):  # (a scan of their concatenation: a full state has none)
            markers = [key for key in keys if sep not in key]
            extra_keys = [key for key in keys if sep in key]
        else:
            markers, extra_keys = keys, []
        get = functools.partial(integrated.get, txn)
        payloads = {key: get(key) for key in extra_keys}
        parsed: dict[str, enc.Key] = {}
        for key in extra_keys:
            with contextlib.suppress(DecodeError):  # reported by _note_key
                k = enc.parse_key(key)
                if not isinstance(k, str):  # (a key with a separator: never a marker's)
                    parsed[key] = k
        if not markers:
            return {}, (extra_keys, [], payloads, parsed)
        # In uuid order, the order the view's rows take: View.load then copies them as is.
        markers.sort()
        read_all = enc.markers_reader(self.schema.tables[tname])
        # (map over two iterables, not over a partial: a call less per marker, ~80
        # instructions)
        rows, refused = read_all(markers, map(integrated.get, itertools.repeat(txn), markers),
                                 self._births[tname])
        with_extras = {k.uuid for k in parsed.values()}
        for uuid in refused:
            payloads[uuid] = get(uuid)
        again = with_extras.union(refused) if refused else with_extras
        unplain = [u for u in markers if u in again] if again else []
        return rows, (extra_keys, unplain, payloads, parsed)

    def _rescan(self, dirty: set[RowKey]) -> None:
        """Rebuild the key bookkeeping from the document; every row becomes dirty."""
        self._stats.rescans += 1
        for tname, m in self._maps.items():
            self._extras[tname] = {}
            for key in list(m.keys()):
                self._note_key(tname, key, "add", dirty)
            dirty.update((tname, u) for u in self.view.raw[tname])

    def _drain_events(self, dirty: set[RowKey]) -> dict[RowKey, list[_KeyEvent]]:
        """Book the queued map events; return them by row, in order."""
        events, self._events[:] = list(self._events), []
        by_row: dict[RowKey, list[_KeyEvent]] = {}
        note_key = self._note_key
        for tname, key, action, value in events:
            k = note_key(tname, key, action, dirty)
            if k is not None:
                row_key = (tname, k if isinstance(k, str) else k.uuid)
                # (not setdefault: no list made for a row's second and later events)
                found = by_row.get(row_key)
                if found is None:
                    by_row[row_key] = [(k, action, value)]
                else:
                    found.append((k, action, value))
        return by_row

    def _refresh(self, dirty: set[RowKey], known: dict[RowKey, Row | None],
                 by_row: dict[RowKey, list[_KeyEvent]] | None = None, *,
                 engine_checked: bool = False) -> Changeset:
        # Rows the engine wrote go in under the engine's own (table, uuid) key objects: the
        # view keeps its keys (reverse-reference sets), and pycrdt's copy of each uuid would
        # be a second string per row (~8 MB per 100k rows).
        changes: dict[RowKey, Row | None] = {
            key: row for key, row in known.items() if key in dirty} if known else {}
        for key in dirty:
            if key in known:
                continue
            row: Any = _FULL_READ
            events = by_row.get(key) if by_row else None
            if events is not None:
                try:
                    row = self._delta_row(key[0], key[1], events)
                except DecodeError:
                    row = _FULL_READ
            changes[key] = self._read_row(*key) if row is _FULL_READ else row
        return self.view.update(changes, engine_checked=engine_checked)

    def _delta_row(self, tname: str, uuid: str, events: list[_KeyEvent]) -> Any:
        """The row after ``events``, computed from its previous raw value and the events'
        new values alone (no document reads); ``_FULL_READ`` where that is not enough."""
        table = self.schema.tables[tname]
        births = self._births[tname]
        raw = self.view.raw[tname].get(uuid)
        birth = None if raw is None else births.get(uuid, 0)
        row: list | None = None
        for k, action, value in events:
            if isinstance(k, str):  # the marker
                if action == "delete":
                    births.pop(uuid, None)
                    raw, birth, row = None, None, None
                    continue
                if self._extras[tname].get(uuid) or action != "add":
                    return _FULL_READ
                m = enc.unpack_marker(table, uuid, value)
                birth = m.birth
                if birth:
                    births[uuid] = birth
                else:
                    births.pop(uuid, None)
                row = m.row
                continue
            if action == "delete" or birth is None:
                return _FULL_READ
            if row is None:
                if raw is None:
                    return _FULL_READ
                row = list(raw)
            col = table.columns.get(k.column)
            if col is None or col.index == 0:
                return _FULL_READ
            if k.op is None:
                b, d = enc.unpack_register(col, value)
                if b == birth:
                    row[col.index] = d
                continue
            assert k.element is not None
            b, v = enc.unpack_element(col, k.op, value)
            if b != birth:
                continue
            atom = enc.parse_atom_key(col.type.key, k.element)
            if k.op == enc.REMOVE:
                plus = enc.element_key(uuid, k.column, enc.ADD, k.element)
                if plus in self._extras[tname].get(uuid, ()):
                    continue  # added again since: still present
                row[col.index] = enc.merge_elements(col.type, row[col.index], {}, (atom,))
            else:
                row[col.index] = enc.merge_elements(col.type, row[col.index], {atom: v}, ())
        return None if row is None else tuple(row)

    def _read_row(self, tname: str, uuid: str) -> Row | None:
        m = self._maps[tname]
        marker = m.get(uuid)
        if marker is None:
            self._births[tname].pop(uuid, None)
            return None
        extras = {k: m.get(k) for k in self._extras[tname].get(uuid, ())}
        return self._decode_row(tname, uuid, marker, extras)

    def _decode_row(self, tname: str, uuid: str, marker: Any, extras: dict[str, Any]
                    ) -> Row | None:
        """A row from its marker's and other keys' payloads (None: the marker does not
        decode); its birth booked, what does not decode reported."""
        invalid: list[str] = []
        try:
            birth, row = self._decoders[tname].row(uuid, marker, extras, invalid)
            if birth:
                self._births[tname][uuid] = birth
            else:
                self._births[tname].pop(uuid, None)
        except DecodeError as exc:
            invalid.append(f"marker: {exc}")
            self._births[tname].pop(uuid, None)
            row = None
        self._report_invalid(tname, uuid, invalid)
        return row

    def _with_extras(self, tname: str, uuid: str, marker_row: Row, extras: dict[str, Any],
                     parsed: Mapping[str, enc.Key]) -> Row:
        """_decode_row's row for a marker already decoded (its birth booked) into
        ``marker_row``; ``parsed``: other keys parsed already."""
        invalid: list[str] = []
        row = self._decoders[tname].with_extras(uuid, self._births[tname].get(uuid, 0),
                                                list(marker_row), extras, invalid, parsed)
        self._report_invalid(tname, uuid, invalid)
        return row

    def _report_invalid(self, tname: str, uuid: str, invalid: list[str]) -> None:
        for problem in invalid:
            self.conflicts.report(Conflict(ConflictKind.INVALID, tname, uuid, None, problem))

    # --- compaction -------------------------------------------------------------------------

    def freeze(self) -> None:
        """Hold local writes (a compaction round is cutting this epoch): :meth:`execute`
        answers a writing transaction as blocked, :meth:`commit` raises
        :class:`ReplicaFrozenError`. Reads and remote updates go on."""
        self.frozen = True

    def thaw(self) -> None:
        """Take local writes again; listeners hear an empty change, so that a server runs
        the transactions it held."""
        if self.frozen:
            self.frozen = False
            self._write_held()  # (held commits first: see hold_commits)
            if self._changes_pending:
                self._show_pending()
            self._emit(ChangeEvent(Changeset(), None, False))

    @property
    def epoch_id(self) -> EpochId:
        return EpochId(self.epoch, self.base)

    def changes_in_epoch(self) -> int:
        """Local commits and remote updates merged since this epoch began: what memory
        grows with (pycrdt keeps every overwritten value), so what compaction is due by."""
        return self._stats.local_commits + self._stats.remote_updates - self._epoch_start

    def own_clock(self) -> int:
        """How far this replica's own writes in the current epoch reach (0: none)."""
        if self._burst is not None:
            self._close_burst()
        return self._clocks.get(self.client_id, 0)

    def rebuild(self, epoch: int | None = None, *, release_memory: bool = True) -> EpochId:
        """Start compaction epoch ``epoch`` (default: the next one) from the current view.

        Every replica that rebuilds from the same state gets a byte-identical document: the
        base is written by :data:`BASE_CLIENT_ID` in sorted order, every row as one marker of
        birth 0, with the origin (this epoch and its state vector) in the meta map. Hidden
        rows, leftover keys and all history are gone; what readers see does not change.
        Updates from another epoch are refused; replicas still in this one move to the new
        one with :meth:`adopt` (see docs/consistency.md, "Compaction"). ``release_memory``
        hands the freed heap back to the OS (``malloc_trim``; costs a walk of the heap).
        """
        self._write_held()  # (held commits first: see hold_commits)
        if self._changes_pending:
            self._show_pending()
        number = self.epoch + 1 if epoch is None else epoch
        if number <= self.epoch:
            raise ValueError(f"epoch {number} is not after the current epoch {self.epoch}")
        cut = decode_state_vector(self.doc.get_state())
        origin = (EpochOrigin(self.epoch_id, cut) if self.origin is None
                  else self.origin.next(self.epoch_id, cut))
        base = build_base(self.schema, self.view.rows, number, origin)
        digest = base_digest(base)
        if release_memory:
            # The old document goes before the new one is built: built while the old one
            # still lived, the new one's allocations end up scattered among the old one's,
            # and the freed heap around them cannot be returned (~35 MiB of 100 MiB kept
            # after 300k overwrites on 10k rows).
            self._release_doc()
            _return_free_memory()
        doc = Doc(client_id=self.client_id)
        doc.apply_update(base)
        self._enter(doc, EpochId(number, digest), base)
        del base
        if release_memory:
            _return_free_memory()
        logger.info("%s: compacted into epoch %s (%d rows)", self.name, self.epoch_id,
                    self.row_total())
        return self.epoch_id

    def adopt(self, payload: bytes | bytearray | memoryview) -> Changeset:
        """Move to a newer epoch from a peer's sealed full state; the view's changes.

        Raises :class:`StrandedError` (nothing changes) if the new epoch may lack writes of
        this replica's own that its document holds (see :func:`~crdtdb.replica.epoch.covers`:
        typically it wrote past the new base's cut). Raises
        :class:`EpochMismatchError` if the state is not from a newer epoch, and
        :class:`CorruptUpdateError` if it fails its checks.
        """
        self._write_held()  # (held commits first: see hold_commits)
        if self._changes_pending:
            self._show_pending()
        sealed = open_sealed(payload)
        if sealed.schema != self.schema_digest:
            raise CorruptUpdateError(f"state for another schema ({sealed.schema[:12]}...)")
        check_update(sealed.update)
        theirs = EpochId(sealed.epoch, sealed.base)
        if theirs <= self.epoch_id:
            raise EpochMismatchError(f"state of epoch {theirs} is not newer than "
                                     f"{self.epoch_id}", mine=self.epoch_id, theirs=theirs)
        doc = Doc(client_id=self.client_id)
        with pycrdt_errors("full state does not apply", "full state"):
            doc.apply_update(sealed.update)
        raw_origin = doc.get(META_MAP, type=Map).get(ORIGIN_KEY)
        if raw_origin is None:
            raise CorruptUpdateError(f"state of epoch {theirs} names no origin")
        origin = EpochOrigin.unpack(raw_origin, theirs.number)
        if decode_state_vector(doc.get_state()).get(self.client_id, 0):
            # Only this replica writes under its id, and it never was in that epoch.
            raise CorruptUpdateError(f"state of epoch {theirs} holds writes of this "
                                     f"replica's client id {self.client_id}")
        own, left = self.own_clock(), self.epoch_id
        redo: list[list[Any]] = []
        if not covers(origin, left, self.origin, self.client_id, own):
            left_at = origin.cut_of(left)
            cut = 0 if left_at is None else left_at.get(self.client_id, 0)
            if left_at is None or self._own_writes is None:
                raise StrandedError(
                    f"{self.name}: epoch {theirs} was cut from {origin.previous} at clock "
                    f"{cut} of this replica, which is in epoch {left} and wrote up to clock "
                    f"{own} there: moving could lose writes of its own, so it stays",
                    mine=left, theirs=theirs)
            redo = sorted([clock, t, u, what] for (t, u), writes in self._own_writes.items()
                          for clock, what in writes if clock > cut)
        before = self.view.rows
        self._enter(doc, theirs, sealed.update)
        diff = _difference(self.schema, before, self.view.rows)
        if redo:
            diff = diff.then(self._redo(before, redo))
            self.recommits.append((left, own, theirs))
            # (a row the move took away and the redo brought back as it was: no change)
            diff = Changeset({t: {u: ch for u, ch in rows.items() if ch.old != ch.new}
                              for t, rows in diff.tables.items()})
        logger.info("%s: moved from epoch %s to %s (%d rows, %d changed)", self.name,
                    left, theirs, self.row_total(), diff.n_rows())
        if diff:  # what readers see change, once (the writes made again included)
            self._emit(ChangeEvent(diff, None, False))
        return diff

    def _redo(self, before: Any, redo: list[list[Any]]) -> Changeset:
        """Make again, in the new epoch, this replica's writes past its cut: each row or
        column it wrote takes the value it had here before the move (where a row is gone on
        either side, the delete stands). They are new writes: they win over concurrent ones
        made in the new epoch (docs/consistency.md, "Moving to a newer epoch")."""
        touched: dict[RowKey, Any] = {}
        for _, tname, uuid, what in redo:
            if isinstance(what, list):
                what = frozenset(what)
            prev = touched.get((tname, uuid))
            if isinstance(what, frozenset) and isinstance(prev, frozenset):
                what = prev | what
            elif isinstance(what, frozenset) and prev == _INSERT:
                what = _INSERT
            touched[tname, uuid] = what
        cs = Changeset()
        rows = self.view.rows
        for (tname, uuid), what in touched.items():
            mine, now = before.get_row(tname, uuid), rows.get_row(tname, uuid)
            if what == _DELETE:
                change = RowChange(now, None) if mine is None and now is not None else None
            elif mine is None:
                change = None  # deleted here after this replica wrote it: the delete stands
            elif what == _INSERT:
                change = RowChange(now, mine) if now != mine else None
            elif now is None:
                change = None
            else:
                merged = list(now)
                for i in what:
                    merged[i] = mine[i]
                change = RowChange(now, tuple(merged)) if tuple(merged) != now else None
            if change is not None:
                cs.tables.setdefault(tname, {})[uuid] = change
        logger.warning("%s: %d rows written past the cut made again in epoch %s (%d "
                       "changed)", self.name, len(touched), self.epoch_id, cs.n_rows())
        if not cs:
            return cs
        frozen, self.frozen = self.frozen, False  # (a round may hold writes: not these)
        try:
            return self.commit(cs, tell=False, engine_checked=False)
        finally:
            self.frozen = frozen

    def _enter(self, doc: Doc, epoch: EpochId, update: bytes | None = None) -> None:
        """Make ``doc`` (a base, or a newer epoch's full state: ``update``, the only one
        applied to it) the document of ``epoch``."""
        self.epoch, self.base = epoch.number, epoch.base
        self._stats.epoch = epoch.number
        self._epoch_start = self._stats.local_commits + self._stats.remote_updates
        self._own_writes = {}
        self._wanted.clear()
        self._behind.clear()
        self._gapped = False
        self._parked.clear()
        self._parked_bytes = 0
        self._reset_doc(doc, update)
        if self._log is not None:
            try:
                self._rewrite_log()
            except (OSError, StorageError) as exc:
                # The log still holds the old epoch, whole: nothing of the new one may go
                # into it (it would not replay). Writes are refused until the replica is
                # reopened, from the old epoch; peers' updates go on, in memory only.
                self._failed = (f"{self.name}: the log could not be rewritten for epoch "
                                f"{epoch} ({exc}); reopen")
                log, self._log = self._log, None
                log.close()
                raise ReplicaFailedError(self._failed) from exc

    def _rewrite_log(self) -> None:
        assert self._log is not None
        self._write_held()  # (held commits first: see hold_commits)
        header = _pack([_HEADER, {"schema": self.schema_digest, "client_id": self.client_id,
                                  "format": LOG_FORMAT}])
        own = None if self._own_writes is None else [
            [clock, t, u, what] for (t, u), writes in self._own_writes.items()
            for clock, what in writes]
        self._log.rewrite([header, _pack([_STATE, self.epoch, self.doc.get_update(),
                                          self.base, own])])
        self._snapshot_bytes = self._log.statistics().bytes
        self._log_bytes = None

    def _maybe_compact_log(self, appended: int = 0) -> None:
        """Compact the log once it outgrew its last snapshot. The log's size is only read
        (``statistics()``, an object per call) once what was appended since the last read,
        counted high, could have taken it past the threshold: not on every commit."""
        if self._log is None:
            return
        threshold = max(self._compact_min_bytes, self._compact_ratio * self._snapshot_bytes)
        if appended and self._log_bytes is not None:
            self._appended_bytes += appended + _RECORD_SLACK
            if self._log_bytes + self._appended_bytes < threshold:
                return
        size = self._log.statistics().bytes
        self._log_bytes, self._appended_bytes = size, 0
        if size < threshold:
            return
        t0 = time.perf_counter()
        try:
            self._rewrite_log()
        except (OSError, StorageError):
            logger.warning("%s: log compaction failed; will retry later", self.name,
                           exc_info=True)
            self._snapshot_bytes = size
            return
        logger.info("%s: log compacted from %d to %d bytes in %.2f s", self.name, size,
                    self._snapshot_bytes, time.perf_counter() - t0)

    # --- misc -------------------------------------------------------------------------------

    def statistics(self) -> ReplicaStatistics:
        self._write_held()  # (held commits first: see hold_commits)
        s = dataclasses.replace(self._stats)
        s.rows = self.row_total()
        s.hidden_rows = len(self.view.hidden())
        s.log_bytes = self._log.statistics().bytes if self._log is not None else 0
        s.conflicts = self.conflicts.counts()
        return s

    def close(self) -> None:
        self._write_held()  # (held commits first: see hold_commits)
        if self._changes_pending:
            self._show_pending()
        self._unsubscribe()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_base(schema: DatabaseSchema, rows: Any, number: int = 1,
               origin: EpochOrigin | None = None) -> bytes:
    """The deterministic base document of epoch ``number`` holding ``rows`` (a Snapshot),
    cut at ``origin``."""
    doc = Doc(client_id=BASE_CLIENT_ID)
    maps = {t: doc.get(t, type=Map) for t in sorted(schema.tables)}
    meta = doc.get(META_MAP, type=Map)
    with doc.transaction():
        if origin is not None:
            meta[ORIGIN_KEY] = origin.pack(number)
        for tname in sorted(schema.tables):
            table = schema.tables[tname]
            m = maps[tname]
            for uuid, row in sorted(rows.iter_rows(tname)):
                m[uuid] = enc.pack_marker(table, 0, row)
    return doc.get_update()


_FULL_READ = object()
#: A map event of one row: the parsed key (a marker's is its uuid), action, new value.
_KeyEvent = tuple[enc.Key | str, str, Any]
#: Column and element keys parsed lately (a chassis's report changes the same two registers
#: every time): key -> Key, emptied when full. Markers' keys (uuids) are not kept.
_PARSED_KEYS: dict[str, enc.Key] = {}
_MAX_PARSED_KEYS = 16384


def _gc_paused() -> contextlib.AbstractContextManager[None]:
    """No cyclic garbage collection inside: reading a whole document allocates about a
    million containers (rows, datums) and no garbage, and the collections those allocations
    trigger walk them again and again (decoding 100k Logical_Flow markers: 0.58-0.60 s of
    CPU with collection paused, 0.63-0.66 s without). Afterwards they go to the oldest
    generation unexamined (``promote``): otherwise the young collection that the next
    allocation triggers walks all of them at once, inside the join (100k rows: join
    1.23-1.28 s -> 1.09-1.13 s); the walk is left to the next full collection (its first
    one after a join takes ~0.11 s instead of ~0.055 s)."""
    return collector_paused(promote=True)


def _return_free_memory() -> None:
    """Give freed heap back to the OS (glibc keeps it otherwise): an old document's, or
    what pycrdt and the decoding free after a whole document is read (100k rows: ~10 MiB,
    in ~1 ms of CPU)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None (another libc), looked up once among the symbols
    the process already has (libc is one of them): not with ``ctypes.util.find_library``,
    which runs ``ldconfig`` in a subprocess: a fork of the whole process, ~6 ms of wall
    time inside a joining node's first trim at 200 MB (0.08 ms this way)."""
    import ctypes

    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # AttributeError: not glibc
        return None


_APPLY_ERRORS = pycrdt_errors("update does not apply", "update")


def _merge(updates: list[bytes]) -> bytes:
    """One update with the effect of ``updates`` (empty for none)."""
    if len(updates) <= 1:
        return updates[0] if updates else b""
    return pycrdt.merge_updates(*updates)


def _get(m: Map, txn: Any, key: str) -> Any:
    """``m[key]`` in the underlying transaction ``txn`` (KeyError if missing, as there)."""
    try:
        return m.integrated.get(txn, key)
    except ValueError:  # (pycrdt's underlying map says "Key error")
        raise KeyError(key) from None


def _remove(m: Map, txn: Any, key: str) -> None:
    """``del m[key]`` in the underlying transaction ``txn`` (KeyError if missing, as there:
    the underlying map would say nothing)."""
    integrated = m.integrated
    if not integrated.has(txn, key):
        raise KeyError(key)
    integrated.remove(txn, key)


#: More than a log adds to a record of its own (framing: 16 bytes in RecordLog).
_RECORD_SLACK = 64


#: One packer for every log record (``packb`` makes a Packer per call); see encoding._PACKER.
_LOG_PACKER = msgpack.Packer(use_bin_type=True)


def _pack(obj: Any) -> bytes:
    return _LOG_PACKER.pack(obj)  # type: ignore[no-any-return]


def _tracked(entries: list[list[Any]] | None, own: dict[tuple[str, str], list[list[Any]]]
             ) -> dict[tuple[str, str], list[list[Any]]] | None:
    """Add ``[clock, table, uuid, what]`` entries to a replica's ``_own_writes``: a change
    of the same kind as the row's last one (the same columns, or fewer) only moves that
    one's clock, so rewriting a column again and again costs nothing. None (no longer
    tracked) past MAX_TRACKED_WRITES rows."""
    if entries is None:
        return None
    for clock, table, uuid, what in entries:
        writes = own.get((table, uuid))
        if writes is None:
            if len(own) >= MAX_TRACKED_WRITES:
                return None
            own[table, uuid] = [[clock, what]]
            continue
        last = writes[-1]
        if last[1] == what or (isinstance(what, list) and isinstance(last[1], list)
                               and set(what) <= set(last[1])):
            last[0] = clock
        elif len(writes) < 4:
            writes.append([clock, what])
        else:  # bounded: one entry for the row, at the latest clock (made again whole if
            # past a cut, a little more than needed but nothing less)
            kinds = [w[1] for w in writes] + [what]
            if what == _DELETE or _INSERT in kinds:
                merged: Any = what if what == _DELETE else _INSERT
            else:
                merged = sorted({i for k in kinds if isinstance(k, list) for i in k})
            own[table, uuid] = [[clock, merged]]
    return own


def _difference(schema: DatabaseSchema, before: Any, after: Any) -> Changeset:
    """The changes from one snapshot of the view to another (for monitors)."""
    out = Changeset()
    for tname in schema.tables:
        old = dict(before.iter_rows(tname))
        changes: dict[str, RowChange] = {}
        for uuid, row in after.iter_rows(tname):
            was = old.pop(uuid, None)
            if was != row:
                changes[uuid] = RowChange(was, row)
        for uuid, row in old.items():
            changes[uuid] = RowChange(row, None)
        if changes:
            out.tables[tname] = changes
    return out


def _read_log(log: RecordLog, schema: DatabaseSchema
              ) -> tuple[dict[str, Any] | None, int, bytes, list[bytes],
                         list[list[Any]] | None]:
    """The header, epoch, base digest, updates to apply, and the rows written here in the
    epoch (``_own_writes``; None if a record lacks them)."""
    header: dict[str, Any] | None = None
    epoch = 0
    base = b""
    updates: list[bytes] = []
    own: list[list[Any]] | None = []
    digest = schema_digest(schema)
    for n, payload in enumerate(log.replay()):
        try:
            rec = msgpack.unpackb(payload, raw=False, max_ext_len=0)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise DecodeError(f"{log.path}: record {n} is not msgpack: {exc}") from None
        kind = rec[0] if isinstance(rec, list) and rec else None
        if n == 0:
            if kind != _HEADER or not isinstance(rec[1], dict):
                raise DecodeError(f"{log.path}: does not start with a replica header")
            header = rec[1]
            if header.get("schema") != digest:
                raise StorageError(f"{log.path}: written for another schema of {schema.name}")
            fmt = header.get("format", 1)
            if type(fmt) is not int or fmt > LOG_FORMAT:
                raise StorageError(f"{log.path}: written in format {fmt!r}, not {LOG_FORMAT} "
                                   "or before")
        elif kind == _STATE:
            epoch = rec[1]
            updates = [rec[2]]
            base = rec[3] if len(rec) > 3 else b""
            own = rec[4] if len(rec) > 4 else None
        elif kind == _UPDATE:
            if rec[1] != epoch:
                raise DecodeError(f"{log.path}: record {n} is from epoch {rec[1]}, "
                                  f"log is at {epoch}")
            updates.append(rec[2])
            if len(rec) > 3:  # a local commit: its rows (None: no longer tracked)
                own = None if rec[3] is None or own is None else own + rec[3]
        else:
            raise DecodeError(f"{log.path}: record {n} has unknown kind {kind!r}")
    return header, epoch, base, updates, own
