"""Typed errors shared by every layer of crdtdb.

Two families matter to callers:

* :class:`OvsdbError` is an error that OVSDB defines: it has the ``error`` tag, ``details`` text and
  optional ``syntax`` member that ovsdb-server puts in a transaction result or JSON-RPC reply, and
  :meth:`OvsdbError.to_json` gives exactly that object.
* :class:`SchemaError` is raised for a malformed ``.ovsschema``; it names the table and column.
"""

from __future__ import annotations

from typing import Any


class CrdtdbError(Exception):
    """Base class of every exception crdtdb raises on purpose."""


class SchemaError(CrdtdbError):
    """An ``.ovsschema`` document is malformed.

    ``table`` and ``column`` say where (``None`` when the problem is at database level).
    """

    def __init__(self, message: str, *, table: str | None = None, column: str | None = None):
        self.message = message
        self.table = table
        self.column = column
        where = []
        if table is not None:
            where.append(f"table {table}")
        if column is not None:
            where.append(f"column {column}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class OvsdbError(CrdtdbError):
    """An OVSDB error object: ``{"error": tag, "details": ..., "syntax": ...}``.

    The tag is one of RFC 7047's (``"constraint violation"``, ``"syntax error"``...) and the
    details follow ovsdb-server's wording, so clients that match on them keep working.
    """

    def __init__(self, tag: str, details: str | None = None, syntax: str | None = None):
        self.tag = tag
        self.details = details
        self.syntax = syntax
        super().__init__(f"{tag}: {details}" if details else tag)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"error": self.tag}
        if self.details is not None:
            obj["details"] = self.details
        if self.syntax is not None:
            obj["syntax"] = self.syntax
        return obj

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OvsdbError):
            return NotImplemented
        return (self.tag, self.details, self.syntax) == (other.tag, other.details, other.syntax)

    def __hash__(self) -> int:
        return hash((self.tag, self.details, self.syntax))


class WouldBlock(CrdtdbError):
    """A ``*_nowait`` call cannot finish now: a ``wait`` operation is not satisfied yet.

    ``timeout_ms`` is the smallest ``wait`` timeout in the transaction (``None``: none).
    """

    def __init__(self, timeout_ms: int | None):
        self.timeout_ms = timeout_ms
        super().__init__(f"transaction blocked on a wait (timeout {timeout_ms} ms)")


class DecodeError(CrdtdbError):
    """Bytes from elsewhere (a peer, a log file) do not decode to a valid value.

    Raised instead of whatever the underlying decoder throws, so a caller can drop the frame
    or the peer with one ``except``.
    """
