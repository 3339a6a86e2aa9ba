# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twins of the reads :mod:`crdtdb.replica.envelope` makes of every update a
replica merges: a single writer's span (``single_writer_span``, of a local commit's update)
and the walk over an update's structure that also finds its span and the other writers'
items it deletes (``survey``: a merged push's ~60 bytes, or a join's ~100k items).

In Python each is a loop over varints, byte by byte: ~11k instructions for the span's four
alone, of the ~190k a node spent on a merged update (callgrind, sims/merge_harness.py).

Exactness, for *any* input: ``single_writer_span`` leaves a varint of more than nine bytes
(it may hold more than 63 bits) to the Python function; ``survey`` refuses what its twin
refuses, with the same words. tests/test_replica_envelope.py and
tests/test_replica_structure.py run both on random and damaged updates.

``ABI`` changes whenever this module's interface does; envelope.py uses the module only when
it finds the ABI it was written for (a stale build left in a tree then falls back to Python).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

from crdtdb.replica._wire cimport be_uint

ABI = 4

#: _varint's answers besides a position: the bytes end inside the varint; it is longer than
#: nine bytes (it may hold more than 63 bits: Python's ints take it, a C integer may not).
cdef Py_ssize_t TRUNCATED = -1
cdef Py_ssize_t TOO_LONG = -2


cdef inline Py_ssize_t _varint(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                               unsigned long long *out) noexcept:
    """The varuint at ``pos`` into ``out``; the position after it, or TRUNCATED / TOO_LONG."""
    cdef unsigned long long n = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if pos >= end:
            return TRUNCATED
        if shift > 56:
            return TOO_LONG
        b = p[pos]
        pos += 1
        n |= (<unsigned long long>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = n
            return pos
        shift += 7


def single_writer_span(update):
    """:func:`crdtdb.replica.envelope.single_writer_span`."""
    if type(update) is not bytes:
        return _python_span(update)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(update)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(update)
    cdef Py_ssize_t pos = 0
    cdef unsigned long long v[4]
    cdef int k
    for k in range(4):
        pos = _varint(p, pos, end, &v[k])
        if pos == TRUNCATED:
            return None
        if pos == TOO_LONG:
            return _python_span(update)
        if k == 0 and v[0] != 1:
            return None  # not exactly one client
    return (v[2], v[3], v[1])


def _python_span(update):
    """The Python function's answer (imported here: envelope.py imports this module)."""
    from crdtdb.replica.envelope import _single_writer_span
    return _single_writer_span(update)


# --- the structure of an update, its span and deletes (envelope._survey) ---------------

cdef unsigned long long C_MAX_WRITER = 2**53 - 1
cdef unsigned long long U32 = 2**32
cdef unsigned long long C_MAX_CLOCK = 2**31 - 1  # (envelope.MAX_CLOCK)
cdef int C_MAX_ANY_DEPTH = 32


cdef inline Py_ssize_t _u32(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                            unsigned long long *out) noexcept:
    """envelope._u32: a varuint under 2**32, or a negative position."""
    pos = _varint(p, pos, end, out)
    if pos >= 0 and out[0] >= U32:
        return TRUNCATED
    return pos


cdef inline Py_ssize_t _skip_id(const unsigned char *p, Py_ssize_t pos,
                                Py_ssize_t end) noexcept:
    cdef unsigned long long v
    pos = _varint(p, pos, end, &v)
    if pos < 0 or v > C_MAX_WRITER:
        return TRUNCATED
    return _u32(p, pos, end, &v)


cdef inline Py_ssize_t _skip_bytes(const unsigned char *p, Py_ssize_t pos,
                                   Py_ssize_t end) noexcept:
    """Past a lib0 buffer, or a negative position (malformed)."""
    cdef unsigned long long n
    pos = _u32(p, pos, end, &n)
    if pos < 0 or n > <unsigned long long>(end - pos):
        return TRUNCATED
    return pos + <Py_ssize_t>n


cdef bint _is_utf8(const unsigned char *p, Py_ssize_t n) noexcept:
    """Whether ``n`` bytes at ``p`` are UTF-8 as Rust's ``from_utf8`` (and Python's strict
    decoder) take it: no overlong forms, surrogates or code points past U+10FFFF."""
    cdef Py_ssize_t i = 0, k, more
    cdef unsigned char c, lo, hi
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF  # (the first continuation byte's range)
        if 0xC2 <= c <= 0xDF:
            more = 1
        elif 0xE0 <= c <= 0xEF:
            more = 2
            if c == 0xE0:
                lo = 0xA0
            elif c == 0xED:
                hi = 0x9F
        elif 0xF0 <= c <= 0xF4:
            more = 3
            if c == 0xF0:
                lo = 0x90
            elif c == 0xF4:
                hi = 0x8F
        else:
            return False
        if n - i - 1 < more or not lo <= p[i + 1] <= hi:
            return False
        for k in range(i + 2, i + 1 + more):
            if not 0x80 <= p[k] <= 0xBF:
                return False
        i += 1 + more
    return True


cdef inline Py_ssize_t _skip_str(const unsigned char *p, Py_ssize_t pos,
                                 Py_ssize_t end) noexcept:
    """envelope._skip_str: past a lib0 string of UTF-8, or a negative position."""
    cdef Py_ssize_t start
    cdef unsigned long long n
    start = _u32(p, pos, end, &n)
    if start < 0 or n > <unsigned long long>(end - start):
        return TRUNCATED
    if not _is_utf8(p + start, <Py_ssize_t>n):
        return TRUNCATED
    return start + <Py_ssize_t>n


cdef Py_ssize_t _skip_any(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                          int depth) noexcept:
    cdef unsigned char tag
    cdef unsigned long long n, i
    cdef int k
    if pos >= end or depth > C_MAX_ANY_DEPTH:
        return TRUNCATED
    tag = p[pos]
    pos += 1
    if tag == 127 or tag == 126 or tag == 121 or tag == 120:
        return pos
    if tag == 125:
        for k in range(10):
            if pos + k >= end:
                return TRUNCATED
            if p[pos + k] < 0x80:
                return pos + k + 1
        return TRUNCATED
    if tag == 124:
        return pos + 4 if end - pos >= 4 else TRUNCATED
    if tag == 123 or tag == 122:
        return pos + 8 if end - pos >= 8 else TRUNCATED
    if tag == 119:
        return _skip_str(p, pos, end)
    if tag == 116:
        return _skip_bytes(p, pos, end)
    if tag == 118 or tag == 117:
        pos = _u32(p, pos, end, &n)
        if pos < 0 or n > <unsigned long long>(end - pos):
            return TRUNCATED
        i = 0
        while i < n:
            if tag == 118:
                pos = _skip_str(p, pos, end)
                if pos < 0:
                    return TRUNCATED
            pos = _skip_any(p, pos, end, depth + 1)
            if pos < 0:
                return TRUNCATED
            i += 1
        return pos
    return TRUNCATED


def survey(update):
    """:func:`crdtdb.replica.envelope._survey`."""
    if type(update) is not bytes:
        from crdtdb.replica.envelope import _survey
        return _survey(update)
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(update)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(update)
    cdef Py_ssize_t pos = 0
    cdef unsigned long long n_writers, n_structs, writer, clock, v, n, w, s, i
    cdef unsigned long long first_writer = 0, first_end = 0
    cdef dict ends = None  # (the writers after the first: most updates have one)
    cdef object own_end
    cdef unsigned long long n_owners, owner, first_owner = 0, n_ranges, start, length, o, r
    cdef set owners
    cdef unsigned char info
    cdef int kind
    cdef object span = None
    cdef list deletes = []
    pos = _u32(p, pos, end, &n_writers)
    if pos < 0 or n_writers > <unsigned long long>end:
        return "truncated or malformed"
    w = 0
    while w < n_writers:
        pos = _u32(p, pos, end, &n_structs)
        if pos < 0:
            return "truncated or malformed"
        pos = _varint(p, pos, end, &writer)
        if pos < 0:
            return "truncated or malformed"
        pos = _u32(p, pos, end, &clock)
        if pos < 0:
            return "truncated or malformed"
        if writer > C_MAX_WRITER:
            return f"writer id {writer} over 53 bits"
        if w == 0:
            first_writer = writer
            if n_writers == 1:
                span = (writer, clock, n_structs)
        else:
            if ends is None:
                ends = {first_writer: first_end}
            if writer in ends:
                return f"writer {writer} twice"
        if clock > C_MAX_CLOCK:
            return f"writer {writer}'s clocks past 31 bits"
        if n_structs > <unsigned long long>(end - pos):
            return "truncated or malformed"
        s = 0
        while s < n_structs:
            if pos >= end:
                return "truncated or malformed"
            info = p[pos]
            pos += 1
            if info == 0 or info == 10:
                pos = _u32(p, pos, end, &v)
                if pos < 0:
                    return "truncated or malformed"
                clock += v
                if clock > C_MAX_CLOCK:
                    return f"writer {writer}'s clocks past 31 bits"
                s += 1
                continue
            if info & 0x80:
                pos = _skip_id(p, pos, end)
                if pos < 0:
                    return "truncated or malformed"
            if info & 0x40:
                pos = _skip_id(p, pos, end)
                if pos < 0:
                    return "truncated or malformed"
            if not info & 0xC0:
                pos = _u32(p, pos, end, &v)
                if pos < 0:
                    return "truncated or malformed"
                if v == 1:  # (a root's name)
                    pos = _skip_str(p, pos, end)
                elif v == 0:
                    pos = _skip_id(p, pos, end)
                else:
                    return "truncated or malformed"
                if pos < 0:
                    return "truncated or malformed"
                if info & 0x20:  # (a key)
                    pos = _skip_str(p, pos, end)
                    if pos < 0:
                        return "truncated or malformed"
            kind = info & 0x0F
            if kind == 1:
                pos = _u32(p, pos, end, &v)
            elif kind == 8:
                pos = _u32(p, pos, end, &n)
                if pos < 0 or n > <unsigned long long>(end - pos):
                    return "truncated or malformed"
                i = 0
                while i < n:
                    pos = _skip_any(p, pos, end, 0)
                    if pos < 0:
                        return "truncated or malformed"
                    i += 1
                v = n
            else:
                return f"content of kind {kind}"
            if pos < 0:
                return "truncated or malformed"
            clock += v
            if clock > C_MAX_CLOCK:
                return f"writer {writer}'s clocks past 31 bits"
            s += 1
        if w == 0:
            first_end = clock
        else:
            ends[writer] = clock
        w += 1
    # The delete set: per deleting writer (each once: yrs keeps the last list only), its
    # ranges; those of other writers than a span's are the deletes returned.
    pos = _u32(p, pos, end, &n_owners)
    if pos < 0 or n_owners > <unsigned long long>(end - pos):
        return "truncated or malformed"
    owners = None
    o = 0
    while o < n_owners:
        pos = _varint(p, pos, end, &owner)
        if pos < 0 or owner > C_MAX_WRITER:
            return "truncated or malformed"
        if o == 0:
            first_owner = owner
        else:
            if owners is None:
                owners = {first_owner}
            if owner in owners:
                return f"deletes of writer {owner} twice"
            owners.add(owner)
        pos = _u32(p, pos, end, &n_ranges)
        if pos < 0 or n_ranges > <unsigned long long>(end - pos):
            return "truncated or malformed"
        r = 0
        while r < n_ranges:
            pos = _u32(p, pos, end, &start)
            if pos < 0:
                return "truncated or malformed"
            pos = _u32(p, pos, end, &length)
            if pos < 0:
                return "truncated or malformed"
            if start + length > C_MAX_CLOCK:
                return f"deletes of writer {owner} past 31-bit clocks"
            if length != 0:
                # (a writer's items past its block: see envelope._survey)
                if n_writers > 0 and owner == first_writer:
                    if start + length > first_end:
                        return f"deletes of writer {owner}'s items past its clock"
                elif ends is not None:
                    own_end = ends.get(owner)
                    if own_end is not None and start + length > <unsigned long long>own_end:
                        return f"deletes of writer {owner}'s items past its clock"
                if span is not None and owner != first_writer:
                    deletes.append((owner, start, length))
            r += 1
        o += 1
    if pos != end:
        return "bytes after the delete set"
    return span, deletes


# --- a sealed update's fields (envelope.open_sealed_fields) -------------------------------

cdef Py_ssize_t _uint_at(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                         unsigned long long *out) noexcept:
    """A msgpack integer that is not negative (a positive fixint, uint 8 to 64) at ``pos``:
    the position after it, or TRUNCATED (anything else)."""
    cdef int size
    if pos >= end:
        return TRUNCATED
    if p[pos] <= 0x7f:
        out[0] = p[pos]
        return pos + 1
    if not 0xcc <= p[pos] <= 0xcf:
        return TRUNCATED
    size = 1 << (p[pos] - 0xcc)
    if end - pos - 1 < size:
        return TRUNCATED
    out[0] = be_uint(p + pos + 1, size)
    return pos + 1 + size


cdef Py_ssize_t _raw_at(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end,
                        bint text, Py_ssize_t *n) noexcept:
    """A msgpack str (``text``: fixstr, str 8 to 32) or bin (bin 8 to 32) at ``pos``: where
    its ``n`` bytes start, or TRUNCATED."""
    cdef unsigned char b
    cdef int size
    cdef unsigned long long length
    if pos >= end:
        return TRUNCATED
    b = p[pos]
    if text and 0xa0 <= b <= 0xbf:
        length = b & 0x1f
        pos += 1
    else:
        if text and 0xd9 <= b <= 0xdb:
            size = 1 << (b - 0xd9)
        elif not text and 0xc4 <= b <= 0xc6:
            size = 1 << (b - 0xc4)
        else:
            return TRUNCATED
        if end - pos - 1 < size:
            return TRUNCATED
        length = be_uint(p + pos + 1, size)
        pos += 1 + size
    if length > <unsigned long long>(end - pos):  # (unsigned: no cast can wrap first)
        return TRUNCATED
    n[0] = <Py_ssize_t>length
    return pos


def sealed_fields(payload, Py_ssize_t max_bin_bytes):
    """The eight fields of a sealed update (``[format, schema, epoch, base, client_id,
    body, digest, codec]``) read from ``payload``'s msgpack as :func:`msgpack.unpackb`
    reads them, where each is of the type envelope.open_sealed_fields checks (integers
    not negative, strings UTF-8, no byte string over ``max_bin_bytes``) and nothing
    follows; None for anything else (msgpack and the Python checks then say what)."""
    if type(payload) is not bytes:
        return None
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(payload)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t pos, n, k
    cdef unsigned long long v
    cdef list out = []
    if end < 1 or p[0] != 0x98:  # (a fixarray of 8)
        return None
    pos = 1
    for k in range(8):
        if k == 0 or k == 2 or k == 4:
            pos = _uint_at(p, pos, end, &v)
            if pos < 0:
                return None
            out.append(v)
        else:
            pos = _raw_at(p, pos, end, k == 1 or k == 7, &n)
            if pos < 0:
                return None
            if k == 1 or k == 7:
                try:
                    out.append(PyUnicode_DecodeUTF8(<const char *>p + pos, n, NULL))
                except UnicodeDecodeError:
                    return None
            else:
                if n > max_bin_bytes:
                    return None
                out.append(PyBytes_FromStringAndSize(<const char *>p + pos, n))
            pos += n
    if pos != end:
        return None
    return out
