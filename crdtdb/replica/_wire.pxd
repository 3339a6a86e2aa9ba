# cython: language_level=3
# Reading helpers the compiled modules share (_markers.pyx, _envelope.pyx): inline, so this
# file is only included where cimported, never built on its own.


cdef inline unsigned long long be_uint(const unsigned char *p, int n) noexcept nogil:
    """The ``n`` bytes at ``p`` as a big-endian unsigned integer (msgpack's widths)."""
    cdef unsigned long long v = 0
    cdef int k
    for k in range(n):
        v = (v << 8) | p[k]
    return v
