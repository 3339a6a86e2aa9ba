"""A linearizability checker for recorded histories of concurrent operations.

A history is linearizable when every operation can be given a single instant between its
invocation and its response such that, taken in the order of those instants, the operations
form a legal sequential run of a model (a register, a lock...).  Deciding that is
NP-complete, so the checker searches, in the manner of Wing & Gong with Lowe's and
Porcupine's improvements:

* depth-first over linearization points, with backtracking: walk the time-ordered list of
  call/return events; at a call, try to linearize that operation now; at a return, the
  operation must already be linearized, else undo the last choice;
* memoization: a (set of linearized operations, model state) pair already explored is never
  explored again, which turns most exponential searches into polynomial ones;
* P-compositionality: a model whose operations on different keys are independent splits the
  history by key, and each partition is checked alone (a history is linearizable iff every
  partition is).

Operations with an unknown outcome (a client crashed or timed out: ``return_s`` is
``math.inf``) may take effect at any point after their call, or never; the search is done as
soon as every operation with a known outcome is linearized.  They stay candidates forever,
so they are what makes a search expensive; the search has reductions for them (see
``_check_partition``), but a run meant to be checked should still write distinct values,
spread its operations over many keys and pass a timeout.  (2000 operations of 5 clients
over 10 keys take milliseconds; over a single key with 2% unknown outcomes, proving a
violation near the end can take seconds.)

The search is iterative (an explicit stack), so long histories do not hit Python's recursion
limit.  Nothing here is used by crdtdb at run time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

__all__ = [
    "UNKNOWN",
    "CheckResult",
    "HistoryRecorder",
    "KeyValueModel",
    "LockModel",
    "Model",
    "Operation",
    "PartitionFailure",
    "check",
    "partition_by_key",
]


class _Unknown:
    """The output of an operation whose outcome is unknown (there is one instance)."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "?"

    def __reduce__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Any = _Unknown()
"""What :meth:`Model.step` gets as the output of an operation with an unknown outcome: the
model must then accept whatever output the operation could have had."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a history, as a client saw it.

    ``return_s`` is ``math.inf`` when the outcome is unknown (the client crashed or gave up
    waiting): the operation may have taken effect at any time after ``call_s``, or never, and
    its ``output`` is ignored (the model is given :data:`UNKNOWN`).  ``key`` is what
    partitioning models split the history on.
    """

    client: int
    call_s: float
    return_s: float
    input: Any
    output: Any = UNKNOWN
    key: Hashable = None

    def __post_init__(self) -> None:
        if math.isnan(self.call_s) or math.isnan(self.return_s) or math.isinf(self.call_s):
            raise ValueError(f"operation times must be numbers: {self}")
        if self.return_s < self.call_s:
            raise ValueError(f"operation returns before it is called: {self}")

    @property
    def unknown(self) -> bool:
        """Whether the outcome is unknown (the operation may or may not have happened)."""
        return self.return_s == math.inf


S = TypeVar("S", bound=Hashable)


class Model(Protocol[S]):
    """A sequential specification.  States must be hashable (and should be immutable).

    Optional methods, used when present:

    * ``partition(history) -> list[list[Operation]]``: split the history into independently
      checkable parts (only valid if the model is P-compositional on that split); without it
      the history is checked as one part.
    * ``canonical_inputs(part) -> list[Any]``: the inputs to give :meth:`step` for the
      operations of a part, in order.  A model may replace inputs by others it cannot tell
      apart from them (the verdict must not change) so that more states and operations
      compare equal, which shrinks the search; reports still show the operations as given.
    * ``describe_operation(input, output) -> str`` and ``describe_state(state) -> str``: for
      :meth:`CheckResult.explain`; ``repr`` otherwise.
    """

    def init(self) -> S:
        """The state before any operation."""
        ...

    def step(self, state: S, input: Any, output: Any) -> tuple[bool, S]:
        """Whether an operation with this input may return ``output`` (or :data:`UNKNOWN`)
        when applied to ``state``, and the state after it."""
        ...


def partition_by_key(history: Iterable[Operation]) -> list[list[Operation]]:
    """The history split by :attr:`Operation.key`, each part in the order of the history."""
    parts: dict[Hashable, list[Operation]] = {}
    for op in history:
        parts.setdefault(op.key, []).append(op)
    return list(parts.values())


class KeyValueModel:
    """A map of independent registers (one per :attr:`Operation.key`), each initially
    ``initial``.

    Inputs and outputs:

    * ``("read",)`` or ``("read", None)`` returns the value;
    * ``("write", v)`` returns anything (ignored);
    * ``("cas", expected, new)`` returns ``True`` if the value was ``expected`` (and it is now
      ``new``), ``False`` if it was not (nothing changed).

    Values must be hashable.  Reads whose outcome is unknown constrain nothing, so
    :meth:`partition` drops them (fewer pending operations, a smaller search).  A value
    written but never tested for (no read returned it, no cas expected it) is
    indistinguishable from any other such value, so :meth:`canonical_inputs` makes them all
    equal: unknown-outcome writes of such values become interchangeable, and the search
    stays small even with many of them (it is exponential in the distinguishable ones).
    """

    def __init__(self, initial: Hashable = None) -> None:
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def step(self, state: Hashable, input: Any, output: Any) -> tuple[bool, Hashable]:
        kind = input[0]
        if kind == "read":
            return output is UNKNOWN or output == state, state
        if kind == "write":
            return True, input[1]
        if kind == "cas":
            _, expected, new = input
            matches = state == expected
            if output is UNKNOWN:
                return True, new if matches else state
            return bool(output) == matches, new if matches else state
        raise ValueError(f"KeyValueModel: unknown operation {input!r}")

    def partition(self, history: Iterable[Operation]) -> list[list[Operation]]:
        return partition_by_key(
            op for op in history if not (op.unknown and op.input[0] == "read")
        )

    def canonical_inputs(self, part: Sequence[Operation]) -> list[Any]:
        tested = {self.initial}
        for op in part:
            if op.input[0] == "cas":
                tested.add(op.input[1])
            elif op.input[0] == "read" and not op.unknown:
                tested.add(op.output)

        def canonical(value: Hashable) -> Hashable:
            return value if value in tested else _Untested(value)

        inputs = []
        for op in part:
            kind = op.input[0]
            if kind == "write":
                inputs.append((kind, canonical(op.input[1])))
            elif kind == "cas":
                inputs.append((kind, op.input[1], canonical(op.input[2])))
            else:
                inputs.append(op.input)
        return inputs

    def describe_operation(self, input: Any, output: Any) -> str:
        kind = input[0]
        if kind == "read":
            return f"read -> {output!r}"
        if kind == "write":
            return f"write {input[1]!r}" + (" -> ?" if output is UNKNOWN else "")
        if kind == "cas":
            result = "?" if output is UNKNOWN else "ok" if output else "fail"
            return f"cas {input[1]!r} -> {input[2]!r}: {result}"
        return f"{input!r} -> {output!r}"

    def describe_state(self, state: Hashable) -> str:
        return repr(state)


class _Untested:
    """A value no operation tests for: equal to every other such value (and to nothing
    else), but shown as itself."""

    __slots__ = ("value",)

    def __init__(self, value: Hashable) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Untested)

    def __hash__(self) -> int:
        return hash(_Untested)

    def __repr__(self) -> str:
        return repr(self.value)


LockState = tuple[Hashable, Any]
"""(holder or None, the last fence token granted or None)."""


class LockModel:
    """Mutual-exclusion locks (one per :attr:`Operation.key`) with fencing tokens.

    A safety model: it checks that a lock is never held by two owners at once (nor twice by
    the same owner: not re-entrant) and that the fence tokens of successive grants strictly
    increase.  It says nothing about liveness, so a refused acquire is always legal.

    * ``("acquire", owner, fence)`` returns ``True`` if ``owner`` now holds the lock with
      token ``fence`` (legal only if the lock is free and ``fence`` exceeds every earlier
      token; ``fence`` may be ``None`` when the service has no tokens or it is unknown),
      ``False`` if refused (no effect).
    * ``("release", owner)`` returns ``True`` if ``owner`` held the lock and freed it,
      ``False`` if the service said ``owner`` did not hold it.

    A lease that expires is not modelled: record its expiry as a ``release`` by the holder,
    or check only the fence tokens a resource actually accepted.
    """

    def init(self) -> LockState:
        return (None, None)

    def step(self, state: LockState, input: Any, output: Any) -> tuple[bool, LockState]:
        holder, last_fence = state
        kind, owner = input[0], input[1]
        if kind == "acquire":
            fence = input[2] if len(input) > 2 else None
            grantable = holder is None and (
                fence is None or last_fence is None or fence > last_fence
            )
            granted = (owner, last_fence if fence is None else fence)
            if output is UNKNOWN:
                # Granted if it could be; a refusal is the same as never linearizing it.
                return True, granted if grantable else state
            if output:
                return grantable, granted
            return True, state
        if kind == "release":
            holds = holder is not None and holder == owner
            if output is UNKNOWN:
                return True, (None, last_fence) if holds else state
            if output:
                return holds, (None, last_fence)
            return not holds, state
        raise ValueError(f"LockModel: unknown operation {input!r}")

    def partition(self, history: Iterable[Operation]) -> list[list[Operation]]:
        return partition_by_key(history)

    def describe_operation(self, input: Any, output: Any) -> str:
        result = "?" if output is UNKNOWN else "ok" if output else "refused"
        if input[0] == "acquire" and len(input) > 2 and input[2] is not None:
            return f"acquire by {input[1]!r} fence {input[2]!r}: {result}"
        return f"{input[0]} by {input[1]!r}: {result}"

    def describe_state(self, state: LockState) -> str:
        holder, fence = state
        held = "free" if holder is None else f"held by {holder!r}"
        return held if fence is None else f"{held}, last fence {fence!r}"


# --- results -------------------------------------------------------------------------------


@dataclass
class PartitionFailure:
    """Why one partition is not linearizable.

    ``prefix`` is the longest linearizable prefix the search found, as (operation, state
    after it) in linearization order; after it, ``stuck`` (which had already returned)
    could not be linearized, whichever of the ``candidates`` (called, not yet linearized)
    went first.
    """

    key: Hashable
    size: int
    prefix: list[tuple[Operation, Any]]
    stuck: Operation
    candidates: list[Operation]


@dataclass
class CheckResult:
    """The verdict.  ``ok`` is ``None`` when the search gave up at the timeout before
    finding a violation: the history was then NOT verified (``undecided`` lists the keys of
    the partitions left unexplored or unfinished)."""

    ok: bool | None
    operations: int
    partitions: int
    failure: PartitionFailure | None = None
    undecided: list[Hashable] = field(default_factory=list)
    steps: int = 0
    elapsed_s: float = 0.0
    model: Any = field(default=None, repr=False)
    origin_s: float = field(default=0.0, repr=False)

    def __bool__(self) -> bool:
        return self.ok is True

    def explain(self, prefix_ops: int = 20) -> str:
        """A human-readable report (times relative to the first call of the history), with
        the last ``prefix_ops`` operations of the linearizable prefix of a failure."""
        summary = (f"{self.operations} operations in {self.partitions} partitions, "
                   f"{self.steps} search steps, {self.elapsed_s:.3f} s")
        if self.ok:
            return f"linearizable: {summary}"
        if self.ok is None:
            keys = ", ".join(map(repr, self.undecided[:10]))
            more = f" and {len(self.undecided) - 10} more" if len(self.undecided) > 10 else ""
            return (f"UNDECIDED (gave up at the timeout; the history is NOT verified): "
                    f"{len(self.undecided)} partitions unfinished (keys {keys}{more}); "
                    f"{summary}")
        f = self.failure
        assert f is not None
        lines = [f"NOT linearizable: partition key={f.key!r} ({f.size} operations); {summary}",
                 f"longest linearizable prefix ({len(f.prefix)} operations):"]
        shown = max(0, len(f.prefix) - prefix_ops)
        if shown:
            lines.append(f"  ... ({shown} earlier operations)")
        for i, (op, state) in enumerate(f.prefix[shown:], shown + 1):
            lines.append(f"  {i:4d}. {self._op(op)}    => {self._state(state)}")
        if not f.prefix:
            lines.append("    (none)")
        lines.append("then this operation, which had returned, could not be linearized:")
        lines.append(f"       {self._op(f.stuck)}")
        if f.candidates:
            lines.append("not even after any of these pending operations:")
            lines.extend(f"       {self._op(op)}" for op in f.candidates)
        return "\n".join(lines)

    def _op(self, op: Operation) -> str:
        describe = getattr(self.model, "describe_operation", None)
        output = UNKNOWN if op.unknown else op.output
        text = describe(op.input, output) if describe else f"{op.input!r} -> {output!r}"
        ret = "inf" if op.unknown else f"{op.return_s - self.origin_s:.6f}"
        return f"client {op.client} [{op.call_s - self.origin_s:.6f}, {ret}] {text}"

    def _state(self, state: Any) -> str:
        describe = getattr(self.model, "describe_state", None)
        return describe(state) if describe else repr(state)


# --- the search ----------------------------------------------------------------------------

_CHECK_EVERY = 2048  # search steps between two looks at the clock


class _TimedOut(Exception):
    pass


def _check_partition(
    ops: Sequence[Operation], model: Model[Any], key: Hashable, deadline: float
) -> tuple[PartitionFailure | None, int]:
    """Search one partition; (None, steps) if linearizable.  Raises _TimedOut.

    Operations with a known outcome live in a doubly-linked list of call and return events
    in time order (calls first at equal times, so operations that merely touch count as
    concurrent: no false alarms from clock granularity).  At each node of the search the
    candidates are the pending calls before the first return event still in the list.

    Unknown-outcome operations have no return event (nothing forces them in) and would make
    the search exponential in their number; three things prevent that, all sound because
    such an operation has no deadline and no output to match:

    * dominance: reaching (known ops linearized K, state s) with the unknown ops U
      linearized is pointless if (K, s) was already reached with a subset of U (that node
      had every option this one has), so the memo keeps, per (K, s), the minimal sets U;
    * order: they live in a list of their own and are tried only after every known
      candidate, so (K, s) tends to be reached with the smallest U first;
    * symmetry: of several with equal inputs, only the earliest called still pending is
      tried (any other could swap places with it): the list holds only that one, and
      linearizing it puts the next in its place.
    """
    n = len(ops)
    known = [not op.unknown for op in ops]
    # The known list: events 1..m, sentinels 0 (head) and m + 1 (tail).
    events = sorted(
        [(op.call_s, 0, i) for i, op in enumerate(ops) if known[i]]
        + [(op.return_s, 1, i) for i, op in enumerate(ops) if known[i]]
    )
    m = len(events)
    time_of = [0.0] * (m + 2)
    op_of = [0] * (m + 2)
    is_call = [False] * (m + 2)
    match = [0] * (m + 2)  # call event -> its return event
    call_event = [0] * n
    for e, (t, kind, i) in enumerate(events, 1):
        time_of[e], op_of[e] = t, i
        if kind == 0:
            is_call[e] = True
            call_event[i] = e
        else:
            match[call_event[i]] = e
    nxt = list(range(1, m + 3))
    prv = list(range(-1, m + 1))
    canonical_inputs = getattr(model, "canonical_inputs", None)
    inputs = canonical_inputs(ops) if canonical_inputs else [op.input for op in ops]
    # The unknown list: nodes 1..k by call time, sentinels 0 and k + 1 (called at +inf);
    # only the first of each chain of twins (equal inputs) is in it at first.
    unknowns = sorted((op.call_s, i) for i, op in enumerate(ops) if not known[i])
    k = len(unknowns)
    ucall = [-math.inf] + [t for t, _ in unknowns] + [math.inf]
    uop = [0] + [i for _, i in unknowns] + [0]
    unxt, uprv = [0] * (k + 2), [0] * (k + 2)
    twin = _twins([inputs[i] for _, i in unknowns])
    last = 0
    for node in range(1, k + 2):
        if node > k or not twin[node][1]:
            unxt[last], uprv[node], last = node, last, node
    outputs = [op.output if known[i] else UNKNOWN for i, op in enumerate(ops)]
    bits = [1 << i for i in range(n)]
    step = model.step

    state = model.init()
    lin_known = lin_unknown = 0
    remaining = m // 2
    seen: dict[tuple[int, Any], list[int]] = {(0, state): [0]}
    # (known call event, or -(unknown node); state before it; the bound and stuck return
    # event in force when an unknown one was chosen)
    stack: list[tuple[int, Any, float, int]] = []
    best_len, best_dirty = 0, True
    best: tuple[list[tuple[int, Any, float, int]], Any, int, float] = ([], state, 0, 0.0)
    steps = 0
    e, u, bound, stuck = nxt[0], 0, -math.inf, 0
    known_phase = True
    while remaining:
        steps += 1
        if steps % _CHECK_EVERY == 0 and time.monotonic() > deadline:
            raise _TimedOut(steps)
        if known_phase:
            if not is_call[e]:  # the first return: now the unknown candidates
                known_phase, bound, stuck, u = False, time_of[e], e, unxt[0]
                continue
            i = op_of[e]
            node = e
            e = nxt[e]
        else:
            if ucall[u] > bound:  # every candidate tried: backtrack (the list is sorted)
                if best_dirty:
                    best = (stack[:], state, stuck, bound)
                    best_dirty = False
                if not stack:
                    return _failure(key, ops, op_of, uop, best), steps
                node, state, bound, stuck = stack.pop()
                if node > 0:
                    i = op_of[node]
                    lin_known ^= bits[i]
                    r = match[node]  # put back in the reverse order of removal
                    nxt[prv[r]] = prv[nxt[r]] = r
                    nxt[prv[node]] = prv[nxt[node]] = node
                    remaining += 1
                    known_phase, e = True, nxt[node]
                else:
                    node = -node
                    lin_unknown ^= bits[uop[node]]
                    nt = twin[node][0]
                    if nt:  # its twin out, then itself back in
                        unxt[uprv[nt]], uprv[unxt[nt]] = unxt[nt], uprv[nt]
                    unxt[uprv[node]] = uprv[unxt[node]] = node
                    u = unxt[node]
                continue
            i = uop[u]
            node = -u
            u = unxt[u]
        legal, new_state = step(state, inputs[i], outputs[i])
        if not legal:
            continue
        if node > 0:
            new_known, new_unknown = lin_known | bits[i], lin_unknown
        else:
            new_known, new_unknown = lin_known, lin_unknown | bits[i]
        memo = (new_known, new_state)
        minimal = seen.get(memo)
        if minimal is None:
            seen[memo] = [new_unknown]
        elif any(v & new_unknown == v for v in minimal):
            continue
        else:
            minimal[:] = [v for v in minimal if v & new_unknown != new_unknown]
            minimal.append(new_unknown)
        stack.append((node, state, bound, stuck))
        state, lin_known, lin_unknown = new_state, new_known, new_unknown
        if node > 0:  # lift the call and its return out of the list (dancing links)
            nxt[prv[node]], prv[nxt[node]] = nxt[node], prv[node]
            r = match[node]
            nxt[prv[r]], prv[nxt[r]] = nxt[r], prv[r]
            remaining -= 1
        else:
            node = -node
            before = uprv[node]
            unxt[before], uprv[unxt[node]] = unxt[node], before
            nt = twin[node][0]
            if nt:  # its next twin becomes a candidate, in call order
                while ucall[unxt[before]] <= ucall[nt]:
                    before = unxt[before]
                after = unxt[before]
                unxt[nt], uprv[nt] = after, before
                unxt[before] = uprv[after] = nt
        if len(stack) > best_len:
            best_len, best_dirty = len(stack), True
        known_phase, e = True, nxt[0]
    return None, steps


def _twins(inputs: Sequence[Any]) -> list[tuple[int, bool]]:
    """For nodes 1..len(inputs) (unknown-outcome operations in call order): the next node
    with an equal input (0 if none) and whether an earlier one has it.  Unhashable inputs
    have no twins."""
    twin = [(0, False)] * (len(inputs) + 2)
    last: dict[Any, int] = {}
    for node, inp in enumerate(inputs, 1):
        try:
            prev = last.get(inp, 0)
            last[inp] = node
        except TypeError:
            continue
        if prev:
            twin[prev] = (node, twin[prev][1])
            twin[node] = (0, True)
    return twin


def _failure(
    key: Hashable, ops: Sequence[Operation], op_of: list[int], uop: list[int],
    best: tuple[list[tuple[int, Any, float, int]], Any, int, float],
) -> PartitionFailure:
    """The report from the deepest point the search reached (stack, state, stuck return
    event, its time): what was linearized, what then had to be and what could have been."""
    stack, state, stuck, bound = best
    chosen = [op_of[node] if node > 0 else uop[-node] for node, *_ in stack]
    after = [entry[1] for entry in stack[1:]] + [state] if stack else []
    done = set(chosen)
    stuck_op = op_of[stuck]
    return PartitionFailure(
        key=key, size=len(ops),
        prefix=[(ops[i], s) for i, s in zip(chosen, after, strict=True)],
        stuck=ops[stuck_op],
        candidates=[op for i, op in enumerate(ops)
                    if i not in done and i != stuck_op and op.call_s <= bound],
    )


def check(
    history: Sequence[Operation], model: Model[Any], *, timeout_s: float | None = None
) -> CheckResult:
    """Whether ``history`` is linearizable with respect to ``model``.

    With ``timeout_s`` the search gives up after about that long and reports ``ok=None``
    (undecided) unless it has already found a violation.  It stops at the first partition
    that fails.
    """
    start = time.monotonic()
    deadline = math.inf if timeout_s is None else start + timeout_s
    partition: Callable[[Sequence[Operation]], list[list[Operation]]] | None = getattr(
        model, "partition", None)
    parts = [p for p in (partition(history) if partition else [list(history)]) if p]
    origin = min((op.call_s for op in history), default=0.0)
    result = CheckResult(ok=True, operations=len(history), partitions=len(parts),
                         model=model, origin_s=origin)
    for n, ops in enumerate(parts):
        key = ops[0].key
        try:
            if time.monotonic() > deadline:
                raise _TimedOut(0)
            failure, steps = _check_partition(ops, model, key, deadline)
        except _TimedOut as stop:
            result.steps += stop.args[0]
            result.ok = None
            result.undecided = [p[0].key for p in parts[n:]]
            break
        result.steps += steps
        if failure is not None:
            result.ok, result.failure = False, failure
            break
    result.elapsed_s = time.monotonic() - start
    return result


# --- recording -----------------------------------------------------------------------------


class HistoryRecorder:
    """Records a history from a real run, for :func:`check`.  Thread-safe.

    Call :meth:`invoke` just before sending a request and exactly one of :meth:`ok` (it
    happened and returned this), :meth:`fail` (it definitely did not happen, e.g. refused
    before any effect: it is dropped) or :meth:`info` (unknown: a timeout, a lost
    connection) when its fate is known.  Operations still open when :meth:`history` is
    called count as unknown.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[int, tuple[int, float, Any, Hashable]] = {}
        self._done: dict[int, Operation] = {}
        self._next = 0

    def invoke(self, client: int, input: Any, key: Hashable = None) -> int:
        """Note the call; returns the handle to complete it with."""
        with self._lock:
            handle = self._next
            self._next += 1
            self._open[handle] = (client, self._clock(), input, key)
            return handle

    def ok(self, handle: int, output: Any) -> None:
        """The operation took effect and returned ``output``."""
        self._complete(handle, output, known=True)

    def fail(self, handle: int) -> None:
        """The operation definitely did not take effect: forget it."""
        with self._lock:
            self._take(handle)

    def info(self, handle: int) -> None:
        """The outcome is unknown: it may take effect at any time after its call, or never."""
        self._complete(handle, UNKNOWN, known=False)

    def history(self) -> list[Operation]:
        """Every recorded operation not failed, in the order of their calls."""
        with self._lock:
            ops = dict(self._done)
            for handle, (client, call_s, input, key) in self._open.items():
                ops[handle] = Operation(client, call_s, math.inf, input, UNKNOWN, key)
        return [ops[h] for h in sorted(ops)]

    def _complete(self, handle: int, output: Any, *, known: bool) -> None:
        with self._lock:
            client, call_s, input, key = self._take(handle)
            return_s = self._clock() if known else math.inf
            self._done[handle] = Operation(client, call_s, return_s, input, output, key)

    def _take(self, handle: int) -> tuple[int, float, Any, Hashable]:
        try:
            return self._open.pop(handle)
        except KeyError:
            raise ValueError(f"operation {handle} is not open (never invoked, or done)") from None
