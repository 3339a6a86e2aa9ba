"""Make transaction results from ovsdb-server and from the engine comparable.

A *transcript* is what one side answered for one corpus case: a list with one "result"
array per transaction, in order.  Both transcripts are put into a canonical form by
``normalize()`` and compared as pretty-printed JSON text by ``assert_same()``, so a
mismatch reads as a unified diff.

What normalization hides, and only that:

(a) Row UUIDs.  Each side generates its own UUIDs for inserted rows.  Every UUID that an
    insert operation returned (``{"uuid": ["uuid", U]}`` in the results) is replaced by a
    label naming that operation: ``<row t1.op0>`` is the row inserted by operation 0 of
    transaction 1.  Same op position on both sides, same label, same row.  The label is
    put in place of U wherever U occurs: in ``["uuid", U]`` atoms, in error "details"
    text, in "syntax" text.
    Exceptions: UUIDs written literally in the corpus operations (an insert's explicit
    "uuid", a ``["uuid", ...]`` in a where clause, the all-zeros UUID) are kept as they
    are, so an engine that ignores an explicit "uuid" is caught.
    Any other UUID (for example the random UUID ovsdb-server gives a named-uuid that no
    insert declared) becomes ``<unknown-uuid>``.
(b) ``_version`` values are random on both sides: in select rows they become
    ``["uuid", "<version>"]``.
(c) The rows of a select result come in hash order from ovsdb-server: they are sorted
    (after labelling).  Elements of sets and pairs of maps that contain UUID atoms are
    sorted too (ovsdb-server sorts them by UUID value, which labelling changes).  All
    other sets and maps keep their order: ovsdb-server always sends them sorted and the
    engine is expected to do the same.
(d) Numbers: ovsdb-server prints reals with "%.15g" (not "%.17g": 2**53+1 comes back as
    9007199254740990, DBL_MAX as 1.79769313486232e+308, which reads back as infinity), so
    an integral real goes out without a fraction (3.0 as ``3``).  Floats are rounded to 15
    significant digits and then integral ones become ints; JSON integers are left exact.
    Booleans are never confused with 0/1 (the comparison is on JSON text).
(e) The "First row ... Second row ..." order in an index-uniqueness error depends on a
    comparison of all columns in hash order (including _uuid and _version), so the two row
    descriptions are put in sorted order.

Corpus authors: use explicit "uuid" members on inserts whenever a case needs to name a
row later, and avoid operations whose outcome depends on hash order (a row with two bad
columns, two different violations in one commit, two unknown members in one operation).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ZERO_UUID = "00000000-0000-0000-0000-000000000000"
UNKNOWN_UUID = "<unknown-uuid>"
VERSION = "<version>"

_INDEX_ERROR_RE = re.compile(
    r"^(?P<head>Transaction causes multiple rows in .* for index on .*?\.  )"
    r"First (?P<first>row, with UUID .*?)  Second (?P<second>row, with UUID .*)$",
    re.DOTALL,
)

Transcript = Sequence[Sequence[Any]]


def literal_uuids(transactions: Iterable[Sequence[Any]]) -> set[str]:
    """UUIDs written literally anywhere in the operations (plus the all-zeros UUID)."""
    text = json.dumps(list(transactions))
    return {u.lower() for u in UUID_RE.findall(text)} | {ZERO_UUID}


def uuid_labels(transcript: Transcript) -> dict[str, str]:
    """Map each UUID returned by an insert operation to ``<row tT.opI>``."""
    labels: dict[str, str] = {}
    for t, results in enumerate(transcript):
        if not isinstance(results, Sequence) or isinstance(results, str):
            continue
        for i, result in enumerate(results):
            if isinstance(result, dict) and "error" not in result:
                atom = result.get("uuid")
                if (
                    isinstance(atom, list)
                    and len(atom) == 2
                    and atom[0] == "uuid"
                    and isinstance(atom[1], str)
                    and UUID_RE.fullmatch(atom[1])
                ):
                    labels.setdefault(atom[1].lower(), f"<row t{t}.op{i}>")
    return labels


class _Normalizer:
    def __init__(self, labels: dict[str, str], literals: set[str]) -> None:
        self.labels = labels
        self.literals = literals

    def uuid(self, u: str) -> str:
        low = u.lower()
        if low in self.literals:
            return u
        return self.labels.get(low, UNKNOWN_UUID)

    def text(self, s: str) -> str:
        return UUID_RE.sub(lambda m: self.uuid(m.group(0)), s)

    def number(self, x: float) -> int | float:
        # ovsdb-server prints reals with "%.15g": round to that first, then drop a zero
        # fraction (it writes 3.0 as 3).
        if math.isfinite(x):
            x = float(f"{x:.15g}")
            if x.is_integer() and abs(x) < 2**63:
                return int(x)
        return x

    def value(self, v: Any) -> Any:
        """Normalize a datum, or any JSON value."""
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, float):
            return self.number(v)
        if isinstance(v, int):
            return v
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {self.text(k): self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            if len(v) == 2 and v[0] in ("uuid", "named-uuid") and isinstance(v[1], str):
                return [v[0], self.uuid(v[1]) if v[0] == "uuid" else v[1]]
            if len(v) == 2 and v[0] in ("set", "map") and isinstance(v[1], list):
                elems = [self.value(e) for e in v[1]]
                if _contains_uuid_atom(v[1]):
                    elems.sort(key=_sort_key)
                return [v[0], elems]
            return [self.value(x) for x in v]
        return v

    def row(self, row: Any) -> Any:
        if not isinstance(row, dict):
            return self.value(row)
        out = {}
        for column, datum in row.items():
            if column == "_version":
                out[column] = ["uuid", VERSION]
            else:
                out[column] = self.value(datum)
        return out

    def result(self, result: Any) -> Any:
        """Normalize one element of a "result" array."""
        if not isinstance(result, dict):
            return self.value(result)
        out = {}
        for key, v in result.items():
            if key == "rows" and isinstance(v, list) and "error" not in result:
                out[key] = sorted((self.row(r) for r in v), key=_sort_key)
            elif key == "details" and isinstance(v, str):
                out[key] = _canonical_index_error(self.text(v))
            else:
                out[key] = self.value(v)
        return out


def _contains_uuid_atom(v: Any) -> bool:
    if isinstance(v, list):
        if len(v) == 2 and v[0] == "uuid" and isinstance(v[1], str):
            return True
        return any(_contains_uuid_atom(x) for x in v)
    return False


def _sort_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def _canonical_index_error(details: str) -> str:
    m = _INDEX_ERROR_RE.match(details)
    if not m:
        return details
    a, b = sorted([m.group("first"), m.group("second")])
    return f"{m.group('head')}[one] {a}  [other] {b}"


def normalize(
    results: Sequence[Any],
    labels: dict[str, str] | None = None,
    literals: set[str] | None = None,
) -> list[Any]:
    """Normalize one "result" array (see the module docstring).

    ``labels`` maps UUIDs to labels (from ``uuid_labels()`` of the whole transcript this
    array belongs to); ``literals`` are the UUIDs to keep verbatim (``literal_uuids()``).
    """
    n = _Normalizer(labels or {}, literals if literals is not None else {ZERO_UUID})
    if not isinstance(results, list):
        return n.value(results)
    return [n.result(r) for r in results]


def normalize_transcript(
    transcript: Transcript, transactions: Sequence[Sequence[Any]] = ()
) -> list[Any]:
    """Normalize every "result" array of a transcript, labelling rows by insert position."""
    labels = uuid_labels(transcript)
    literals = literal_uuids(transactions)
    return [normalize(results, labels, literals) for results in transcript]


def _pretty(v: Any) -> str:
    return json.dumps(v, indent=1, sort_keys=True, ensure_ascii=False)


def assert_same(
    server: Transcript,
    engine: Transcript,
    transactions: Sequence[Sequence[Any]] = (),
    *,
    name: str = "",
) -> None:
    """Assert that two transcripts (lists of "result" arrays) agree after normalization.

    ``transactions`` are the operations that produced them (for the literal UUIDs and for
    the failure message).  On a mismatch, raises AssertionError with a unified diff of the
    normalized transcripts, ovsdb-server's side first.
    """
    want = normalize_transcript(server, transactions)
    got = normalize_transcript(engine, transactions)
    want_text, got_text = _pretty(want), _pretty(got)
    if want_text == got_text:
        return
    diff = "\n".join(
        difflib.unified_diff(
            want_text.splitlines(),
            got_text.splitlines(),
            fromfile="ovsdb-server",
            tofile="engine",
            lineterm="",
            n=4,
        )
    )
    first_bad = next(
        (t for t, (w, g) in enumerate(zip(want, got, strict=False)) if w != g),
        min(len(want), len(got)),
    )
    ops = ""
    if first_bad < len(transactions):
        ops = f"\ntransaction t{first_bad}:\n{_pretty(transactions[first_bad])}"
    title = f"case {name!r}: " if name else ""
    raise AssertionError(
        f"{title}engine differs from ovsdb-server (first at transaction t{first_bad}){ops}\n{diff}"
    )
