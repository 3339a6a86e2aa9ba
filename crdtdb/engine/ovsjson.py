"""How ovsdb-server sees a JSON value that Python's :mod:`json` parsed.

OVS's JSON parser turns every integral number that fits in int64 into an integer (``1.0`` and
``2e3`` included) and every other number into a double. Python keeps the spelling instead, so the
engine classifies values through :func:`kind` and never through ``isinstance`` alone. The
``syntax`` member of an OVSDB error is the offending JSON re-serialized the way OVS does it
(:func:`to_string`: sorted keys, no spaces, reals as ``%.15g``).
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


class Kind(enum.Enum):
    NULL = "null"
    FALSE = "false"
    TRUE = "true"
    OBJECT = "object"
    ARRAY = "array"
    INTEGER = "integer"
    REAL = "real"
    STRING = "string"

    @property
    def english(self) -> str:
        """The name OVS's ``json_type_to_string`` uses in messages."""
        return "number" if self in (Kind.INTEGER, Kind.REAL) else self.value


def kind(value: Any) -> Kind:
    if value is None:
        return Kind.NULL
    if value is True:
        return Kind.TRUE
    if value is False:
        return Kind.FALSE
    if isinstance(value, str):
        return Kind.STRING
    if isinstance(value, int):
        return Kind.INTEGER if INT64_MIN <= value <= INT64_MAX else Kind.REAL
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and INT64_MIN <= value <= INT64_MAX:
            # 2**63 is representable as a float but not as an int64.
            return Kind.INTEGER if int(value) <= INT64_MAX else Kind.REAL
        return Kind.REAL
    if isinstance(value, list | tuple):
        return Kind.ARRAY
    if isinstance(value, dict):
        return Kind.OBJECT
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def as_integer(value: Any) -> int:
    """The int64 of a value whose :func:`kind` is ``INTEGER``."""
    return value if isinstance(value, int) else int(value)


def as_real(value: Any) -> float:
    return float(value)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _string(s: str) -> str:
    out = ['"']
    for ch in s:
        esc = _ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_real(value: float) -> str:
    """``%.15g``, the format OVS uses for doubles in JSON and in messages."""
    return f"{value:.15g}"


def to_string(value: Any) -> str:
    """Serialize like OVS's ``json_to_string(json, JSSF_SORT)``."""
    k = kind(value)
    if k is Kind.NULL:
        return "null"
    if k is Kind.TRUE:
        return "true"
    if k is Kind.FALSE:
        return "false"
    if k is Kind.STRING:
        return _string(value)
    if k is Kind.INTEGER:
        return str(as_integer(value))
    if k is Kind.REAL:
        return format_real(float(value))
    if k is Kind.ARRAY:
        return "[" + ",".join(to_string(v) for v in value) + "]"
    items = sorted(value.items())
    return "{" + ",".join(f"{_string(k_)}:{to_string(v)}" for k_, v in items) + "}"


_ID_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


_ID_CACHE: dict[str, bool] = {}


def is_id(s: str) -> bool:
    """OVSDB's <id>: ASCII letter or underscore, then letters, digits, underscores."""
    known = _ID_CACHE.get(s)
    if known is None:
        known = _ID_RE.match(s) is not None
        if len(_ID_CACHE) < 10_000:  # op, table and uuid-name strings repeat; bound the memo
            _ID_CACHE[s] = known
    return known
