"""An append-only, checksummed log of byte records: what makes a commit durable.

Any layer that must not lose what it acknowledged (the OVSDB store's changesets, later the
CRDT replica's updates) appends its records here, and reads them back with :meth:`replay`
after a restart. The log knows nothing about what a record means.

File format (all integers little-endian)::

    header  magic b"crdtdbRL" (8 bytes) | u16 version (1) | u16 flags (0) | u32 crc32 of those 12
    record  u32 word | u32 crc32(payload) | u32 crc32(the 8 bytes before) | payload
            word = payload length (bits 0-30) | MORE (bit 31: next record is in the same batch)

Why it is shaped this way:

* **The record header has its own checksum** (4 bytes more than a bare length + CRC). A
  damaged length word is caught before it is trusted, and after damage the reader can look
  for the next valid record at every byte offset by checking 8 bytes, instead of hashing a
  payload of whatever length the garbage claims (which makes that search quadratic). A run
  of zeros, what a file extended by a crash often holds, never passes: the header CRC of an
  all-zero header is not zero.
* **Batches are atomic.** :meth:`RecordLog.append_many` marks every record but the last with
  MORE; after a crash a batch replays whole or not at all, so a caller may split one logical
  commit over several bounded-size records.
* **zlib.crc32** (IEEE CRC-32) rather than CRC-32C: it is in the standard library, runs at
  about 3 GB/s here (far from the bottleneck next to an fsync), and its error detection is as
  good for this use: every burst of up to 32 bits, random damage missed with odds of 2**-32.
  The one well-kept CRC-32C package on PyPI (``crc32c``) is LGPL and a native build; its
  speed would buy nothing.

Recovery on :meth:`RecordLog.open` scans the whole file:

* a torn or partial **last** record or batch (a crash mid-append: the tail holds a prefix of
  what was written, zeros or garbage) is truncated away with a warning. Nothing acknowledged
  is lost, because an append is acknowledged only after its fsync and the tail is, by
  construction, what came after the last fsync;
* a record that fails its checksum while a **valid record follows** it is corruption of data
  that was acknowledged: :class:`CorruptLogError` names its offset and nothing is skipped.
  The operator decides; reopening with ``discard_corrupt_tail=True`` drops everything from
  that offset on.

One case errs on the side of stopping: a crash in the middle of a multi-page batch, on a
file system that persists the pages of one write out of order, can leave a hole before valid
(never acknowledged) records. It is reported as corruption rather than guessed at.

Writes use ``os.pwrite`` at the known end of the log (looping over partial writes) and then
``os.fdatasync`` (``F_FULLFSYNC`` on macOS, where fsync does not reach the disk). A failed
write is cut back off the file; a failed fsync leaves the page cache in an unknown state
(the "fsyncgate" lesson), so the log refuses every further write until it is reopened.
The log holds an exclusive ``flock`` so that two processes never append to one file.
Not thread-safe: one owner calls it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import re
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from crdtdb.errors import CrdtdbError

logger = logging.getLogger(__name__)

MAGIC = b"crdtdbRL"
VERSION = 1
_HEADER_BODY = struct.Struct("<8sHH")
_HEADER = struct.Struct("<8sHHI")
HEADER_SIZE = _HEADER.size  # 16
_RECORD = struct.Struct("<III")
_RECORD_BODY = struct.Struct("<II")
RECORD_OVERHEAD = _RECORD.size  # 12
_MORE = 0x8000_0000
_LENGTH_MASK = 0x7FFF_FFFF
#: Largest payload the format can describe (the length word keeps one bit for MORE).
FORMAT_MAX_RECORD_BYTES = _LENGTH_MASK
#: Default bound on one record: it bounds the memory a damaged length word can make the
#: reader ask for, and catches a runaway writer. Split bigger data over a batch.
DEFAULT_MAX_RECORD_BYTES = 64 * 1024 * 1024
#: The temporary file :meth:`RecordLog.rewrite` builds next to the log.
REWRITE_SUFFIX = ".rewrite"
_SCAN_CHUNK = 1 << 20
_CRC_CHUNK = 1 << 22
_HEAD_CRC = struct.Struct("<I")
_ZERO_RUN = re.compile(rb"\x00{%d,}" % RECORD_OVERHEAD)
_FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", None)


class StorageError(CrdtdbError):
    """Base class of the storage layer's errors."""


class CorruptLogError(StorageError):
    """The log holds damaged data that is not a torn tail: acknowledged records may be lost.

    ``offset`` is where the damage starts; ``next_valid`` is the offset of a valid record
    found after it (``None`` when the damage is not about a record, e.g. a bad file header).
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str,
                 next_valid: int | None = None):
        self.path = str(path)
        self.offset = offset
        self.reason = reason
        self.next_valid = next_valid
        msg = f"{self.path}: corrupt at offset {offset}: {reason}"
        if next_valid is not None:
            msg += (f"; a valid record follows at offset {next_valid}, so this is not a torn "
                    "tail (reopen with discard_corrupt_tail=True to drop everything from "
                    f"offset {offset} on)")
        super().__init__(msg)


class RecordTooLargeError(StorageError):
    """A record is bigger than ``max_record_bytes`` (when appending, or found in the file)."""


class LogFailedError(StorageError):
    """An earlier fsync or cleanup failed: what is on disk is unknown until the log is reopened.
    """


class LogLockedError(StorageError):
    """Another open log (in this or another process) holds the file."""


@dataclass(frozen=True, slots=True)
class LogStatistics:
    #: Complete records in the log (recovered at open, plus appended since).
    records: int
    #: Complete batches (an :meth:`RecordLog.append` is a batch of one).
    batches: int
    #: Size of the file in bytes, header included.
    bytes: int
    #: fsync/fdatasync calls since the log was opened.
    fsyncs: int
    #: Bytes of torn tail cut off when the log was opened.
    recovered_bytes: int
    #: Completed :meth:`RecordLog.rewrite` calls since the log was opened.
    rewrites: int


def _header() -> bytes:
    body = _HEADER_BODY.pack(MAGIC, VERSION, 0)
    return body + struct.pack("<I", zlib.crc32(body))


def _frame(payload: bytes | bytearray | memoryview, more: bool) -> bytes:
    """The record header for ``payload``."""
    body = _RECORD_BODY.pack(len(payload) | (_MORE if more else 0), zlib.crc32(payload))
    return body + struct.pack("<I", zlib.crc32(body))


def _fsync(fd: int, *, metadata: bool = False) -> None:
    """Data to stable storage: fdatasync for appends (it still flushes the new size), a full
    fsync for a new file (``metadata``), F_FULLFSYNC where plain fsync stops at the drive's
    cache (macOS)."""
    if _FULLFSYNC is not None:  # pragma: no cover - macOS
        fcntl.fcntl(fd, _FULLFSYNC)
    elif metadata or not hasattr(os, "fdatasync"):
        os.fsync(fd)
    else:
        os.fdatasync(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite until every byte is written: a short write is not an error, only a retry."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:  # pragma: no cover - pwrite returns >0 or raises
            raise OSError(errno.EIO, "pwrite wrote nothing")
        view = view[n:]
        offset += n


def _lock(fd: int, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LogLockedError(f"{path} is open elsewhere (flock held)") from None


class RecordLog:
    """An open record log. Create one with :meth:`open`."""

    def __init__(self, path: Path, fd: int, end: int, *, max_record_bytes: int,
                 records: int, batches: int, recovered_bytes: int):
        self.path = path
        self.max_record_bytes = max_record_bytes
        self._fd: int | None = fd
        self._end = end
        self._records = records
        self._batches = batches
        self._recovered = recovered_bytes
        self._fsyncs = 0
        self._rewrites = 0
        self._unsynced = False
        self._failed: str | None = None

    # --- opening and recovery -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *,
             max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, create: bool = True,
             discard_corrupt_tail: bool = False) -> Self:
        """Open (or create) the log at ``path``, recovering from a crash if need be.

        Raises :class:`CorruptLogError` for damage that is not a torn tail (unless
        ``discard_corrupt_tail``), :class:`RecordTooLargeError` for a valid record above
        ``max_record_bytes``, :class:`LogLockedError` when the file is already open,
        ``FileNotFoundError`` when it is missing and ``create`` is false.
        """
        if not 0 < max_record_bytes <= FORMAT_MAX_RECORD_BYTES:
            raise ValueError(f"max_record_bytes must be in 1..{FORMAT_MAX_RECORD_BYTES}")
        path = Path(path)
        if not path.exists():
            if not create:
                raise FileNotFoundError(errno.ENOENT, "no such record log", str(path))
            cls._create(path)
        fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            _lock(fd, path)
            stale = path.with_name(path.name + REWRITE_SUFFIX)
            if stale.exists():
                # A rewrite that crashed before its rename: the log is still the old one.
                logger.warning("%s: removing %s left by an interrupted rewrite", path,
                               stale.name)
                stale.unlink()
            return cls._recover(path, fd, max_record_bytes, discard_corrupt_tail)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _create(path: Path) -> None:
        """Write the header to a temporary file and rename it into place, so that a log file
        with a partial header never exists."""
        tmp = path.with_name(path.name + REWRITE_SUFFIX)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                     0o644)
        try:
            _write_all(fd, _header(), 0)
            _fsync(fd, metadata=True)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path.parent)

    @classmethod
    def _recover(cls, path: Path, fd: int, max_record_bytes: int,
                 discard_corrupt_tail: bool) -> Self:
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            raise CorruptLogError(path, 0, f"file of {size} bytes is too short for a header")
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as m:
            magic, version, _flags, crc = _HEADER.unpack_from(m, 0)
            if magic != MAGIC:
                raise CorruptLogError(path, 0, "not a crdtdb record log (bad magic)")
            if crc != zlib.crc32(m[:_HEADER_BODY.size]):
                raise CorruptLogError(path, 0, "file header checksum mismatch")
            if version != VERSION:
                raise StorageError(f"{path}: record log version {version} is not supported "
                                   f"(this build reads version {VERSION})")
            scanner = _Scanner(m, size, max_record_bytes, path)
            off = HEADER_SIZE
            records = batches = pending = 0
            batch_start = off
            bad: tuple[int, str, int | None] | None = None
            while off < size:
                status, length, more = scanner.check(off)
                if status is not None:
                    bad = (off, status, scanner.find_valid(off, length))
                    break
                if not pending:
                    batch_start = off
                pending += 1
                off += RECORD_OVERHEAD + length
                if not more:
                    records += pending
                    batches += 1
                    pending = 0
        end = batch_start if pending else off
        if bad is not None:
            bad_off, reason, next_valid = bad
            if next_valid is not None:
                if not discard_corrupt_tail:
                    raise CorruptLogError(path, bad_off, reason, next_valid)
                logger.error("%s: corrupt record at offset %d (%s) followed by valid data at "
                             "%d; discarding %d bytes from offset %d as asked",
                             path, bad_off, reason, next_valid, size - end, end)
            else:
                logger.warning("%s: torn tail at offset %d (%s): truncating %d bytes "
                               "(an append that a crash interrupted; it was never "
                               "acknowledged)", path, bad_off, reason, size - end)
        elif pending:
            logger.warning("%s: incomplete batch of %d records at offset %d: truncating "
                           "%d bytes (an append_many that a crash interrupted)",
                           path, pending, batch_start, size - end)
        if end < size:
            os.ftruncate(fd, end)
            _fsync(fd, metadata=True)
        return cls(path, fd, end, max_record_bytes=max_record_bytes, records=records,
                   batches=batches, recovered_bytes=size - end)

    # --- writing --------------------------------------------------------------------------

    def append(self, payload: bytes | bytearray | memoryview, *, sync: bool = True) -> int:
        """Append one record; durable when this returns if ``sync``. Returns its offset."""
        return self.append_many((payload,), sync=sync)

    def append_many(self, payloads: Iterable[bytes | bytearray | memoryview], *,
                    sync: bool = True) -> int:
        """Append records as one atomic batch with a single write and a single fsync.

        After a crash the batch replays whole or not at all. Returns the offset of its first
        record. An empty batch writes nothing (but still syncs earlier unsynced appends).
        On a write error the partial batch is cut off again and the log stays usable.
        """
        fd = self._writable()
        items = list(payloads)
        if not items:
            if sync:
                self.sync()
            return self._end
        parts: list[bytes | bytearray | memoryview] = []
        last = len(items) - 1
        for i, payload in enumerate(items):
            if len(payload) > self.max_record_bytes:
                raise RecordTooLargeError(f"record of {len(payload)} bytes exceeds "
                                          f"max_record_bytes={self.max_record_bytes}")
            head = _frame(payload, more=i < last)
            parts.append(head)
            parts.append(payload)
        data = b"".join(parts)
        start = self._end
        try:
            _write_all(fd, data, start)
        except BaseException:
            self._cut_back(fd, start)
            raise
        self._end = start + len(data)
        self._records += len(items)
        self._batches += 1
        self._unsynced = True
        if sync:
            self.sync()
        return start

    def sync(self) -> None:
        """fsync what earlier ``sync=False`` appends wrote."""
        fd = self._writable()
        if not self._unsynced:
            return
        try:
            _fsync(fd)
        except BaseException as exc:
            self._failed = f"fsync failed: {exc!r}"
            raise
        self._fsyncs += 1
        self._unsynced = False

    def _cut_back(self, fd: int, end: int) -> None:
        """Remove a partial write so later appends don't follow garbage (which would look
        like corruption in the middle of the log)."""
        try:
            os.ftruncate(fd, end)
        except BaseException as exc:
            self._failed = f"could not cut back a failed write: {exc!r}"

    def rewrite(self, records: Iterable[bytes | bytearray | memoryview]) -> None:
        """Replace the whole log with ``records`` (each its own batch): compaction.

        Builds a new file beside the log, fsyncs it, renames it over the log and fsyncs the
        directory: a crash at any point leaves either the old log or the new one, never a
        mix. If ``records`` raises, the log is left as it was.
        """
        old_fd = self._writable()
        self.sync()
        tmp = self.path.with_name(self.path.name + REWRITE_SUFFIX)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                     0o644)
        try:
            off = 0
            buf = bytearray(_header())
            n = 0
            for payload in records:
                if len(payload) > self.max_record_bytes:
                    raise RecordTooLargeError(f"record of {len(payload)} bytes exceeds "
                                              f"max_record_bytes={self.max_record_bytes}")
                head = _frame(payload, more=False)
                buf += head
                buf += payload
                n += 1
                if len(buf) >= _SCAN_CHUNK:
                    _write_all(fd, buf, off)
                    off += len(buf)
                    buf.clear()
            _write_all(fd, buf, off)
            off += len(buf)
            _fsync(fd, metadata=True)
            self._fsyncs += 1
            _lock(fd, tmp)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        self._fd = fd
        os.close(old_fd)
        self._end = off
        self._records = self._batches = n
        self._rewrites += 1
        try:
            fsync_dir(self.path.parent)
        except BaseException as exc:
            self._failed = f"directory fsync after rewrite failed: {exc!r}"
            raise
        self._fsyncs += 1

    def _writable(self) -> int:
        if self._fd is None:
            raise StorageError(f"{self.path}: log is closed")
        if self._failed is not None:
            raise LogFailedError(f"{self.path}: {self._failed}; reopen the log")
        return self._fd

    # --- reading --------------------------------------------------------------------------

    def replay(self) -> Iterator[bytes]:
        """Every record's payload, oldest first (up to the end of the log at the call)."""
        for batch in self.replay_batches():
            yield from batch

    def replay_batches(self) -> Iterator[list[bytes]]:
        """Records grouped by the batch they were appended in, oldest first.

        Checksums are verified again: a mismatch now means the file changed under the log.
        """
        if self._fd is None:
            raise StorageError(f"{self.path}: log is closed")
        end = self._end
        if end <= HEADER_SIZE:
            return
        with mmap.mmap(self._fd, end, prot=mmap.PROT_READ) as m:
            scanner = _Scanner(m, end, self.max_record_bytes, self.path)
            off = HEADER_SIZE
            batch: list[bytes] = []
            while off < end:
                status, length, more = scanner.check(off)
                if status is not None:
                    raise CorruptLogError(self.path, off, f"{status} (the file changed "
                                          "after it was opened)")
                start = off + RECORD_OVERHEAD
                batch.append(m[start:start + length])
                off = start + length
                if not more:
                    yield batch
                    batch = []

    # --- misc -----------------------------------------------------------------------------

    def statistics(self) -> LogStatistics:
        return LogStatistics(records=self._records, batches=self._batches, bytes=self._end,
                             fsyncs=self._fsyncs, recovered_bytes=self._recovered,
                             rewrites=self._rewrites)

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        """Sync unsynced appends and release the file. Idempotent."""
        if self._fd is None:
            return
        try:
            if self._unsynced and self._failed is None:
                self.sync()
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"{self._end} bytes"
        return f"<RecordLog {self.path} {state}>"


class _Scanner:
    """Checks records in a mapped log and, after a bad one, looks for valid data beyond it."""

    def __init__(self, m: mmap.mmap, size: int, max_record_bytes: int, path: Path):
        self.m = m
        self.size = size
        self.max = max_record_bytes
        self.path = path

    def check(self, off: int) -> tuple[str | None, int, bool]:
        """``(problem or None, payload length, MORE flag)`` for the record at ``off``."""
        m, size = self.m, self.size
        if size - off < RECORD_OVERHEAD:
            return f"{size - off} bytes left, too few for a record header", 0, False
        word, crc, head_crc = _RECORD.unpack_from(m, off)
        if zlib.crc32(m[off:off + 8]) != head_crc:
            return "record header checksum mismatch", 0, False
        length = word & _LENGTH_MASK
        start = off + RECORD_OVERHEAD
        if start + length > size:
            return (f"record of {length} bytes runs past the end of the file "
                    f"({size - start} bytes left)"), length, False
        if length > self.max:
            raise RecordTooLargeError(
                f"{self.path}: record of {length} bytes at offset {off} exceeds "
                f"max_record_bytes={self.max}; reopen with a larger limit")
        if _crc_at(m, start, length) != crc:
            return "payload checksum mismatch", length, False
        return None, length, bool(word & _MORE)

    def valid_at(self, p: int) -> bool:
        m, size = self.m, self.size
        if size - p < RECORD_OVERHEAD:
            return False
        word, crc, head_crc = _RECORD.unpack_from(m, p)
        if zlib.crc32(m[p:p + 8]) != head_crc:
            return False
        length = word & _LENGTH_MASK
        start = p + RECORD_OVERHEAD
        return start + length <= size and _crc_at(m, start, length) == crc

    def find_valid(self, bad: int, bad_length: int) -> int | None:
        """Offset of the first valid record after the bad one at ``bad``, if any.

        First tries where the next record is if only the payload was damaged (the common
        case of corruption), then every byte offset: a damaged header hides the next
        record's position. That scan stops at the first valid record, so it covers at most
        one record in a corrupt log, or the torn tail (the last, unacknowledged write).
        """
        hint = bad + RECORD_OVERHEAD + bad_length
        if bad_length and hint < self.size and self.valid_at(hint):
            first = self._scan(bad + 1, hint)  # report the first, which may be earlier
            return hint if first is None else first
        return self._scan(bad + 1, self.size)

    def _scan(self, start: int, stop: int) -> int | None:
        """First valid record starting in ``[start, stop)``.

        Runs of zero bytes (what a crash often leaves past the end of the data) are
        skipped with a regex: an all-zero header fails its checksum. Elsewhere the length
        words at every offset are filtered in bulk, and only plausible ones get their
        8-byte header checksummed: linear in the bytes scanned.
        """
        m, size = self.m, self.size
        last = min(stop, size - RECORD_OVERHEAD + 1)
        for base in range(start, last, _SCAN_CHUNK):
            end = min(base + _SCAN_CHUNK, last)
            window = m[base:end + RECORD_OVERHEAD - 1]
            n = end - base
            # Not bounded by max_record_bytes: a valid record above the reader's limit must
            # still count as valid data (it is reported as too large, never cut off).
            bound = size - base - RECORD_OVERHEAD
            found: list[int] = []
            lo = 0
            for z in _ZERO_RUN.finditer(window):
                if z.start() > lo:
                    found += _plausible(window, lo, min(z.start(), n), bound)
                lo = z.end() - RECORD_OVERHEAD + 1
                if lo >= n:
                    break
            if lo < n:
                found += _plausible(window, lo, n, bound)
            found.sort()
            crc32, unpack = zlib.crc32, _HEAD_CRC.unpack_from
            for p in found:
                if crc32(window[p:p + 8]) == unpack(window, p + 8)[0] \
                        and self.valid_at(base + p):
                    return base + p
        return None


def _plausible(window: bytes, lo: int, hi: int, bound: int) -> list[int]:
    """Offsets in ``[lo, hi)`` whose length word is at most ``bound``."""
    out: list[int] = []
    for a in range(4):
        words = array("I")
        first = lo + a
        count = (hi - first + 3) // 4
        if count <= 0:
            continue
        words.frombytes(window[first:first + 4 * count])
        if sys.byteorder == "big":  # pragma: no cover
            words.byteswap()
        out += [first + 4 * i for i, w in enumerate(words) if (w & _LENGTH_MASK) <= bound]
    return out


def _crc_at(m: mmap.mmap, start: int, length: int) -> int:
    """CRC of ``length`` bytes at ``start``, in bounded-size pieces."""
    crc = 0
    end = start + length
    while start < end:
        step = min(_CRC_CHUNK, end - start)
        crc = zlib.crc32(m[start:start + step], crc)
        start += step
    return crc
