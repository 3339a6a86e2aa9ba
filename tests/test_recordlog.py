"""RecordLog: round trips, crash recovery (torn tails), corruption, rewrite, limits, failures."""

from __future__ import annotations

import errno
import logging
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtdb.storage import recordlog
from crdtdb.storage.recordlog import (
    HEADER_SIZE,
    RECORD_OVERHEAD,
    REWRITE_SUFFIX,
    CorruptLogError,
    LogFailedError,
    LogLockedError,
    RecordLog,
    RecordTooLargeError,
    StorageError,
)

Batches = list[list[bytes]]


def write_log(path: Path, batches: Batches) -> list[tuple[int, int]]:
    """Append each batch; returns the (start, end) offsets of every record, in order.

    (No fsync per batch: these tests are about the file's content, and stay fast.)"""
    spans = []
    with RecordLog.open(path) as log:
        for batch in batches:
            off = log.append_many(batch, sync=False)
            for payload in batch:
                spans.append((off, off + RECORD_OVERHEAD + len(payload)))
                off += RECORD_OVERHEAD + len(payload)
            assert off == log.statistics().bytes
    return spans


def replay(path: Path, **kw: object) -> Batches:
    with RecordLog.open(path, **kw) as log:  # type: ignore[arg-type]
        return list(log.replay_batches())


def cut(src: Path, dst: Path, size: int, tail: bytes = b"") -> None:
    dst.write_bytes(src.read_bytes()[:size] + tail)


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


BATCHES: Batches = [[b"first"], [b"a" * 50, b"", b"c" * 3], [bytes(range(256))], [b"last one"]]


# --- round trips ----------------------------------------------------------------------------

def test_round_trip_and_statistics(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    with RecordLog.open(path) as log:
        assert list(log.replay()) == []
        assert log.append(b"one") == HEADER_SIZE
        log.append_many([bytearray(b"two"), memoryview(b"three")])
        log.append_many([])
        log.append(b"four", sync=False)
        log.append(b"five", sync=False)
        st_ = log.statistics()
        assert (st_.records, st_.batches, st_.fsyncs) == (5, 4, 2)
        assert list(log.replay()) == [b"one", b"two", b"three", b"four", b"five"]
        assert list(log.replay_batches()) == [[b"one"], [b"two", b"three"], [b"four"],
                                              [b"five"]]
    assert log.closed
    with RecordLog.open(path) as log:
        assert list(log.replay()) == [b"one", b"two", b"three", b"four", b"five"]
        st_ = log.statistics()
        assert (st_.records, st_.batches, st_.fsyncs, st_.recovered_bytes) == (5, 4, 0, 0)
        assert st_.bytes == path.stat().st_size
        log.append(b"six")
        assert list(log.replay())[-1] == b"six"


def test_one_fsync_per_batch(tmp_path: Path) -> None:
    with RecordLog.open(tmp_path / "x.log") as log:
        log.append_many([b"%d" % i for i in range(100)])
        assert log.statistics().fsyncs == 1
        log.append(b"x", sync=False)
        log.sync()
        log.sync()  # nothing new: no fsync
        assert log.statistics().fsyncs == 2


def test_create_false_and_closed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        RecordLog.open(tmp_path / "missing.log", create=False)
    log = RecordLog.open(tmp_path / "x.log")
    log.close()
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append(b"x")
    with pytest.raises(StorageError, match="closed"):
        list(log.replay())


def test_exclusive_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    with RecordLog.open(path) as log:
        with pytest.raises(LogLockedError):
            RecordLog.open(path)
        log.rewrite([b"r"])
        with pytest.raises(LogLockedError):  # the new file is locked too
            RecordLog.open(path)
    RecordLog.open(path).close()


# --- crash recovery: torn tails ---------------------------------------------------------------

def test_torn_last_record_at_every_offset(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    full = tmp_path / "full.log"
    spans = write_log(full, BATCHES)
    start, end = spans[-1]
    torn = tmp_path / "torn.log"
    for size in range(start, end):
        cut(full, torn, size)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="crdtdb.storage.recordlog"):
            assert replay(torn) == BATCHES[:-1], size
        assert torn.stat().st_size == start
        if size > start:
            assert "torn tail" in caplog.text
        # appending after recovery continues cleanly
        with RecordLog.open(torn) as log:
            log.append(b"after")
        assert replay(torn) == [*BATCHES[:-1], [b"after"]]


def test_torn_batch_is_dropped_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    batches = [[b"keep"], [b"x" * 10, b"y" * 20, b"z" * 30]]
    full = tmp_path / "full.log"
    spans = write_log(full, batches)
    batch_start, batch_end = spans[1][0], spans[-1][1]
    torn = tmp_path / "torn.log"
    for size in range(batch_start, batch_end):
        cut(full, torn, size)
        assert replay(torn) == [[b"keep"]], size
        assert torn.stat().st_size == batch_start
    # every record of the batch complete but the last missing: still dropped
    cut(full, torn, spans[-2][1])
    with caplog.at_level(logging.WARNING, logger="crdtdb.storage.recordlog"):
        assert replay(torn) == [[b"keep"]]
    assert "incomplete batch of 2 records" in caplog.text


@pytest.mark.parametrize("tail", [
    b"\0" * 4096,                                    # file extended, data never written
    os.urandom(3000),                                # garbage
    b"\xff\xff\xff\x7f" + b"\0" * 100,               # huge length
    b"\x05\0\0\0\0\0\0\0abc",                        # short payload
    b"\0\0\0\0" + b"\1\0\0\0" * 500,                 # many plausible lengths
])
def test_garbage_tail_is_truncated(tmp_path: Path, tail: bytes) -> None:
    full = tmp_path / "full.log"
    write_log(full, BATCHES)
    torn = tmp_path / "torn.log"
    cut(full, torn, full.stat().st_size, tail)
    with RecordLog.open(torn) as log:
        assert list(log.replay_batches()) == BATCHES
        assert log.statistics().recovered_bytes == len(tail)
    assert torn.stat().st_size == full.stat().st_size


# --- corruption in the middle -----------------------------------------------------------------

def test_middle_corruption_raises_at_every_byte(tmp_path: Path) -> None:
    full = tmp_path / "full.log"
    spans = write_log(full, BATCHES)
    bad = tmp_path / "bad.log"
    for j, (start, end) in enumerate(spans[:-1]):
        for off in range(start, end):
            cut(full, bad, full.stat().st_size)
            flip(bad, off)
            with pytest.raises(CorruptLogError) as info:
                RecordLog.open(bad)
            assert info.value.offset == start, (j, off)
            assert info.value.next_valid == spans[j + 1][0]
            assert bad.read_bytes()[off] != full.read_bytes()[off]  # file left as it was


def test_corruption_inside_last_batch_followed_by_its_records_raises(tmp_path: Path) -> None:
    full = tmp_path / "full.log"
    spans = write_log(full, [[b"a"], [b"b" * 20, b"c" * 20]])
    flip(full, spans[1][0] + RECORD_OVERHEAD + 3)
    with pytest.raises(CorruptLogError, match=f"offset {spans[1][0]}"):
        RecordLog.open(full)


def test_discard_corrupt_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    full = tmp_path / "full.log"
    spans = write_log(full, BATCHES)
    # record 2 is in the middle of batch 1: the whole batch goes
    flip(full, spans[2][0] + RECORD_OVERHEAD)
    with caplog.at_level(logging.ERROR, logger="crdtdb.storage.recordlog"):
        assert replay(full, discard_corrupt_tail=True) == BATCHES[:1]
    assert "discarding" in caplog.text
    assert full.stat().st_size == spans[1][0]


@pytest.mark.parametrize(("offset", "data", "match"), [
    (0, b"", "too short"),
    (0, b"crdtdbRL\1\0", "too short"),
    (0, b"X", "bad magic"),
    (12, b"\0", "header checksum"),
])
def test_bad_file_header(tmp_path: Path, offset: int, data: bytes, match: str) -> None:
    path = tmp_path / "x.log"
    write_log(path, BATCHES)
    raw = bytearray(path.read_bytes())
    if match == "too short":
        raw = bytearray(data)
    else:
        raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptLogError, match=match):
        RecordLog.open(path)


def test_unsupported_version(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(recordlog._HEADER_BODY.pack(recordlog.MAGIC, 99, 0)
                     + (recordlog.zlib.crc32(recordlog._HEADER_BODY.pack(
                         recordlog.MAGIC, 99, 0))).to_bytes(4, "little"))
    with pytest.raises(StorageError, match="version 99 is not supported"):
        RecordLog.open(path)


# --- limits -------------------------------------------------------------------------------------

def test_record_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    with RecordLog.open(path, max_record_bytes=100) as log:
        log.append(b"x" * 100)
        size = log.statistics().bytes
        with pytest.raises(RecordTooLargeError):
            log.append(b"x" * 101)
        with pytest.raises(RecordTooLargeError):
            log.append_many([b"ok", b"x" * 101])
        assert log.statistics().bytes == size == path.stat().st_size
        with pytest.raises(RecordTooLargeError):
            log.rewrite([b"x" * 101])
        assert list(log.replay()) == [b"x" * 100]
    # A valid record above the reader's limit is an error, never a torn tail to cut off.
    with pytest.raises(RecordTooLargeError, match="reopen with a larger limit"):
        RecordLog.open(path, max_record_bytes=50)
    assert path.stat().st_size == size
    for bad in (0, -1, 2**31):
        with pytest.raises(ValueError):
            RecordLog.open(path, max_record_bytes=bad)


# --- rewrite (compaction) ----------------------------------------------------------------------

def test_rewrite_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    write_log(path, BATCHES)
    with RecordLog.open(path) as log:
        log.rewrite(iter([b"snap1", b"snap2"]))
        assert list(log.replay()) == [b"snap1", b"snap2"]
        log.append(b"after")
        st_ = log.statistics()
        assert (st_.records, st_.batches, st_.rewrites) == (3, 3, 1)
    assert replay(path) == [[b"snap1"], [b"snap2"], [b"after"]]
    assert not (tmp_path / ("x.log" + REWRITE_SUFFIX)).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log"]


def test_rewrite_that_fails_leaves_the_log(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.log"
    write_log(path, BATCHES)
    before = path.read_bytes()

    def records():
        yield b"partial"
        raise RuntimeError("encoder failed")

    with RecordLog.open(path) as log:
        with pytest.raises(RuntimeError):
            log.rewrite(records())
        # a crash just before the rename
        monkeypatch.setattr(recordlog.os, "replace", _raise(OSError(errno.EIO, "boom")))
        with pytest.raises(OSError):
            log.rewrite([b"new"])
        monkeypatch.undo()
        assert list(log.replay_batches()) == BATCHES
        log.append(b"still usable")
    assert path.read_bytes().startswith(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log"]


def test_stale_rewrite_file_is_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "x.log"
    write_log(path, BATCHES)
    stale = tmp_path / ("x.log" + REWRITE_SUFFIX)
    stale.write_bytes(b"half a rewrite")
    with caplog.at_level(logging.WARNING, logger="crdtdb.storage.recordlog"):
        assert replay(path) == BATCHES
    assert not stale.exists()
    assert "interrupted rewrite" in caplog.text


# --- I/O failures -------------------------------------------------------------------------------

def _raise(exc: BaseException):
    def f(*args: object, **kw: object) -> None:
        raise exc
    return f


def test_partial_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite

    def short(fd: int, data: bytes, offset: int) -> int:
        return real(fd, bytes(data)[:3], offset)

    path = tmp_path / "x.log"
    monkeypatch.setattr(recordlog.os, "pwrite", short)
    write_log(path, BATCHES)
    with RecordLog.open(path) as log:
        log.rewrite([b"abcdefgh", b"ij"])
    monkeypatch.undo()
    assert replay(path) == [[b"abcdefgh"], [b"ij"]]


def test_failed_write_is_cut_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    calls = []

    def disk_full(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if len(calls) == 1:
            return real(fd, bytes(data)[:5], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "x.log"
    with RecordLog.open(path) as log:
        log.append(b"before")
        size = log.statistics().bytes
        monkeypatch.setattr(recordlog.os, "pwrite", disk_full)
        with pytest.raises(OSError, match="No space"):
            log.append(b"lost" * 10)
        monkeypatch.undo()
        assert path.stat().st_size == size == log.statistics().bytes
        log.append(b"after")
    assert replay(path) == [[b"before"], [b"after"]]


def test_failed_fsync_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.log"
    with RecordLog.open(path) as log:
        log.append(b"before")
        monkeypatch.setattr(recordlog, "_fsync", _raise(OSError(errno.EIO, "I/O error")))
        with pytest.raises(OSError, match="I/O error"):
            log.append(b"unknown")
        monkeypatch.undo()
        with pytest.raises(LogFailedError):
            log.append(b"refused")
        with pytest.raises(LogFailedError):
            log.rewrite([b"refused"])
    # Reopening reads what the disk has: the unacknowledged record may or may not be there.
    assert replay(path)[0] == [b"before"]


# --- properties -------------------------------------------------------------------------------

payloads = st.binary(max_size=80)
batches_st = st.lists(st.lists(payloads, min_size=1, max_size=4), min_size=1, max_size=8)


def _expected_prefix(batches: Batches, size: int) -> Batches:
    out, off = [], HEADER_SIZE
    for batch in batches:
        off += sum(RECORD_OVERHEAD + len(p) for p in batch)
        if off > size:
            break
        out.append(batch)
    return out


def _check_truncation(batches: Batches, fraction: float, tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        full, torn = Path(d) / "full.log", Path(d) / "torn.log"
        write_log(full, batches)
        total = full.stat().st_size
        size = HEADER_SIZE + int(fraction * (total - HEADER_SIZE))
        cut(full, torn, size, tail)
        data = torn.read_bytes()
        got = replay(torn)
        # A prefix of what was appended, never garbage: at least every batch wholly before
        # the cut, more only where the tail happens to restore the lost bytes exactly.
        assert got == batches[:len(got)]
        assert len(got) >= len(_expected_prefix(batches, size))
        kept = HEADER_SIZE + sum(RECORD_OVERHEAD + len(p) for b in got for p in b)
        assert torn.stat().st_size == kept
        assert data[:kept] == full.read_bytes()[:kept]


def _check_flip(batches: Batches, where: float, mask: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.log"
        spans = write_log(path, batches)
        off = HEADER_SIZE + int(where * (spans[-1][1] - HEADER_SIZE - 1))
        j = next(i for i, (s, e) in enumerate(spans) if s <= off < e)
        flip(path, off, mask)
        if j == len(spans) - 1:  # the last record: indistinguishable from a torn write
            assert replay(path) == batches[:-1]
        else:
            with pytest.raises(CorruptLogError) as info:
                RecordLog.open(path)
            assert (info.value.offset, info.value.next_valid) == (spans[j][0], spans[j + 1][0])


@settings(deadline=None)
@given(batches_st, st.floats(0, 1), st.sampled_from([b"", b"\0" * 64]) | st.binary(max_size=64))
def test_truncation_gives_a_batch_prefix(batches: Batches, fraction: float, tail: bytes) -> None:
    _check_truncation(batches, fraction, tail)


@settings(deadline=None)
@given(batches_st, st.floats(0, 1), st.integers(1, 255))
def test_single_byte_damage_is_never_silent(batches: Batches, where: float, mask: int) -> None:
    _check_flip(batches, where, mask)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(batches_st, st.floats(0, 1), st.binary(max_size=200))
def test_truncation_gives_a_batch_prefix_slow(batches: Batches, fraction: float,
                                              tail: bytes) -> None:
    _check_truncation(batches, fraction, tail)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None)
@given(batches_st, st.floats(0, 1), st.integers(1, 255))
def test_single_byte_damage_is_never_silent_slow(batches: Batches, where: float,
                                                 mask: int) -> None:
    _check_flip(batches, where, mask)
