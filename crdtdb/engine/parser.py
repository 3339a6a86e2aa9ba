"""``ovsdb_parser``: member-by-member parsing of a JSON object with OVS's error rules.

The first problem wins and later ones are ignored; members nobody asked for are reported when
the parse finishes. Error details read "Parsing <name> failed: <message>" and carry the object
as ``syntax``, exactly as ovsdb-server words them.
"""

from __future__ import annotations

from typing import Any

from crdtdb.engine import ovsjson
from crdtdb.engine.ovshash import shash_order
from crdtdb.engine.ovsjson import Kind
from crdtdb.errors import OvsdbError

#: Sets of acceptable JSON kinds for :meth:`ObjectParser.member`.
OBJECT = frozenset({Kind.OBJECT})
ARRAY = frozenset({Kind.ARRAY})
STRING = frozenset({Kind.STRING})
INTEGER = frozenset({Kind.INTEGER})
NUMBER = frozenset({Kind.INTEGER, Kind.REAL})
BOOLEAN = frozenset({Kind.TRUE, Kind.FALSE})
#: A string that is an OVSDB <id>.
ID = frozenset()

_MISSING = object()
#: What :func:`ovsjson.kind` answers for every value of these exact types.
_PLAIN_KIND = {dict: Kind.OBJECT, list: Kind.ARRAY, str: Kind.STRING}


class ObjectParser:
    def __init__(self, value: Any, name: str):
        self.name = name
        self.obj: dict | None = value if isinstance(value, dict) else None
        self.used: set[str] = set()
        self.error: OvsdbError | None = None
        if self.obj is None:
            self.raise_error("Object expected.")

    def raise_error(self, message: str) -> None:
        if self.error is None:
            syntax = ovsjson.to_string(self.obj) if self.obj is not None else None
            self.error = OvsdbError("syntax error", f"Parsing {self.name} failed: {message}",
                                    syntax)

    def member(self, name: str, kinds: frozenset[Kind], optional: bool = False) -> Any:
        """The member's value, or ``None`` (and maybe a recorded error) if absent or wrong.

        ``kinds`` is one of this module's constants; :data:`ID` asks for an <id> string.
        """
        if self.obj is None:
            return None
        value = self.obj.get(name, _MISSING)
        if value is _MISSING:
            if not optional:
                self.raise_error(f"Required '{name}' member is missing.")
            return None
        if kinds is ID:
            ok = type(value) is str and ovsjson.is_id(value)
        else:
            # The usual value's own type answers without classifying it (kind() is most of
            # a member's cost); any other goes through kind().
            ok = _PLAIN_KIND.get(type(value)) in kinds or ovsjson.kind(value) in kinds
        if ok:
            self.used.add(name)
            return value
        self.raise_error(f"Type mismatch for member '{name}'.")
        return None

    def finish(self) -> OvsdbError | None:
        if self.error is None and self.obj is not None and len(self.obj) != len(self.used):
            unused = [k for k in shash_order(self.obj) if k not in self.used]
            if len(unused) == 1:
                self.raise_error(f"Member '{unused[0]}' is present but not allowed here.")
            elif unused:
                n = len(unused) - 1
                self.raise_error(f"Member '{unused[0]}' and {n} other member{'s' if n > 1 else ''}"
                                 " are present but not allowed here.")
        return self.error
