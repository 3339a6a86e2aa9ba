# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Compiled twins of the header reads :mod:`crdtdb.replica.envelope` makes on every update a
replica merges: a single writer's span and the delete set's ranges.

In Python each is a loop over a few varints, byte by byte: ~11k instructions for the span's
four and ~4k for a short delete set, of the ~190k a node spends on a merged update (callgrind,
sims/merge_harness.py). Here they are a few hundred.

Exactness, for *any* input: a result is returned only where these functions understood
everything; anything else (a varint of more than nine bytes, which may hold more than 63
bits, a malformed or truncated delete set) is left to the Python function, which says why: ``single_writer_span`` calls it,
``delete_set_ranges`` returns ``None`` for the caller to. tests/test_replica_envelope.py runs
both on random and damaged headers.

``ABI`` changes whenever this module's interface does; envelope.py uses the module only when
it finds the ABI it was written for (a stale build left in a tree then falls back to Python).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc

ABI = 1

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


def delete_set_ranges(tail, writer):
    """:func:`crdtdb.replica.envelope._delete_set_ranges` where the delete set is well formed
    and its varints (and ``writer``) fit 63 bits; ``None`` otherwise (the Python function
    says what is wrong, or reads the longer varints)."""
    if type(tail) is not bytes or type(writer) is not int or not 0 <= writer < 2**63:
        return None
    cdef unsigned long long client = writer
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(tail)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(tail)
    if end == 0:
        return None
    # At most one value per byte.
    cdef unsigned long long *v = <unsigned long long *>PyMem_Malloc(
        end * sizeof(unsigned long long))
    if v == NULL:
        raise MemoryError()
    cdef Py_ssize_t n = 0
    cdef Py_ssize_t pos = 0
    cdef Py_ssize_t i, j
    cdef unsigned long long k, n_writers, owner, n_ranges
    cdef list out = []
    try:
        while pos < end:
            pos = _varint(p, pos, end, &v[n])
            if pos < 0:
                return None
            n += 1
        if n < 2 or v[0] != 0:
            return None
        n_writers = v[1]
        i = 2
        k = 0
        while k < n_writers:
            if i + 1 >= n:
                return None
            owner = v[i]
            n_ranges = v[i + 1]
            i += 2
            if n_ranges > <unsigned long long>((n - i) // 2):
                return None
            if owner != client:
                for j in range(i, i + 2 * <Py_ssize_t>n_ranges, 2):
                    out.append((owner, v[j], v[j + 1]))
            i += 2 * <Py_ssize_t>n_ranges
            k += 1
        if i != n:
            return None
        return out
    finally:
        PyMem_Free(v)
