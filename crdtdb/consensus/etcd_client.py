"""A small async etcd v3 client over etcd's JSON gateway (``POST /v3/...``).

Why the gateway and not gRPC: it needs nothing but HTTP/1.1 and JSON (httpx, which runs under
trio and asyncio through anyio), and the consensus plugin only needs KV, transactions, leases
and watches.  The gateway speaks proto3 JSON: bytes are base64, int64 are decimal strings, and
zero/false/empty fields are left out (``succeeded`` absent means false, ``kvs`` absent means
none).

Failover: requests go to the endpoint that last answered and move on to the next one when an
endpoint cannot be reached.  Whether a request may be *sent again* elsewhere depends on
whether it could already have been applied:

* not connected, or the member said "no leader" (it refused before proposing): always retried
  on the next endpoint;
* a timeout or broken connection after the request went out, or etcd's own "request timed
  out": reads are retried, writes raise :class:`EtcdIndeterminate` (they may or may not have
  been applied; retrying a compare-and-swap blindly could report a lost race that was won).

Every request carries the gRPC metadata ``hasleader=true`` (header
``Grpc-Metadata-hasleader``), so a member cut off from its leader refuses at once instead of
holding the request until etcd's internal timeout (seconds); this is also what makes a watch
on a partitioned member end instead of going silent.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import anyio
import httpx
import orjson

from crdtdb.errors import CrdtdbError

__all__ = [
    "API_PREFIX",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Compare",
    "DeleteRange",
    "EtcdClient",
    "EtcdCompacted",
    "EtcdError",
    "EtcdIndeterminate",
    "EtcdLeaseExpired",
    "EtcdProtocolError",
    "EtcdRequestError",
    "EtcdUnavailable",
    "EtcdWatch",
    "KeyValue",
    "Member",
    "Put",
    "Range",
    "RangeResult",
    "TxnOp",
    "TxnOpResult",
    "TxnResponse",
    "WatchBatch",
    "WatchEvent",
    "open_etcd_client",
    "prefix_end",
]

#: The gateway prefix (etcd 3.4 also serves /v3beta/; 3.3 only /v3beta/).
API_PREFIX = "/v3"

#: Largest single JSON message accepted from etcd (one watch line, one reply).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Ask etcd to refuse requests at once on a member without a leader.
_REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}

#: How long closing a half-read response may take (it only drops the connection).
_DISCARD_TIMEOUT_S = 1.0

#: gRPC status codes etcd uses in its error replies.
_UNAVAILABLE = 14
_NO_LEADER = "etcdserver: no leader"
_LEASE_NOT_FOUND = "etcdserver: requested lease not found"
_COMPACTED = "etcdserver: mvcc: required revision has been compacted"

CompareTarget = Literal["VERSION", "CREATE", "MOD", "VALUE", "LEASE"]
CompareResult = Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]

_COMPARE_FIELDS: dict[str, str] = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}
_COMPARE_RESULTS = frozenset(("EQUAL", "GREATER", "LESS", "NOT_EQUAL"))


# --- errors --------------------------------------------------------------------------------


class EtcdError(CrdtdbError):
    """Base class of the etcd client's errors."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (unreachable, timed out, no leader), or a watch stream broke.

    ``errors`` has one ``(endpoint, reason)`` per endpoint tried.
    """

    def __init__(self, message: str, errors: Sequence[tuple[str, str]] = ()):
        self.errors = list(errors)
        detail = "; ".join(f"{ep}: {why}" for ep, why in self.errors)
        super().__init__(f"{message} ({detail})" if detail else message)


class EtcdIndeterminate(EtcdUnavailable):
    """A write was sent but its outcome is unknown (timeout or broken connection after
    sending): it may have been applied.  Read the state back before retrying."""


class EtcdRequestError(EtcdError):
    """etcd answered with an error: ``code`` is the gRPC status code, ``message`` etcd's."""

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message
        super().__init__(f"etcd error {code}: {message}")


class EtcdCompacted(EtcdError):
    """The revision asked for has been compacted away.

    ``compact_revision`` is the oldest revision still available when etcd says so (watches
    do; a range at an old revision does not, then it is None).
    """

    def __init__(self, compact_revision: int | None):
        self.compact_revision = compact_revision
        where = f" (oldest kept: {compact_revision})" if compact_revision is not None else ""
        super().__init__(f"revision compacted{where}")


class EtcdLeaseExpired(EtcdError):
    """The lease does not exist any more (expired or revoked)."""

    def __init__(self, lease_id: int | None):
        self.lease_id = lease_id
        super().__init__(
            f"lease {lease_id:x} expired or revoked" if lease_id else "lease expired or revoked"
        )


class EtcdProtocolError(EtcdError):
    """etcd (or whatever answered) sent something that is not the gateway's JSON."""


# --- data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn guard: ``target`` of ``key`` compared (``result``) with ``operand``.

    A missing key has version, create and mod revision 0.  Build with the constructors::

        Compare.mod(key, "EQUAL", rev)     Compare.value(key, "EQUAL", b"x")
    """

    key: bytes
    target: CompareTarget
    result: CompareResult
    operand: int | bytes

    def __post_init__(self) -> None:
        if self.target not in _COMPARE_FIELDS:
            raise ValueError(f"unknown compare target {self.target!r}")
        if self.result not in _COMPARE_RESULTS:
            raise ValueError(f"unknown compare result {self.result!r}")
        want_bytes = self.target == "VALUE"
        if isinstance(self.operand, bytes) != want_bytes or isinstance(self.operand, bool):
            kind = "bytes" if want_bytes else "an int"
            raise ValueError(f"a {self.target} comparison needs {kind}, not {self.operand!r}")

    @classmethod
    def version(cls, key: bytes, result: CompareResult, version: int) -> Compare:
        return cls(key, "VERSION", result, version)

    @classmethod
    def create(cls, key: bytes, result: CompareResult, revision: int) -> Compare:
        return cls(key, "CREATE", result, revision)

    @classmethod
    def mod(cls, key: bytes, result: CompareResult, revision: int) -> Compare:
        return cls(key, "MOD", result, revision)

    @classmethod
    def value(cls, key: bytes, result: CompareResult, value: bytes) -> Compare:
        return cls(key, "VALUE", result, value)

    @classmethod
    def lease(cls, key: bytes, result: CompareResult, lease_id: int) -> Compare:
        return cls(key, "LEASE", result, lease_id)

    def to_json(self) -> dict[str, Any]:
        operand = _b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {
            "key": _b64(self.key),
            "target": self.target,
            "result": self.result,
            _COMPARE_FIELDS[self.target]: operand,
        }


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"request_put": _put_body(self.key, self.value, self.lease)}


@dataclass(frozen=True, slots=True)
class DeleteRange:
    key: bytes
    range_end: bytes | None = None

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": _range_body(self.key, self.range_end)}


@dataclass(frozen=True, slots=True)
class Range:
    key: bytes
    range_end: bytes | None = None
    limit: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"request_range": _range_body(self.key, self.range_end, limit=self.limit)}


TxnOp = Put | DeleteRange | Range

#: One txn op's result: the keys for a Range, the number deleted for a DeleteRange, None for
#: a Put (its revision is the txn's).
TxnOpResult = list[KeyValue] | int | None


@dataclass(frozen=True, slots=True)
class TxnResponse:
    succeeded: bool
    revision: int
    responses: list[TxnOpResult]


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int
    more: bool
    count: int


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    peer_urls: list[str]
    client_urls: list[str]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    prev_kv: KeyValue | None = None


@dataclass(frozen=True, slots=True)
class WatchBatch:
    """Events etcd sent together (all of one txn are in one batch).  ``revision`` is the
    store revision when etcd sent it (at least every event's ``mod_revision``); with no
    events it is a progress notification."""

    revision: int
    events: list[WatchEvent] = field(default_factory=list)


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``.

    The last byte below 0xff is incremented and what follows dropped; for an empty or
    all-0xff prefix it is ``b"\\0"``, which etcd reads as "no upper bound".
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"
    return stripped[:-1] + bytes((stripped[-1] + 1,))


# --- JSON encoding and decoding ------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _range_body(key: bytes, range_end: bytes | None, **ints: int) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    body.update((name, str(n)) for name, n in ints.items() if n)
    return body


def _put_body(key: bytes, value: bytes, lease: int) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Turn whatever a malformed reply makes the decoders throw into EtcdProtocolError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
        raise EtcdProtocolError(f"malformed {what}: {exc!r}") from exc


def _int(obj: dict[str, Any], name: str) -> int:
    return int(obj.get(name, 0))


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _kv(obj: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(obj.get("key", "")),
        value=_unb64(obj.get("value", "")),
        create_revision=_int(obj, "create_revision"),
        mod_revision=_int(obj, "mod_revision"),
        version=_int(obj, "version"),
        lease=_int(obj, "lease"),
    )


def _revision(reply: dict[str, Any]) -> int:
    return _int(reply["header"], "revision")


def _range_result(reply: dict[str, Any]) -> RangeResult:
    return RangeResult(
        kvs=[_kv(kv) for kv in reply.get("kvs", ())],
        revision=_revision(reply),
        more=bool(reply.get("more", False)),
        count=_int(reply, "count"),
    )


def _txn_op_result(obj: dict[str, Any]) -> TxnOpResult:
    if "response_range" in obj:
        return [_kv(kv) for kv in obj["response_range"].get("kvs", ())]
    if "response_delete_range" in obj:
        return _int(obj["response_delete_range"], "deleted")
    if "response_put" in obj:
        return None
    raise ValueError(f"unknown txn response {sorted(obj)}")


def _event(obj: dict[str, Any]) -> WatchEvent:
    kind = obj.get("type", "PUT")  # proto3: the zero enum value (PUT) is left out
    if kind not in ("PUT", "DELETE"):
        raise ValueError(f"unknown event type {kind!r}")
    prev = obj.get("prev_kv")
    return WatchEvent(kind, _kv(obj["kv"]), _kv(prev) if prev is not None else None)


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise EtcdProtocolError(f"{what} is not JSON: {data[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise EtcdProtocolError(f"{what} is not a JSON object: {data[:200]!r}")
    return obj


def _error_of(obj: dict[str, Any]) -> EtcdRequestError | None:
    """The error in a reply, if any.  Unary errors are ``{"error", "message", "code"}``;
    errors on a stream are ``{"error": {"grpc_code", "message", ...}}``."""
    err = obj.get("error")
    if not err:
        return None
    with _decoding("error reply"):
        if isinstance(err, dict):
            return EtcdRequestError(int(err.get("grpc_code", 2)), str(err.get("message", "")))
        return EtcdRequestError(int(obj.get("code", 2)), str(obj.get("message", err)))


def _specific(error: EtcdRequestError, lease_id: int | None) -> EtcdError:
    """The semantic exception for an etcd error the caller may want to catch alone."""
    if error.message == _LEASE_NOT_FOUND:
        return EtcdLeaseExpired(lease_id)
    if error.message == _COMPACTED:
        return EtcdCompacted(None)
    return error


# --- the client ----------------------------------------------------------------------------


class EtcdClient:
    """An etcd v3 client over the JSON gateway of one or more members (see the module doc).

    Safe to use from several tasks at once.  ``request_timeout_s`` bounds each attempt on one
    endpoint, so a call takes at most that times the number of endpoints.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout_s: float = 5.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if not math.isfinite(request_timeout_s) or request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be positive, not {request_timeout_s}")
        for endpoint in endpoints:
            if not endpoint.startswith(("http://", "https://")):
                raise ValueError(f"etcd endpoint {endpoint!r} is not an http(s) URL")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.request_timeout_s = request_timeout_s
        self.max_message_bytes = max_message_bytes
        self._preferred = 0
        # trust_env=False: a proxy from the environment has no business between us and etcd.
        # No cap on connections: every open watch holds one, and a cap would make requests
        # wait behind idle watches (and then look like an unreachable cluster).
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(request_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- transport ------------------------------------------------------------------------

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._preferred + k) % n for k in range(n)]

    def _skip(self, i: int) -> None:
        """After an unclear failure on endpoint ``i``, start the next call elsewhere."""
        self._preferred = (i + 1) % len(self.endpoints)

    async def _exchange(
        self, url: str, content: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """One POST: (HTTP status, body).  _NotSent or _Lost say how it failed."""
        request = self._http.build_request("POST", url, content=content, headers=headers)
        request.stream = _Body(content)
        with anyio.move_on_after(self.request_timeout_s):
            try:
                response = await self._http.send(request, stream=True)
                try:
                    return response.status_code, await self._read_body(response)
                finally:
                    await response.aclose()
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise _NotSent(f"cannot connect: {exc!r}") from exc
            except httpx.TransportError as exc:  # read/write timeouts, resets, bad HTTP
                raise _Lost(f"no reply: {exc!r}") from exc
        raise _Lost(f"no reply within {self.request_timeout_s} s")

    async def _call(
        self,
        path: str,
        body: dict[str, Any],
        *,
        idempotent: bool,
        require_leader: bool = True,
        lease_id: int | None = None,
        endpoint: str | None = None,
    ) -> tuple[dict[str, Any], str]:
        """POST ``body`` to the first endpoint that answers (only to ``endpoint`` if given);
        return the decoded reply and who sent it."""
        content = orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        if require_leader:
            headers.update(_REQUIRE_LEADER)
        attempts = [(-1, endpoint)] if endpoint else [(i, self.endpoints[i]) for i in self._order()]
        tried: list[tuple[str, str]] = []
        for i, url in attempts:
            try:
                status, data = await self._exchange(url + API_PREFIX + path, content, headers)
            except _NotSent as exc:
                tried.append((url, str(exc)))
                continue
            except _Lost as exc:
                tried.append((url, str(exc)))
                if idempotent:
                    continue
                self._skip(i)
                raise EtcdIndeterminate(f"{path}: outcome unknown", tried) from None
            obj = _load(data, f"reply to {path}")
            error = _error_of(obj)
            if error is None and status != 200:
                error = EtcdRequestError(2, f"HTTP {status} without an error object")
            if error is not None:
                if error.code != _UNAVAILABLE:
                    raise _specific(error, lease_id)
                tried.append((url, error.message))
                if error.message == _NO_LEADER or idempotent:
                    continue  # "no leader" is refused before anything is proposed
                self._skip(i)
                raise EtcdIndeterminate(f"{path}: outcome unknown", tried)
            if i >= 0:
                self._preferred = i
            return obj, url
        raise EtcdUnavailable(f"{path}: no etcd endpoint answered", tried)

    async def _post(
        self, path: str, body: dict[str, Any], *, idempotent: bool, **kwargs: Any
    ) -> dict[str, Any]:
        return (await self._call(path, body, idempotent=idempotent, **kwargs))[0]

    async def _read_body(self, response: httpx.Response) -> bytes:
        """The whole body, refusing more than max_message_bytes before buffering it."""
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_message_bytes:
            raise EtcdProtocolError(f"reply of {declared} bytes > {self.max_message_bytes}")
        body = bytearray()
        chunks = response.aiter_bytes()
        async for chunk in chunks:
            body += chunk
            if len(body) > self.max_message_bytes:
                await _discard(response, chunks)
                raise EtcdProtocolError(f"reply longer than {self.max_message_bytes} bytes")
        return bytes(body)

    # -- KV -------------------------------------------------------------------------------

    async def range(
        self, key: bytes, range_end: bytes | None = None, *, revision: int = 0, limit: int = 0
    ) -> RangeResult:
        """Keys in [key, range_end) (just ``key`` without range_end), at ``revision``
        (0: the latest), at most ``limit`` of them (0: all)."""
        body = _range_body(key, range_end, revision=revision, limit=limit)
        reply = await self._post("/kv/range", body, idempotent=True)
        with _decoding("range reply"):
            return _range_result(reply)

    async def get(self, key: bytes) -> KeyValue | None:
        """The one key, or None."""
        kvs = (await self.range(key)).kvs
        return kvs[0] if kvs else None

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Set ``key``; return the new store revision."""
        reply = await self._post(
            "/kv/put", _put_body(key, value, lease), idempotent=False, lease_id=lease
        )
        with _decoding("put reply"):
            return _revision(reply)

    async def delete_range(self, key: bytes, range_end: bytes | None = None) -> tuple[int, int]:
        """Delete [key, range_end); return (number deleted, store revision)."""
        reply = await self._post(
            "/kv/deleterange", _range_body(key, range_end), idempotent=False
        )
        with _decoding("deleterange reply"):
            return _int(reply, "deleted"), _revision(reply)

    async def txn(
        self,
        compare: Sequence[Compare],
        success: Sequence[TxnOp],
        failure: Sequence[TxnOp] = (),
    ) -> TxnResponse:
        """If every ``compare`` holds, run ``success``, else ``failure``, atomically."""
        body = {
            "compare": [c.to_json() for c in compare],
            "success": [op.to_json() for op in success],
            "failure": [op.to_json() for op in failure],
        }
        writes = any(not isinstance(op, Range) for op in (*success, *failure))
        reply = await self._post("/kv/txn", body, idempotent=not writes)
        with _decoding("txn reply"):
            return TxnResponse(
                succeeded=bool(reply.get("succeeded", False)),
                revision=_revision(reply),
                responses=[_txn_op_result(r) for r in reply.get("responses", ())],
            )

    async def compact(self, revision: int, *, physical: bool = False) -> None:
        """Drop history before ``revision`` (watches and ranges at older revisions fail)."""
        body: dict[str, Any] = {"revision": str(revision), "physical": physical}
        await self._post("/kv/compaction", body, idempotent=False)

    # -- leases ---------------------------------------------------------------------------

    async def lease_grant(self, ttl_s: int, *, lease_id: int = 0) -> tuple[int, int]:
        """A new lease; return (lease id, granted TTL in seconds).  ``lease_id`` 0 lets
        etcd choose."""
        body = {"TTL": str(ttl_s), "ID": str(lease_id)}
        reply = await self._post("/lease/grant", body, idempotent=False)
        with _decoding("lease grant reply"):
            return _int(reply, "ID"), _int(reply, "TTL")

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease once; return its new TTL in seconds.

        Raises EtcdLeaseExpired when it is gone (etcd then answers TTL 0)."""
        reply = await self._post(
            "/lease/keepalive", {"ID": str(lease_id)}, idempotent=True, lease_id=lease_id
        )
        with _decoding("lease keepalive reply"):
            ttl = _int(reply["result"], "TTL")
        if ttl <= 0:
            raise EtcdLeaseExpired(lease_id)
        return ttl

    async def lease_revoke(self, lease_id: int) -> None:
        """End the lease now: its keys are deleted.  EtcdLeaseExpired if it is gone."""
        await self._post(
            "/lease/revoke", {"ID": str(lease_id)}, idempotent=False, lease_id=lease_id
        )

    # -- cluster --------------------------------------------------------------------------

    async def status(self, *, endpoint: str | None = None) -> dict[str, Any]:
        """Maintenance status of ``endpoint`` (default: whichever answers first).

        Keys as etcd names them (``leader``, ``raftTerm``, ``raftIndex``, ``dbSize``,
        ``version``...), int64 values as ints, plus ``revision`` and ``member_id`` from the
        header and ``endpoint``.  Works on a member without a leader (``leader`` is 0).
        """
        reply, answered = await self._call(
            "/maintenance/status", {}, idempotent=True, require_leader=False, endpoint=endpoint
        )
        with _decoding("status reply"):
            status: dict[str, Any] = {}
            for name, value in reply.items():
                if name == "header":
                    continue
                status[name] = int(value) if isinstance(value, str) and value.isdigit() else value
            status.setdefault("leader", 0)
            status["revision"] = _revision(reply)
            status["member_id"] = _int(reply["header"], "member_id")
            status["endpoint"] = answered
        return status

    async def member_list(self) -> list[Member]:
        reply = await self._post("/cluster/member/list", {}, idempotent=True, require_leader=False)
        with _decoding("member list reply"):
            return [
                Member(
                    id=_int(m, "ID"),
                    name=str(m.get("name", "")),
                    peer_urls=list(m.get("peerURLs", ())),
                    client_urls=list(m.get("clientURLs", ())),
                )
                for m in reply.get("members", ())
            ]

    # -- watch ----------------------------------------------------------------------------

    @asynccontextmanager
    async def watch(
        self,
        key: bytes,
        range_end: bytes | None = None,
        *,
        start_revision: int,
        prev_kv: bool = False,
        progress_notify: bool = False,
    ) -> AsyncIterator[EtcdWatch]:
        """Watch [key, range_end) from ``start_revision`` (0: from now on)::

            async with client.watch(prefix, prefix_end(prefix), start_revision=rev) as w:
                async for batch in w:
                    ...

        Raises EtcdCompacted if start_revision is compacted away, EtcdUnavailable when the
        stream breaks (resume from the last event's mod_revision + 1).
        """
        create = _range_body(key, range_end, start_revision=start_revision)
        if prev_kv:
            create["prev_kv"] = True
        if progress_notify:
            create["progress_notify"] = True
        content = orjson.dumps({"create_request": create})
        tried: list[tuple[str, str]] = []
        for i in self._order():
            try:
                watch = await self._open_watch(self.endpoints[i], content, progress_notify)
            except _NotSent as exc:
                tried.append((self.endpoints[i], str(exc)))
                continue
            self._preferred = i
            try:
                yield watch
            finally:
                await watch.aclose()
            return
        raise EtcdUnavailable("watch: no etcd endpoint answered", tried)

    async def _open_watch(self, endpoint: str, content: bytes, progress: bool) -> EtcdWatch:
        """POST the create request and read etcd's "created" ack; _NotSent if this endpoint
        cannot watch now (a new watch has no side effect, so the next one may be tried)."""
        request = self._http.build_request(
            "POST",
            endpoint + API_PREFIX + "/watch",
            content=content,
            headers={"Content-Type": "application/json", **_REQUIRE_LEADER},
            # A watch may be idle for ever: no read timeout once it is created.
            timeout=httpx.Timeout(self.request_timeout_s, read=None),
        )
        request.stream = _Body(content)
        watch: EtcdWatch | None = None
        try:
            with anyio.move_on_after(self.request_timeout_s):
                response = await self._http.send(request, stream=True)
                watch = EtcdWatch(response, self.max_message_bytes, progress)
                await watch._created()
                opened, watch = watch, None
                return opened
            raise _NotSent(f"no watch ack within {self.request_timeout_s} s")
        except httpx.TransportError as exc:
            raise _NotSent(f"cannot watch: {exc!r}") from exc
        except EtcdUnavailable as exc:
            raise _NotSent(str(exc)) from exc
        finally:
            if watch is not None:
                await watch.aclose()


async def _discard(response: httpx.Response, chunks: AsyncIterator[bytes]) -> None:
    """Close a response whose body was read only in part, even when cancelled.

    httpx reads a body through a chain of async generators, and one left suspended is
    finalized by the garbage collector, which trio reports as a ResourceWarning (httpx issue
    3686).  Once the connection is closed the next read fails at once, and that failure ends
    every generator of the chain, so they are drained here (bounded).
    """
    with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _DISCARD_TIMEOUT_S):
        await response.aclose()
        try:
            async for _ in chunks:
                pass
        except Exception:
            pass


class _Body(httpx.AsyncByteStream):
    """A request body httpx sends without an async generator.

    httpx's own (for ``content=bytes``) is a generator that is left suspended when the
    request is cancelled while being sent (a timeout, a cancelled caller), and is then
    finalized by the garbage collector, which trio reports as a ResourceWarning.
    """

    def __init__(self, data: bytes):
        self._data = data

    def __aiter__(self) -> _OneChunk:  # type: ignore[override]
        return _OneChunk(self._data)


class _OneChunk:
    def __init__(self, data: bytes):
        self._data: bytes | None = data

    async def __anext__(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise StopAsyncIteration
        return data


class _NotSent(Exception):
    """Internal: this endpoint did not get (or did not act on) the request."""


class _Lost(Exception):
    """Internal: the request went out but no answer came back; it may have been applied."""


class EtcdWatch:
    """The stream of one watch: iterate for :class:`WatchBatch` es."""

    def __init__(self, response: httpx.Response, max_message_bytes: int, progress: bool):
        self._response = response
        self._chunks = response.aiter_bytes()
        self._buf = bytearray()
        self._scanned = 0
        self._max = max_message_bytes
        self._progress = progress
        self._failed: EtcdError | None = None
        self._pending: dict[str, Any] | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> WatchBatch:
        if self._failed is not None:
            raise self._failed
        try:
            while True:
                result = self._pending
                self._pending = None
                if result is None:
                    result = await self._next_result()
                with _decoding("watch event"):
                    if result.get("canceled"):
                        compact = _int(result, "compact_revision")
                        if compact:
                            raise EtcdCompacted(compact)
                        reason = str(result.get("cancel_reason", "watch canceled"))
                        raise EtcdRequestError(1, reason)
                    events = [_event(e) for e in result.get("events", ())]
                    if events or (self._progress and not result.get("created")):
                        return WatchBatch(_revision(result), events)
        except EtcdError as exc:
            self._failed = exc
            raise

    async def _created(self) -> None:
        """Read the "created" ack that opens every watch stream."""
        status = self._response.status_code
        result = await self._next_result()
        if not result.get("created"):
            raise EtcdProtocolError(f"watch stream (HTTP {status}) did not start with created")
        if result.get("canceled") or result.get("events"):
            self._pending = result  # for __anext__ to report

    async def aclose(self) -> None:
        """Close the stream (etcd then cancels the watch); also under cancellation."""
        await _discard(self._response, self._chunks)

    async def _next_result(self) -> dict[str, Any]:
        obj = _load(await self._line(), "watch message")
        error = _error_of(obj)
        if error is not None:
            if error.code == _UNAVAILABLE:
                raise EtcdUnavailable(f"watch: {error.message}")
            raise _specific(error, None)
        result = obj.get("result")
        if not isinstance(result, dict):
            raise EtcdProtocolError(f"watch message without a result: {sorted(obj)}")
        return result

    async def _line(self) -> bytes:
        """The next non-empty line, at most max_message_bytes long."""
        while True:
            newline = self._buf.find(b"\n", self._scanned)
            if newline > self._max or (newline < 0 and len(self._buf) > self._max):
                raise EtcdProtocolError(f"watch message longer than {self._max} bytes")
            if newline >= 0:
                line = bytes(self._buf[:newline]).strip()
                del self._buf[: newline + 1]
                self._scanned = 0
                if line:
                    return line
                continue
            self._scanned = len(self._buf)
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                if self._buf.strip():  # an unterminated last message: judge it
                    line = bytes(self._buf).strip()
                    self._buf.clear()
                    return line
                raise EtcdUnavailable("watch stream ended") from None
            except httpx.TransportError as exc:
                raise EtcdUnavailable(f"watch stream broke: {exc!r}") from exc
            self._buf += chunk


@asynccontextmanager
async def open_etcd_client(
    endpoints: Sequence[str],
    *,
    request_timeout_s: float = 5.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> AsyncIterator[EtcdClient]:
    """An :class:`EtcdClient` for ``endpoints`` (``"http://host:port"``), closed on exit."""
    client = EtcdClient(
        endpoints, request_timeout_s=request_timeout_s, max_message_bytes=max_message_bytes
    )
    try:
        yield client
    finally:
        await client.aclose()
