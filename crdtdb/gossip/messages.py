"""The gossip protocol's messages and their msgpack wire form.

Every message is one msgpack array whose first member names its kind. Decoding is strict:
anything unexpected is a :class:`GossipProtocolError` (the peer misbehaved: drop it), never a
crash. Updates inside messages stay sealed (:mod:`crdtdb.replica.envelope`): the replica checks
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from crdtdb.engine.frozen import fast_init
from crdtdb.errors import CrdtdbError
from crdtdb.replica.epoch import BASE_DIGEST_BYTES, EpochId

#: Bound on one decoded message (a full state of 100k rows is ~25 MB).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
PROTOCOL_VERSION = 2


class GossipProtocolError(CrdtdbError):
    """A peer sent something that is not a valid gossip message."""


@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: who I am and what I replicate (db -> schema digest, epoch)."""

    node_id: str
    databases: dict[str, tuple[str, EpochId]]
    version: int = PROTOCOL_VERSION


@fast_init  # (one per frame a node receives: most of them)
@dataclass(frozen=True, slots=True)
class Push:
    """A rumor: one commit's sealed update, ``hops`` forwards from its origin."""

    db: str
    update: bytes
    hops: int


@dataclass(frozen=True, slots=True)
class StateVector:
    """Anti-entropy: "this is what I have; send me the rest" (``reply``: and send yours).
    ``epoch``: the sender's, so that a peer that missed its move learns of it."""

    db: str
    state_vector: bytes
    reply: bool
    epoch: EpochId


@dataclass(frozen=True, slots=True)
class Diff:
    """Anti-entropy answer: everything the sender has beyond the asker's state vector."""

    db: str
    update: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Epoch:
    """"My replica of ``db`` is now in this epoch" (after a compaction moved it)."""

    db: str
    epoch: EpochId


@dataclass(frozen=True, slots=True)
class Fetch:
    """"Send me your full state of ``db``": the asker is in an older epoch."""

    db: str


@dataclass(frozen=True, slots=True)
class State:
    """A sealed full state, the answer to :class:`Fetch`."""

    db: str
    update: bytes


@dataclass(frozen=True, slots=True)
class Freeze:
    """Flooded by a compaction round's coordinator: hold local writes to ``db`` while in
    ``epoch`` and report how far they reach (:class:`Frozen`)."""

    db: str
    round_id: int
    epoch: EpochId


@dataclass(frozen=True, slots=True)
class Frozen:
    """Flooded back: writer ``client`` of ``db`` holds its writes at ``clock``."""

    db: str
    round_id: int
    client: int
    clock: int


@dataclass(frozen=True, slots=True)
class Thaw:
    """Flooded by a coordinator that gives a round up: write again, nothing changed."""

    db: str
    round_id: int


Message = (Hello | Push | StateVector | Diff | Ping | Ack | Epoch | Fetch | State | Freeze
           | Frozen | Thaw)


def encode(msg: Message) -> bytes:
    if isinstance(msg, Hello):
        obj: list[Any] = ["hello", msg.version, msg.node_id,
                          {k: [d, e.number, e.base] for k, (d, e) in msg.databases.items()}]
    elif isinstance(msg, Push):
        obj = ["push", msg.db, msg.update, msg.hops]
    elif isinstance(msg, StateVector):
        obj = ["sv", msg.db, msg.state_vector, msg.reply, msg.epoch.number, msg.epoch.base]
    elif isinstance(msg, Diff):
        obj = ["diff", msg.db, msg.update]
    elif isinstance(msg, Ping):
        obj = ["ping", msg.seq]
    elif isinstance(msg, Ack):
        obj = ["ack", msg.seq]
    elif isinstance(msg, Epoch):
        obj = ["epoch", msg.db, msg.epoch.number, msg.epoch.base]
    elif isinstance(msg, Fetch):
        obj = ["fetch", msg.db]
    elif isinstance(msg, State):
        obj = ["state", msg.db, msg.update]
    elif isinstance(msg, Freeze):
        obj = ["freeze", msg.db, msg.round_id, msg.epoch.number, msg.epoch.base]
    elif isinstance(msg, Frozen):
        obj = ["frozen", msg.db, msg.round_id, msg.client, msg.clock]
    elif isinstance(msg, Thaw):
        obj = ["thaw", msg.db, msg.round_id]
    else:
        raise TypeError(f"not a gossip message: {msg!r}")
    return msgpack.packb(obj, use_bin_type=True)


def _str(x: Any, what: str, max_len: int = 256) -> str:
    if not isinstance(x, str) or not x or len(x) > max_len:
        raise GossipProtocolError(f"{what} must be a non-empty string of at most {max_len}")
    return x


def _uint(x: Any, what: str) -> int:
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < 2**63:
        raise GossipProtocolError(f"{what} must be an unsigned integer")
    return x


def _bytes(x: Any, what: str) -> bytes:
    if not isinstance(x, bytes):
        raise GossipProtocolError(f"{what} must be binary")
    return x


def _epoch(number: Any, base: Any) -> EpochId:
    base = _bytes(base, "epoch base")
    if len(base) not in (0, BASE_DIGEST_BYTES):
        raise GossipProtocolError(f"epoch base must be empty or {BASE_DIGEST_BYTES} bytes")
    return EpochId(_uint(number, "epoch"), base)


def decode(frame: bytes, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> Message:
    if len(frame) > max_message_bytes:
        raise GossipProtocolError(f"message of {len(frame)} bytes exceeds "
                                  f"{max_message_bytes}")
    try:
        obj = msgpack.unpackb(frame, raw=False, max_ext_len=0, max_array_len=16,
                              max_map_len=1024, max_str_len=4096,
                              max_bin_len=max_message_bytes, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise GossipProtocolError(f"not a msgpack message: {exc}") from None
    if type(obj) is list and len(obj) == 4 and obj[0] == "push":
        # Most frames: a push whose fields are plainly valid is made without the checks'
        # calls (~1.5 us of a merged update); anything else takes the checks below.
        _, db, update, hops = obj
        if (type(db) is str and 0 < len(db) <= 256 and type(update) is bytes
                and type(hops) is int and 0 <= hops < 2**63):
            return Push(db, update, hops)
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise GossipProtocolError("a message must be an array starting with its kind")
    kind, args = obj[0], obj[1:]
    try:
        if kind == "hello" and len(args) == 3:
            version, node_id, dbs = args
            if not isinstance(dbs, dict):
                raise GossipProtocolError("hello: databases must be a map")
            databases: dict[str, tuple[str, EpochId]] = {}
            for name, v in dbs.items():
                if not (isinstance(v, list) and len(v) == 3):
                    raise GossipProtocolError("hello: each database is [digest, epoch, base]")
                databases[_str(name, "database")] = (_str(v[0], "digest"), _epoch(v[1], v[2]))
            return Hello(_str(node_id, "node id"), databases, _uint(version, "version"))
        if kind == "push" and len(args) == 3:
            return Push(_str(args[0], "database"), _bytes(args[1], "update"),
                        _uint(args[2], "hops"))
        if kind == "sv" and len(args) == 5:
            if not isinstance(args[2], bool):
                raise GossipProtocolError("sv: reply must be a boolean")
            return StateVector(_str(args[0], "database"), _bytes(args[1], "state vector"),
                               args[2], _epoch(args[3], args[4]))
        if kind == "diff" and len(args) == 2:
            return Diff(_str(args[0], "database"), _bytes(args[1], "update"))
        if kind == "ping" and len(args) == 1:
            return Ping(_uint(args[0], "seq"))
        if kind == "ack" and len(args) == 1:
            return Ack(_uint(args[0], "seq"))
        if kind == "epoch" and len(args) == 3:
            return Epoch(_str(args[0], "database"), _epoch(args[1], args[2]))
        if kind == "fetch" and len(args) == 1:
            return Fetch(_str(args[0], "database"))
        if kind == "state" and len(args) == 2:
            return State(_str(args[0], "database"), _bytes(args[1], "state"))
        if kind == "freeze" and len(args) == 4:
            return Freeze(_str(args[0], "database"), _uint(args[1], "round"),
                          _epoch(args[2], args[3]))
        if kind == "frozen" and len(args) == 4:
            return Frozen(_str(args[0], "database"), _uint(args[1], "round"),
                          _uint(args[2], "client"), _uint(args[3], "clock"))
        if kind == "thaw" and len(args) == 2:
            return Thaw(_str(args[0], "database"), _uint(args[1], "round"))
    except GossipProtocolError as exc:
        raise GossipProtocolError(f"{kind}: {exc}") from None
    raise GossipProtocolError(f"unknown message {kind!r} with {len(args)} arguments")
