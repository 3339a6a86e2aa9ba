"""Length-prefixed frames on a byte stream (sans-I/O): a u32 big-endian length, then the frame.

The decoder never buffers more than one frame plus its header: a length over
``max_frame_bytes`` is a :class:`RemoteProtocolError` before any of the frame is read.
"""

from __future__ import annotations

import struct

from crdtdb.errors import CrdtdbError

DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class LocalProtocolError(CrdtdbError):
    """The caller tried to send something the framing cannot carry."""


class RemoteProtocolError(CrdtdbError):
    """The peer sent something the framing does not allow (drop the connection)."""


def frame(payload: bytes, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    if len(payload) > max_frame_bytes:
        raise LocalProtocolError(f"frame of {len(payload)} bytes exceeds {max_frame_bytes}")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete frame, or ``None`` until more data arrives."""
        if len(self._buf) < _HEADER.size:
            return None
        (n,) = _HEADER.unpack_from(self._buf)
        if n > self.max_frame_bytes:
            raise RemoteProtocolError(f"peer announced a frame of {n} bytes "
                                      f"(limit {self.max_frame_bytes})")
        end = _HEADER.size + n
        if len(self._buf) < end:
            return None
        out = bytes(self._buf[_HEADER.size:end])
        del self._buf[:end]
        return out
