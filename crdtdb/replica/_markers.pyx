# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled loop of :func:`crdtdb.replica.encoding.markers_reader`, the reading of a
compacted full state's markers where they lie in its bytes (:func:`root_map_entries`: no
Python twin, pycrdt's maps are the other way), and the loop of ``Replica._merge_rows`` over
merged registers (:func:`register_rows`, at the end: every merged update's).

A node joining from a full state reads every marker of every table. In Python the loop over
the unpacked markers is ~0.4-0.6 s of a 100k-flow join however it is written, and msgpack's
unpacking of them another ~0.3 s: most of it making objects (a fresh string, tuple or bytes
per column of every row) that are then looked up and thrown away, as most columns repeat a
value seen in an earlier row. So this reads a marker's bytes directly: it finds each
column's msgpack value in the payload and looks its *bytes* up in a memo of what they
decoded to (:class:`SpanMemo`, in front of per-column dicts). Only a miss (a value not seen yet in this table) is unpacked, by
msgpack with the options encoding.py uses, and checked as the Python loop checks it; single
integers and long strings (priorities, matches: rarely repeated) are made directly.

Exactness, for *any* input: a marker's result here is used only when everything about it
was understood. Anything else (neither ``bytes`` nor ``bytearray``, an encoding of the array
or of its first two members that encoding.py does not write, a value that does not unpack,
a column that does not check, nesting deeper than :data:`MAX_DEPTH`, trailing bytes) goes
to the object path: the Python loop's logic over ``unpack_one(payload)``. Equal bytes
unpack to equal values (msgpack is a prefix code), so a memo hit gives what unpacking again
would. tests/test_replica_join.py runs both loops on damaged and re-encoded markers;
tests/test_replica_encoding.py checks that no valid marker takes the object path.

``ABI`` changes whenever this module's interface does; encoding.py uses the module only when
it finds the ABI it was written for (a stale build left in a tree then falls back to Python).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeUTF8
from libc.stdint cimport uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcmp, memcpy

from crdtdb.replica._wire cimport be_uint

import os

ABI = 5

# As encoding.py's _STR, _MEMO, _INT, _UUID, _OTHER.
cdef enum Kind:
    STR = 0
    MEMO = 1
    INT = 2
    UUID = 3
    OTHER = 4

#: Single strings longer than this are not shared (encoding._SHARED_MAX_LEN); here, in
#: bytes (a string of more bytes but no more characters is not shared either: an equal
#: value, another object).
cdef Py_ssize_t SHARED_MAX_LEN = 64

#: A column value nested deeper than this is left to the object path (msgpack has a depth
#: limit of its own; an OVSDB datum is at most an array of pairs).
MAX_DEPTH = 32
cdef int C_MAX_DEPTH = MAX_DEPTH

cdef Py_ssize_t BAD = -1


cdef Py_ssize_t _str_data(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                          Py_ssize_t *size) noexcept nogil:
    """Where the data of the msgpack string at ``pos`` starts (its length put in ``size``),
    or BAD: not a string, or its data past ``end``."""
    cdef unsigned char b
    if pos >= end:
        return BAD
    b = p[pos]
    if 0xa0 <= b <= 0xbf:  # fixstr, str 8, 16, 32
        size[0] = b & 0x1f
        pos += 1
    elif b == 0xd9 and end - pos >= 2:
        size[0] = p[pos + 1]
        pos += 2
    elif b == 0xda and end - pos >= 3:
        size[0] = <Py_ssize_t>be_uint(p + pos + 1, 2)
        pos += 3
    elif b == 0xdb and end - pos >= 5:
        size[0] = <Py_ssize_t>be_uint(p + pos + 1, 4)
        pos += 5
    else:
        return BAD
    if end - pos < size[0]:
        return BAD
    return pos


cdef Py_ssize_t _skip(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                      int depth) noexcept nogil:
    """The end of the msgpack value at ``pos``, or BAD: truncated, too deep, or of a kind
    encoding.py never writes (maps, bin, extensions but uuids'), left to the object path."""
    cdef unsigned char b
    cdef unsigned long long n, k
    cdef Py_ssize_t size
    if pos >= end or depth > C_MAX_DEPTH:
        return BAD
    b = p[pos]
    pos += 1
    if b <= 0x7f or b >= 0xe0 or b == 0xc0 or b == 0xc2 or b == 0xc3:
        return pos  # fixint, nil, bool
    if 0xa0 <= b <= 0xbf or 0xd9 <= b <= 0xdb:  # strings
        pos = _str_data(p, pos - 1, end, &size)
        return BAD if pos == BAD else pos + size
    if 0x90 <= b <= 0x9f or b == 0xdc or b == 0xdd:  # arrays
        if b <= 0x9f:
            n = b & 0x0f
        elif b == 0xdc:
            if end - pos < 2:
                return BAD
            n = be_uint(p + pos, 2)
            pos += 2
        else:
            if end - pos < 4:
                return BAD
            n = be_uint(p + pos, 4)
            pos += 4
        if <unsigned long long>(end - pos) < n:
            return BAD  # (every value is at least a byte)
        for k in range(n):
            pos = _skip(p, pos, end, depth + 1)
            if pos == BAD:
                return BAD
        return pos
    elif b == 0xca or b == 0xcb:  # float 32, 64
        size = 4 if b == 0xca else 8
    elif 0xcc <= b <= 0xcf:  # uint 8-64
        size = 1 << (b - 0xcc)
    elif 0xd0 <= b <= 0xd3:  # int 8-64
        size = 1 << (b - 0xd0)
    elif b == 0xd8:  # fixext 16: a uuid's (whatever its type byte says)
        size = 17
    else:
        return BAD
    if end - pos < size:
        return BAD
    return pos + size


cdef bint _int_span(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                    long long *out) noexcept nogil:
    """Whether [pos, end) is exactly one msgpack integer that fits an int64, put in ``out``."""
    cdef unsigned char b
    cdef Py_ssize_t size
    cdef unsigned long long u
    if pos >= end:
        return False
    b = p[pos]
    if b <= 0x7f or b >= 0xe0:
        out[0] = <signed char>b
        return end - pos == 1
    if 0xcc <= b <= 0xcf:
        size = 1 << (b - 0xcc)
        if end - pos - 1 != size:
            return False
        u = be_uint(p + pos + 1, <int>size)
        if u >> 63:  # (past an int64)
            return False
        out[0] = <long long>u
        return True
    if 0xd0 <= b <= 0xd3:
        size = 1 << (b - 0xd0)
        if end - pos - 1 != size:
            return False
        u = be_uint(p + pos + 1, <int>size)
        if size == 1:
            out[0] = <signed char>u
        elif size == 2:
            out[0] = <short>u
        elif size == 4:
            out[0] = <int>u
        else:
            out[0] = <long long>u
        return True
    return False


cdef unsigned char IS_HEX[256]  # (1 for the lowercase hex digits, set below)
IS_HEX[:] = [1 if chr(c) in "0123456789abcdef" else 0 for c in range(256)]


cdef bint _is_stored_uuid(const unsigned char *q) noexcept nogil:
    """Whether the 36 bytes at ``q`` are a uuid as stored (encoding.is_stored_uuid): 8-4-4-
    4-12 lowercase hex digits."""
    cdef int k
    if q[8] != 0x2d or q[13] != 0x2d or q[18] != 0x2d or q[23] != 0x2d:  # '-'
        return False
    for k in range(36):
        if not IS_HEX[q[k]] and k != 8 and k != 13 and k != 18 and k != 23:
            return False
    return True


cdef inline str _uuid_text(bytes b):
    """The 16 bytes of a uuid extension as its 8-4-4-4-12 hex string (three hex(), the
    middle one putting in two of the dashes, as the Python loop makes it)."""
    return f"{b[:4].hex()}-{b[4:10].hex('-', 2)}-{b[10:].hex()}"


cdef inline tuple _new_row(Py_ssize_t n_cols, object uuid, tuple version_datum):
    """A row tuple with its _uuid and _version; the caller fills in every other slot."""
    cdef tuple row = PyTuple_New(n_cols)
    cdef object first = (uuid,)
    Py_INCREF(first)
    PyTuple_SET_ITEM(row, 0, first)
    Py_INCREF(version_datum)
    PyTuple_SET_ITEM(row, 1, version_datum)
    return row


# --- a memo of column values by their bytes --------------------------------------------------

cdef struct Slot:
    uint64_t hash  # (0: an empty slot; a hash is never 0)
    const unsigned char *key  # (into a bytes object the table keeps)
    PyObject *value  # (kept by the table too)
    Py_ssize_t size
    Py_ssize_t col

#: How many slots a lookup or an insertion looks at, at most. A value whose run of slots is
#: longer (crafted to collide, or very unlucky) is not put in: it is looked up in the
#: per-column dicts every time, as before this table (a collision costs time, never a
#: wrong value: a hit compares the bytes).
cdef Py_ssize_t PROBES = 16
#: The table grows no further (slots of 40 bytes, at most half of them used: ~4M values).
cdef Py_ssize_t MAX_SLOTS = 1 << 23

#: Which bits of a hash the table uses: all but in tests (:func:`_hash_bits`).
cdef uint64_t HASH_MASK = ~(<uint64_t>0)

cdef uint64_t P1 = 0x9E3779B185EBCA87ULL
cdef uint64_t P2 = 0xC2B2AE3D27D4EB4FULL
cdef uint64_t P3 = 0x165667B19E3779F9ULL


cdef inline uint64_t _rotl(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


def _hash_bits(int bits) -> None:
    """Tests: keep only the low ``bits`` bits of every hash from now on (0: every value
    collides with every other), to check that collisions and full runs of slots change
    nothing but the time taken; 64 restores the whole hash."""
    global HASH_MASK
    if not 0 <= bits <= 64:
        raise ValueError("0 to 64 bits")
    HASH_MASK = ~(<uint64_t>0) if bits == 64 else ((<uint64_t>1 << bits) - 1)


cdef class SpanMemo:
    """Column values by (column, their bytes): the value that reading those bytes gave the
    first time, for every later row that has the same bytes there. A hit is a hash of the
    bytes, a probe and a comparison, where the per-column dicts cost a bytes object, its
    siphash and a dict lookup (100k flows: ~400k lookups; single integers go by the
    integer instead). Only a cache in front of those dicts: every value in it is what they
    gave (and still give) for its bytes.

    The hash is keyed with random bytes drawn per table (the bytes come from peers); a run
    of colliding values only fills :data:`PROBES` slots and the rest go to the dicts."""

    cdef Slot *slots
    cdef Py_ssize_t mask  # (the number of slots, a power of 2, less 1)
    cdef Py_ssize_t used
    cdef uint64_t k0
    cdef uint64_t k1
    cdef list keep  # (the keys' bytes objects and the values)

    def __cinit__(self, bytes seed):
        if len(seed) != 16:
            raise ValueError("the seed is 16 bytes")
        memcpy(&self.k0, PyBytes_AS_STRING(seed), 8)
        memcpy(&self.k1, PyBytes_AS_STRING(seed) + 8, 8)
        self.slots = <Slot *>PyMem_Calloc(64, sizeof(Slot))
        if self.slots == NULL:
            raise MemoryError
        self.mask = 63
        self.used = 0
        self.keep = []

    def __dealloc__(self):
        PyMem_Free(self.slots)

    def __len__(self) -> int:
        return self.used

    cdef inline uint64_t hash(self, Py_ssize_t col, const unsigned char *p,
                              Py_ssize_t n) noexcept nogil:
        """The (non-zero) hash of column ``col``'s value of ``n`` bytes at ``p``: 8 bytes
        a round, then an avalanche (after xxHash64's)."""
        cdef uint64_t h = self.k0 + <uint64_t>n * P1 + <uint64_t>col * P3
        cdef uint64_t w
        cdef Py_ssize_t i = 0
        while i + 8 <= n:
            memcpy(&w, p + i, 8)
            h = _rotl(h ^ (_rotl(w * P2, 31) * P1), 27) * P1 + P3
            i += 8
        if i < n:
            w = 0
            memcpy(&w, p + i, n - i)
            h = _rotl(h ^ (_rotl(w * P2, 31) * P1), 27) * P1 + P3
        h ^= self.k1
        h ^= h >> 33
        h *= P2
        h ^= h >> 29
        h *= P3
        h ^= h >> 32
        return (h & HASH_MASK) | 1

    cdef inline PyObject *find(self, uint64_t h, Py_ssize_t col, const unsigned char *p,
                               Py_ssize_t n) noexcept:
        """The value for these bytes of column ``col`` (borrowed), or NULL."""
        cdef Py_ssize_t j = <Py_ssize_t>(h & <uint64_t>self.mask), k
        cdef Slot *s
        for k in range(PROBES):
            s = &self.slots[(j + k) & self.mask]
            if s.hash == 0:
                return NULL
            if s.hash == h and s.size == n and s.col == col and memcmp(s.key, p, n) == 0:
                return s.value
        return NULL

    cdef int add(self, uint64_t h, Py_ssize_t col, bytes key, object value) except -1:
        """Remember ``value`` for column ``col``'s bytes ``key`` (not there yet), if it
        fits."""
        if (self.used + 1) * 2 > self.mask + 1:
            if self.mask + 1 >= MAX_SLOTS:
                return 0
            self._grow()
        if self._place(h, col, <const unsigned char *>PyBytes_AS_STRING(key),
                       PyBytes_GET_SIZE(key), <PyObject *>value):
            self.keep.append(key)
            self.keep.append(value)
            self.used += 1
        return 0

    cdef bint _place(self, uint64_t h, Py_ssize_t col, const unsigned char *key,
                     Py_ssize_t n, PyObject *value) noexcept:
        cdef Py_ssize_t j = <Py_ssize_t>(h & <uint64_t>self.mask), k
        cdef Slot *s
        for k in range(PROBES):
            s = &self.slots[(j + k) & self.mask]
            if s.hash == 0:
                s.hash = h
                s.key = key
                s.value = value
                s.size = n
                s.col = col
                return True
        return False

    cdef int _grow(self) except -1:
        cdef Slot *old = self.slots
        cdef Py_ssize_t n_old = self.mask + 1, k
        cdef Slot *new = <Slot *>PyMem_Calloc(2 * n_old, sizeof(Slot))
        if new == NULL:
            raise MemoryError
        self.slots = new
        self.mask = 2 * n_old - 1
        self.used = 0
        for k in range(n_old):
            if old[k].hash != 0 and self._place(old[k].hash, old[k].col, old[k].key,
                                                old[k].size, old[k].value):
                self.used += 1  # (one that no longer fits stays in keep, unused)
        PyMem_Free(old)
        return 0


cdef class MarkersReader:
    """``read(uuids, payloads, births, versions) -> (rows, refused)`` for one table's
    markers (see encoding.markers_reader); ``versions`` gets the version strings of rows
    read that it did not find to be stored uuids itself, for the caller to check (a join
    of 100k rows: none, where checking them all after was ~60M instructions)."""

    cdef Py_ssize_t n_cols
    cdef int *kinds
    cdef tuple defaults
    cdef tuple decoders
    cdef tuple lows
    cdef tuple highs
    cdef long long *c_lows  # (the same bounds, for INT columns read from bytes)
    cdef long long *c_highs
    cdef tuple sharers
    cdef object uuid_ext
    cdef object refused_error
    cdef tuple caught
    cdef object uuid_from_slice
    cdef object unpack_one
    cdef object unpack_span
    cdef Py_ssize_t max_bytes
    # Columns of plain strings (a set: 1, a map: 2, else 0), read on a miss without
    # unpacking (see _plain_strings), with their size bounds, string and pair sharers.
    cdef int *plain
    cdef tuple n_mins
    cdef tuple n_maxs
    cdef object store_str
    cdef tuple pair_sharers

    def __cinit__(self, kinds, defaults, decoders, lows, highs, sharers, *, uuid_ext,
                  refused_error, decode_error, uuid_from_slice, unpack_one, unpack_span,
                  max_bytes, plain, n_mins, n_maxs, store_str, pair_sharers):
        cdef Py_ssize_t i
        self.kinds = NULL
        self.plain = NULL
        self.c_lows = NULL
        self.c_highs = NULL
        self.n_cols = len(kinds)
        self.defaults = tuple(defaults)
        self.decoders = tuple(decoders)
        self.lows = tuple(lows)
        self.highs = tuple(highs)
        self.sharers = tuple(sharers)
        self.n_mins = tuple(n_mins)
        self.n_maxs = tuple(n_maxs)
        self.pair_sharers = tuple(pair_sharers)
        self.store_str = store_str
        for name, seq in (("defaults", self.defaults), ("decoders", self.decoders),
                          ("lows", self.lows), ("highs", self.highs),
                          ("sharers", self.sharers), ("plain", plain),
                          ("n_mins", self.n_mins), ("n_maxs", self.n_maxs),
                          ("pair_sharers", self.pair_sharers)):
            if len(seq) != self.n_cols:
                raise ValueError(f"{name} has {len(seq)} entries for {self.n_cols} columns")
        if self.n_cols < 2:
            raise ValueError("a table has at least _uuid and _version")
        self.kinds = <int *>PyMem_Malloc(self.n_cols * sizeof(int))
        self.c_lows = <long long *>PyMem_Malloc(self.n_cols * sizeof(long long))
        self.c_highs = <long long *>PyMem_Malloc(self.n_cols * sizeof(long long))
        self.plain = <int *>PyMem_Malloc(self.n_cols * sizeof(int))
        if (self.kinds == NULL or self.c_lows == NULL or self.c_highs == NULL
                or self.plain == NULL):
            raise MemoryError
        for i in range(self.n_cols):
            k = kinds[i]
            if not STR <= k <= OTHER:
                raise ValueError(f"unknown column kind {k!r}")
            self.kinds[i] = k
            self.plain[i] = plain[i] if k == MEMO else 0
            if not 0 <= self.plain[i] <= 2:
                raise ValueError(f"plain must be 0, 1 or 2, not {plain[i]!r}")
            # (an int64 read from bytes is in range exactly when it is within these)
            self.c_lows[i] = max(-2**63, self.lows[i]) if k == INT else 0
            self.c_highs[i] = min(2**63 - 1, self.highs[i]) if k == INT else -1
        self.uuid_ext = uuid_ext
        self.refused_error = refused_error
        self.caught = (refused_error, decode_error, TypeError)
        self.uuid_from_slice = uuid_from_slice
        self.unpack_one = unpack_one
        self.unpack_span = unpack_span
        self.max_bytes = max_bytes

    def __dealloc__(self):
        PyMem_Free(self.kinds)
        PyMem_Free(self.plain)
        PyMem_Free(self.c_lows)
        PyMem_Free(self.c_highs)

    cdef list _memos(self):
        cdef list memos = []
        cdef Py_ssize_t i
        for i in range(self.n_cols):
            # (a MEMO column's memo maps None, an absent value, to the default)
            memos.append({None: self.defaults[i]} if self.kinds[i] == MEMO else {})
        return memos

    cdef object _column(self, Py_ssize_t i, object d, dict memo):
        """Column ``i``'s datum for its unpacked value ``d`` (None: absent), as the
        generated Python loop's block for the column's kind makes it; raises what that
        block raises."""
        cdef int kind = self.kinds[i]
        cdef object v, x
        if kind == MEMO:
            try:
                v = memo.get(d)
            except TypeError:
                v = None
            if v is None:
                v = self.decoders[i](list(d) if type(d) is tuple else d)
                memo[d] = v
            return v
        if d is None:
            return self.defaults[i]
        if kind == STR:
            if type(d) is tuple and len(<tuple>d) == 1 and type((<tuple>d)[0]) is str:
                if len(<str>(<tuple>d)[0]) > SHARED_MAX_LEN:
                    return d
                return memo.setdefault(d, d)
        elif kind == INT:
            # Looked up first (most rows repeat a value): a hit is a tuple equal to a valid
            # one, of one integer in range, or of a bool or a float equal to it (checked).
            try:
                v = memo.get(d)
            except TypeError:
                v = None
            if v is not None and type(d[0]) is int:
                return v
            if (type(d) is tuple and len(<tuple>d) == 1 and type(x := (<tuple>d)[0]) is int
                    and self.lows[i] <= x <= self.highs[i]):
                memo[d] = d
                return d
        elif kind == UUID:
            if (type(d) is tuple and len(<tuple>d) == 1 and type(x := (<tuple>d)[0]) is slice
                    and (<slice>x).start == self.uuid_ext):
                v = memo.get((<slice>x).stop)
                if v is None:
                    v = self.sharers[i](self.uuid_from_slice(x))
                    memo[(<slice>x).stop] = v
                return v
        return self.decoders[i](list(d) if type(d) is tuple else d)

    cdef bint _read_obj(self, object uuid, object obj, list memos, dict births,
                        list versions, dict rows) except -1:
        """One unpacked marker, as the generated Python loop reads it: True if its row
        went into ``rows``, False if it is refused."""
        cdef Py_ssize_t n_cols = self.n_cols, n, i
        cdef tuple t, row, version_datum
        cdef object birth, version, v
        try:
            if type(obj) is not tuple:
                return False
            t = <tuple>obj
            n = len(t)
            if n < 2 or n > n_cols:
                return False
            birth = t[0]
            if type(birth) is not int:
                return False
            version = t[1]
            if type(version) is str and len(<str>version) == 36:
                version_datum = (version,)
                versions.append(version)
            elif (type(version) is slice and (<slice>version).start == self.uuid_ext
                    and type((<slice>version).stop) is bytes
                    and len(<bytes>(<slice>version).stop) == 16):
                version_datum = (_uuid_text((<slice>version).stop),)
            else:
                return False
            row = _new_row(n_cols, uuid, version_datum)
            for i in range(2, n_cols):
                v = self._column(i, t[i] if i < n else None, <dict>memos[i])
                Py_INCREF(v)
                PyTuple_SET_ITEM(row, i, v)
        except self.caught:
            return False
        if birth:
            births[uuid] = birth
        rows[uuid] = row
        return True

    cdef object _plain_strings(self, Py_ssize_t i, const unsigned char *p, Py_ssize_t pos,
                               Py_ssize_t end, SpanMemo memo):
        """Column ``i``'s datum for the array of strings at [pos, end) of a set or map of
        plain strings, as its decoder makes it from valid input (one sharer's tuple for a
        set of one; shared strings; shared pairs, keys strictly increasing), or None for
        anything else (unpacked and decoded then): a miss of a column such as a flow's
        external_ids, most of them distinct across rows, without msgpack's call and the
        Python decoder's loop. A map's pairs are looked up in ``memo`` by their bytes
        too: a new map mostly repeats pairs of others (a flow's ``source`` and
        ``stage-name``), each then neither decoded nor shared again."""
        cdef Py_ssize_t m, k, slen, vlen, kdata, vdata, start
        cdef unsigned char b
        cdef list atoms = []
        cdef object a, pair, key, prev = None
        cdef uint64_t h
        cdef PyObject *found
        b = p[pos]
        if 0x90 <= b <= 0x9f:
            m = b & 0x0f
            pos += 1
        elif b == 0xdc and end - pos >= 3:
            m = <Py_ssize_t>be_uint(p + pos + 1, 2)
            pos += 3
        else:
            return None
        if self.plain[i] == 2:
            if m % 2 or not self.n_mins[i] <= m // 2 <= self.n_maxs[i]:
                return None
            share = self.pair_sharers[i]
            for k in range(m // 2):
                start = pos
                kdata = _str_data(p, pos, end, &slen)
                if kdata == BAD:
                    return None
                vdata = _str_data(p, kdata + slen, end, &vlen)
                if vdata == BAD:
                    return None
                pos = vdata + vlen
                # (under its own column number: these bytes are a pair, not a column's)
                h = memo.hash(self.n_cols + i, p + start, pos - start)
                found = memo.find(h, self.n_cols + i, p + start, pos - start)
                if found != NULL:
                    pair = <object>found
                else:
                    try:
                        key = PyUnicode_DecodeUTF8(<const char *>p + kdata, slen, NULL)
                        a = PyUnicode_DecodeUTF8(<const char *>p + vdata, vlen, NULL)
                    except UnicodeDecodeError:
                        return None
                    pair = share(key, a)
                    memo.add(h, self.n_cols + i,
                             PyBytes_FromStringAndSize(<const char *>p + start, pos - start),
                             pair)
                key = (<tuple>pair)[0]  # (equal to the key decoded)
                if k and not prev < key:  # (keys strictly increasing)
                    return None
                prev = key
                atoms.append(pair)
            if pos != end:
                return None
            return tuple(atoms)
        for k in range(m):
            pos = _str_data(p, pos, end, &slen)
            if pos == BAD:
                return None
            try:
                a = PyUnicode_DecodeUTF8(<const char *>p + pos, slen, NULL)
            except UnicodeDecodeError:
                return None
            pos += slen
            atoms.append(a)
        if pos != end:
            return None
        if not self.n_mins[i] <= m <= self.n_maxs[i]:
            return None
        if m == 1:
            return self.sharers[i](atoms[0])
        for k in range(1, m):
            if not atoms[k - 1] < atoms[k]:
                return None
        store = self.store_str
        return tuple([store(a) for a in atoms])

    cdef bint _read_bytes(self, object uuid, const unsigned char *p, Py_ssize_t end,
                          list memos, list spans, list ints, SpanMemo memo, dict births,
                          list versions, dict rows) except -1:
        """One marker read from its ``end`` bytes at ``p`` (a bytes or bytearray that
        nothing changes meanwhile): True if its row went into ``rows``; False if anything
        about it is left to the object path (nothing was written then)."""
        cdef Py_ssize_t pos, start, n, i, slen, data
        cdef Py_ssize_t n_cols = self.n_cols
        cdef unsigned char b
        cdef long long s
        cdef object birth, version, key, v, d
        cdef tuple row, version_datum
        cdef dict span_memo
        cdef int kind
        cdef uint64_t h
        cdef PyObject *found
        cdef bint checked = False
        if end < 1 or end > self.max_bytes:
            return False
        b = p[0]
        if 0x90 <= b <= 0x9f:
            n = b & 0x0f
            pos = 1
        elif b == 0xdc and end >= 3:
            n = <Py_ssize_t>be_uint(p + 1, 2)
            pos = 3
        else:
            return False
        if n < 2 or n > n_cols or pos >= end:
            return False
        # birth: any msgpack integer that fits an int64 (the rest: the object path)
        b = p[pos]
        if b <= 0x7f or b >= 0xe0:
            slen = 1
        elif 0xcc <= b <= 0xcf:
            slen = 1 + (1 << (b - 0xcc))
        elif 0xd0 <= b <= 0xd3:
            slen = 1 + (1 << (b - 0xd0))
        else:
            return False
        if end - pos < slen or not _int_span(p, pos, pos + slen, &s):
            return False
        birth = s
        pos += slen
        # version: a 36-character ASCII string (str 8), or a uuid extension (fixext 16); a
        # string that is a uuid as stored is not given to the caller to check again
        if end - pos >= 38 and p[pos] == 0xd9 and p[pos + 1] == 36:
            checked = _is_stored_uuid(p + pos + 2)
            if not checked:
                for i in range(pos + 2, pos + 38):
                    if p[i] >= 0x80:
                        return False
            version = PyUnicode_DecodeASCII(<const char *>p + pos + 2, 36, NULL)
            version_datum = (version,)
            pos += 38
        elif end - pos >= 18 and p[pos] == 0xd8 and p[pos + 1] == 1:
            version_datum = (_uuid_text(PyBytes_FromStringAndSize(<const char *>p + pos + 2,
                                                                  16)),)
            version = None
            pos += 18
        else:
            return False
        row = _new_row(n_cols, uuid, version_datum)
        for i in range(2, n_cols):
            kind = self.kinds[i]
            if i < n and pos >= end:
                return False
            if i >= n or p[pos] == 0xc0:  # absent or nil: the column's default
                if i < n:
                    pos += 1
                v = self.defaults[i]
                Py_INCREF(v)
                PyTuple_SET_ITEM(row, i, v)
                continue
            start = pos
            pos = _skip(p, pos, end, 1)
            if pos == BAD:
                return False
            # A long single string (a match, an action): decoded here, not looked up.
            if kind == STR and p[start] == 0x91 and pos - start > SHARED_MAX_LEN + 1:
                data = _str_data(p, start + 1, pos, &slen)
                if data != BAD and data + slen == pos and slen > SHARED_MAX_LEN:
                    try:
                        d = PyUnicode_DecodeUTF8(<const char *>p + data, slen, NULL)
                    except UnicodeDecodeError:
                        return False
                    v = (d,)
                    Py_INCREF(v)
                    PyTuple_SET_ITEM(row, i, v)
                    continue
            # A single integer in range (a priority: most of a table's are distinct): made
            # here, one tuple per value (looked up by the integer: no bytes table for them).
            if (kind == INT and p[start] == 0x91 and _int_span(p, start + 1, pos, &s)
                    and self.c_lows[i] <= s <= self.c_highs[i]):
                d = s
                v = (<dict>ints[i]).get(d)
                if v is None:
                    v = (d,)
                    (<dict>ints[i])[d] = v
                Py_INCREF(v)
                PyTuple_SET_ITEM(row, i, v)
                continue
            # The same bytes in this column as in an earlier row: the same value.
            h = memo.hash(i, p + start, pos - start)
            found = memo.find(h, i, p + start, pos - start)
            if found != NULL:
                v = <object>found
                Py_INCREF(v)
                PyTuple_SET_ITEM(row, i, v)
                continue
            key = PyBytes_FromStringAndSize(<const char *>p + start, pos - start)
            span_memo = <dict>spans[i]
            v = span_memo.get(key)
            if v is None:
                try:
                    if self.plain[i]:
                        v = self._plain_strings(i, p, start, pos, memo)
                    if v is None:
                        d = self.unpack_span(key)
                        v = self._column(i, d, <dict>memos[i])
                except Exception:
                    return False
                span_memo[key] = v
            memo.add(h, i, key, v)
            Py_INCREF(v)
            PyTuple_SET_ITEM(row, i, v)
        if pos != end:
            return False
        if version is not None and not checked:
            versions.append(version)
        if birth:
            births[uuid] = birth
        rows[uuid] = row
        return True

    def read(self, uuids, payloads, dict births, list versions):
        cdef dict rows = {}
        cdef list refused = []
        cdef list memos = self._memos()
        cdef list spans = [{} for _ in range(self.n_cols)]  # by a value's bytes
        cdef list ints = [{} for _ in range(self.n_cols)]  # INT columns': by the integer
        cdef SpanMemo memo = SpanMemo(os.urandom(16))
        cdef Py_buffer view
        cdef bint done
        for uuid, payload in zip(uuids, payloads, strict=True):
            if type(payload) is bytes:
                if self._read_bytes(
                        uuid, <const unsigned char *>PyBytes_AS_STRING(payload),
                        PyBytes_GET_SIZE(payload), memos, spans, ints, memo, births, versions,
                        rows):
                    continue
            elif type(payload) is bytearray:  # (what pycrdt gives)
                # Exported while it is read: Python code runs meanwhile (decoders), and a
                # bytearray with an export cannot be resized under the pointer.
                PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
                try:
                    done = self._read_bytes(
                        uuid, <const unsigned char *>view.buf, view.len, memos, spans, ints,
                        memo, births, versions, rows)
                finally:
                    PyBuffer_Release(&view)
                if done:
                    continue
            if not self._read_obj(uuid, self.unpack_one(payload), memos, births, versions,
                                  rows):
                refused.append(uuid)
        return rows, refused

    def read_spans(self, uuids, bytes buffer, bytes spans, dict births, list versions):
        """:meth:`read` of markers that lie in ``buffer``: the one at ``uuids[i]`` at
        ``spans``' i-th (offset, length) pair of ``Py_ssize_t`` (as :func:`root_map_entries`
        finds them in a full state), read in place, without an object per payload."""
        cdef dict rows = {}
        cdef list refused = []
        cdef list memos = self._memos()
        cdef list memo_spans = [{} for _ in range(self.n_cols)]
        cdef list ints = [{} for _ in range(self.n_cols)]
        cdef SpanMemo memo = SpanMemo(os.urandom(16))
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buffer)
        cdef Py_ssize_t size = PyBytes_GET_SIZE(buffer)
        cdef const Py_ssize_t *at = <const Py_ssize_t *>PyBytes_AS_STRING(spans)
        cdef Py_ssize_t n = len(uuids), i, off, length
        cdef Py_ssize_t pair = 2 * <Py_ssize_t>sizeof(Py_ssize_t)
        # (divided, not multiplied: a length can be anything)
        if PyBytes_GET_SIZE(spans) % pair or PyBytes_GET_SIZE(spans) // pair != n:
            raise ValueError(f"spans has {PyBytes_GET_SIZE(spans)} bytes for {n} markers")
        for i in range(n):
            off = at[2 * i]
            length = at[2 * i + 1]
            if off < 0 or length < 0 or off > size or length > size - off:
                raise ValueError(f"marker {i} at {off}+{length}: outside {size} bytes")
        for i in range(n):
            uuid = uuids[i]
            off = at[2 * i]
            length = at[2 * i + 1]
            if self._read_bytes(uuid, p + off, length, memos, memo_spans, ints, memo, births,
                                versions, rows):
                continue
            if not self._read_obj(uuid, self.unpack_one(
                    PyBytes_FromStringAndSize(<const char *>p + off, length)),
                    memos, births, versions, rows):
                refused.append(uuid)
        return rows, refused


# --- the markers of a full state, found in its bytes --------------------------------------

# The Yjs (lib0, v1) encoding of an update: a varuint count of writers; for each, its count
# of structs, its id and its first clock, then the structs; then the delete set. A map entry
# written without an earlier value under its key is an item whose info byte says: no left
# or right origin, a key (parent_sub), content "any"; then its parent (1: a root's name),
# the root's name and the key as strings (varuint length, UTF-8), and the content: one
# value, a byte string (lib0's tag 116, varuint length, bytes). This is what pycrdt writes
# for a table map's key set to bytes with no earlier value under it.
cdef unsigned char ENTRY_INFO = 0x28
cdef unsigned char ANY_BYTES = 116

#: A full state with more distinct roots is left to pycrdt (a database has a map a table,
#: a few dozen; a root is found by a walk over those seen).
MAX_ROOTS = 256

#: yrs keeps 53 bits of a writer's id (``ClientID::new``: the bits above are set), so two
#: ids that differ above them are one writer to it: an id this large is left to pycrdt (the
#: ids crdtdb draws are under 2**32).
MAX_WRITER = 2**53 - 1
cdef uint64_t C_MAX_WRITER = MAX_WRITER
cdef Py_ssize_t C_MAX_ROOTS = MAX_ROOTS


cdef struct Entry:
    uint64_t prefix      # the key's first eight bytes, big-endian, zero-padded: sorts first
    Py_ssize_t root      # index of the root's name
    Py_ssize_t key       # offset and length of the key's bytes
    Py_ssize_t key_len
    Py_ssize_t value     # of the value's bytes
    Py_ssize_t value_len


cdef const unsigned char *_SORT_BASE = NULL  # (the update being sorted: qsort has no context)


cdef int _entry_order(const void *a, const void *b) noexcept nogil:
    """Root, then key bytes (UTF-8: the order of the keys as Python strings)."""
    cdef const Entry *x = <const Entry *>a
    cdef const Entry *y = <const Entry *>b
    cdef int c
    if x.root != y.root:
        return -1 if x.root < y.root else 1
    if x.prefix != y.prefix:
        return -1 if x.prefix < y.prefix else 1
    c = memcmp(_SORT_BASE + x.key, _SORT_BASE + y.key,
               <size_t>(x.key_len if x.key_len < y.key_len else y.key_len))
    if c:
        return c
    return (x.key_len > y.key_len) - (x.key_len < y.key_len)


cdef inline Py_ssize_t _varuint(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                                uint64_t *out) noexcept nogil:
    """The varuint at ``pos`` (at most nine bytes) into ``out``; the position after it, or
    BAD."""
    cdef uint64_t n = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if pos >= end or shift > 56:
            return BAD
        b = p[pos]
        pos += 1
        n |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = n
            return pos
        shift += 7


cdef inline Py_ssize_t _lib0_string(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                                    Py_ssize_t *start, Py_ssize_t *size) noexcept nogil:
    cdef uint64_t n
    pos = _varuint(p, pos, end, &n)
    if pos == BAD or n > <uint64_t>(end - pos):
        return BAD
    start[0] = pos
    size[0] = <Py_ssize_t>n
    return pos + <Py_ssize_t>n


def root_map_entries(update):
    """For an update that only sets keys of root maps to byte strings, each key once, with
    nothing deleted, every writer from its first clock (a compacted full state, such as a
    node joining reads whole): ``{root name: (keys, spans)}``, each root's keys sorted, and
    where each one's value lies in ``update``, as :meth:`MarkersReader.read_spans` takes
    them. ``None`` for anything else, found or not understood (an origin, another content,
    a key set twice, a deletion, a writer twice or over :data:`MAX_WRITER`, trailing
    bytes ...): the caller asks pycrdt then.

    Applied to an empty document, such an update makes exactly these maps: every item is
    integrated at once (nothing precedes it: no origin, first clocks), none is deleted, and
    a key set once has that value. Where these bytes are so understood, pycrdt's keys and a
    ``get`` per key (~0.2 s of a 100k-flow join, a bytearray copied out of each value) and
    the sort of the keys (~0.06 s) are not needed."""
    if type(update) is not bytes:
        return None
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(update)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(update)
    cdef Py_ssize_t pos = 0, n_entries = 0, capacity = 0, r, i, j, k, first
    cdef Py_ssize_t root_at, root_len, key_at, key_len, value_len
    cdef Py_ssize_t last_root = -1, n_roots = 0
    cdef uint64_t n_writers, n_structs, writer, clock, v, w, wi, si
    cdef Entry *entries = NULL
    cdef Entry *grown
    cdef Entry *e
    cdef Py_ssize_t *root_names = NULL  # (offset, length) of each distinct root's name
    cdef Py_ssize_t *at
    cdef set writers = set()
    cdef dict out = {}
    cdef list keys
    cdef bytes spans
    global _SORT_BASE
    root_names = <Py_ssize_t *>PyMem_Malloc(2 * C_MAX_ROOTS * sizeof(Py_ssize_t))
    if root_names == NULL:
        raise MemoryError()
    try:
        pos = _varuint(p, pos, end, &n_writers)
        if pos == BAD:
            return None
        for wi in range(n_writers):
            pos = _varuint(p, pos, end, &n_structs)
            if pos == BAD:
                return None
            pos = _varuint(p, pos, end, &writer)
            if pos == BAD:
                return None
            pos = _varuint(p, pos, end, &clock)
            if pos == BAD or clock != 0 or writer > C_MAX_WRITER or writer in writers:
                return None
            writers.add(writer)
            if n_structs > <uint64_t>(end - pos):  # (each is several bytes)
                return None
            for si in range(n_structs):
                if pos >= end or p[pos] != ENTRY_INFO:
                    return None
                pos = _varuint(p, pos + 1, end, &v)
                if pos == BAD or v != 1:  # (1: the parent is a root, by name)
                    return None
                pos = _lib0_string(p, pos, end, &root_at, &root_len)
                if pos == BAD:
                    return None
                pos = _lib0_string(p, pos, end, &key_at, &key_len)
                if pos == BAD:
                    return None
                pos = _varuint(p, pos, end, &v)
                if pos == BAD or v != 1 or pos >= end or p[pos] != ANY_BYTES:
                    return None
                pos = _lib0_string(p, pos + 1, end, &k, &value_len)
                if pos == BAD:
                    return None
                # Which root: mostly the previous entry's.
                if last_root < 0 or root_len != root_names[2 * last_root + 1] or memcmp(
                        p + root_at, p + root_names[2 * last_root], <size_t>root_len):
                    last_root = -1
                    for r in range(n_roots):
                        if root_len == root_names[2 * r + 1] and not memcmp(
                                p + root_at, p + root_names[2 * r], <size_t>root_len):
                            last_root = r
                            break
                    if last_root < 0:
                        if n_roots == C_MAX_ROOTS:
                            return None
                        root_names[2 * n_roots] = root_at
                        root_names[2 * n_roots + 1] = root_len
                        last_root = n_roots
                        n_roots += 1
                if n_entries == capacity:
                    capacity = 2 * capacity if capacity else 1024
                    grown = <Entry *>PyMem_Realloc(entries, capacity * sizeof(Entry))
                    if grown == NULL:
                        raise MemoryError()
                    entries = grown
                e = &entries[n_entries]
                n_entries += 1
                w = 0
                for j in range(8):
                    w = (w << 8) | (p[key_at + j] if j < key_len else 0)
                e.prefix = w
                e.root = last_root
                e.key = key_at
                e.key_len = key_len
                e.value = k
                e.value_len = value_len
        pos = _varuint(p, pos, end, &v)
        if pos != end or v != 0:  # (an empty delete set, and nothing after it)
            return None
        if n_entries:
            _SORT_BASE = p
            qsort(entries, n_entries, sizeof(Entry), _entry_order)
            _SORT_BASE = NULL
        first = 0
        while first < n_entries:
            r = entries[first].root
            i = first
            while i < n_entries and entries[i].root == r:
                i += 1
            keys = []
            spans = PyBytes_FromStringAndSize(NULL, (i - first) * 2 * sizeof(Py_ssize_t))
            at = <Py_ssize_t *>PyBytes_AS_STRING(spans)
            for j in range(first, i):
                e = &entries[j]
                if j > first and e.key_len == (e - 1).key_len and not memcmp(
                        p + e.key, p + (e - 1).key, <size_t>e.key_len):
                    return None  # (a key set twice)
                keys.append(PyUnicode_DecodeUTF8(<const char *>p + e.key, e.key_len, NULL))
                at[2 * (j - first)] = e.value
                at[2 * (j - first) + 1] = e.value_len
            name = PyUnicode_DecodeUTF8(<const char *>p + root_names[2 * r],
                                        root_names[2 * r + 1], NULL)
            out[name] = (keys, spans)
            first = i
        return out
    except UnicodeDecodeError:
        return None
    finally:
        PyMem_Free(entries)
        PyMem_Free(root_names)


# --- registers merged: Replica._merge_rows ------------------------------------------------

#: How :func:`register_rows` reads a register column's values (encoding.register_form):
#: through the column's Python reader; one integer (its bounds given); a ``_version``.
REGISTER_OTHER = 0
REGISTER_INT = 1
REGISTER_VERSION = 2


cdef Py_ssize_t _int_end(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end) noexcept:
    """The end of the msgpack integer at ``pos`` (any width), or BAD: not one, or cut."""
    cdef unsigned char b
    cdef Py_ssize_t size
    if pos >= end:
        return BAD
    b = p[pos]
    if b <= 0x7f or b >= 0xe0:
        size = 0
    elif 0xcc <= b <= 0xcf:
        size = 1 << (b - 0xcc)
    elif 0xd0 <= b <= 0xd3:
        size = 1 << (b - 0xd0)
    else:
        return BAD
    return pos + 1 + size if end - pos - 1 >= size else BAD


cdef tuple _fast_register(const unsigned char *p, Py_ssize_t end, int form, long long low,
                          long long high):
    """``(birth, datum)`` of a register of ``form`` (INT or VERSION) read from its bytes as
    encoding.register_reader reads it, or None: anything else (that reader answers)."""
    cdef Py_ssize_t pos, stop
    cdef long long birth, v
    if end < 3 or p[0] != 0x92:
        return None
    stop = _int_end(p, 1, end)
    if stop == BAD or not _int_span(p, 1, stop, &birth):
        return None
    pos = stop
    if form == REGISTER_INT:
        if end - pos < 2 or p[pos] != 0x91 or not _int_span(p, pos + 1, end, &v):
            return None
        if v < low or v > high:
            return None
        return (birth, (v,))
    if end - pos != 38 or p[pos] != 0xd9 or p[pos + 1] != 36 or not _is_stored_uuid(
            p + pos + 2):
        return None
    return (birth, (PyUnicode_DecodeASCII(<const char *>p + pos + 2, 36, NULL),))


def register_rows(list events, str sep, dict raws, dict forms, dict extras, dict births,
                  unpack, decode_error):
    """The new rows of Replica._merge_rows for ``events`` (``(table, key, action, value)``
    of map events): ``{(table, uuid): row}`` (``None``: to read whole), every key booked
    into ``extras``; or ``None``, with nothing booked, unless every event sets a register
    (``U<sep>column``) of a column in ``forms`` (``table -> column name -> (column, form,
    low, high, index)``, see encoding.register_form) of a row in ``raws`` (``table -> uuid
    -> row``).

    Registers of INT and VERSION columns are read from their bytes here; a value that is
    not one such a column writes (another width, a string that is not a stored uuid, a
    bound passed, bytes after it), and the registers of other columns, are read by
    ``unpack(column, value)`` (encoding.unpack_register); ``decode_error`` from it makes
    the row one to read whole, as in the Python loop."""
    cdef dict rows = {}
    cdef list keyed = []  # per event: its row's key, its column's form
    cdef object rk = None, t, key, action, value, u, found, info, row, keys, birth, b, d
    cdef object current = None
    cdef list parts
    cdef tuple ev, fast
    cdef dict table_extras
    cdef Py_ssize_t i, n = len(events), index
    cdef Py_buffer view
    cdef int form
    for i in range(n):
        ev = <tuple>events[i]
        t = ev[0]
        key = ev[1]
        if ev[2] == "delete":
            return None
        parts = (<str>key).split(sep)
        if len(parts) != 2:
            return None
        u = parts[0]
        if rk is None or (<tuple>rk)[1] != u or (<tuple>rk)[0] != t:
            rk = (t, u)
            if rk not in rows:
                found = (<dict>raws[t]).get(u)
                if found is None:
                    return None
                rows[rk] = found
        info = (<dict>forms[t]).get(parts[1])
        if info is None:
            return None
        keyed.append(rk)
        keyed.append(info)
    # Taken: the keys booked, then the new rows.
    for i in range(n):
        ev = <tuple>events[i]
        rk = keyed[2 * i]
        info = keyed[2 * i + 1]
        if rk is not current:
            current = rk
            u = (<tuple>rk)[1]
            table_extras = <dict>extras[ev[0]]
            keys = table_extras.get(u)
            if keys is None:
                keys = table_extras[u] = set()
            row = rows[rk]
            if type(row) is tuple:  # (its raw row: the row's first event)
                row = rows[rk] = list(row)
            birth = (<dict>births[ev[0]]).get(u, 0)
        (<set>keys).add(ev[1])
        if row is None:
            continue
        value = ev[3]
        form = (<tuple>info)[1]
        fast = None
        if form != REGISTER_OTHER:
            if type(value) is bytes:
                fast = _fast_register(<const unsigned char *>PyBytes_AS_STRING(value),
                                      PyBytes_GET_SIZE(value), form, (<tuple>info)[2],
                                      (<tuple>info)[3])
            elif type(value) is bytearray:  # (what pycrdt gives)
                PyObject_GetBuffer(value, &view, PyBUF_SIMPLE)
                try:
                    fast = _fast_register(<const unsigned char *>view.buf, view.len, form,
                                          (<tuple>info)[2], (<tuple>info)[3])
                finally:
                    PyBuffer_Release(&view)
        if fast is not None:
            b = fast[0]
            d = fast[1]
        else:
            try:
                b, d = unpack((<tuple>info)[0], value)
            except decode_error:
                row = rows[rk] = None  # (read whole by the caller)
                continue
        if b == birth:
            index = (<tuple>info)[4]
            (<list>row)[index] = d
    for rk, row in rows.items():
        if row is not None:
            rows[rk] = tuple(<list>row)
    return rows
