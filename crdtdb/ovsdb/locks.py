"""OVSDB locks (RFC 7047 section 4.1.8-4.1.10) with ovsdb-server's queueing rules.

A lock has a queue of waiters; the first is the owner. ``lock`` queues at the back; ``steal``
goes to the front and robs the current owner. A robbed ``steal`` waiter leaves the queue (it
must ``unlock`` before asking again); a robbed ``lock`` waiter stays queued and gets the lock
back later. Sans-I/O: methods return who must be told what, the caller sends the messages.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from dataclasses import dataclass, field


class LockMode(enum.Enum):
    WAIT = "lock"
    STEAL = "steal"


@dataclass(eq=False, slots=True)
class _Waiter:
    session: Hashable
    mode: LockMode
    #: The lock's name while queued; ``None`` after a robbed ``steal`` left the queue.
    queued_on: str | None


@dataclass(slots=True)
class LockTable:
    """Every lock of one server, shared by all its sessions."""

    _queues: dict[str, list[_Waiter]] = field(default_factory=dict)
    #: (session, lock name) -> that session's waiter, queued or not.
    _waiters: dict[tuple[Hashable, str], _Waiter] = field(default_factory=dict)

    def has_waiter(self, session: Hashable, name: str) -> bool:
        return (session, name) in self._waiters

    def holds(self, session: Hashable, name: str) -> bool:
        queue = self._queues.get(name)
        return bool(queue) and queue[0].session == session and \
            self._waiters.get((session, name)) is queue[0]

    def names_of(self, session: Hashable) -> list[str]:
        """The locks ``session`` holds or waits for."""
        return [name for s, name in self._waiters if s == session]

    def owner(self, name: str) -> Hashable | None:
        """The session at the head of ``name``'s queue, if any."""
        queue = self._queues.get(name)
        return queue[0].session if queue else None

    def acquire(self, session: Hashable, name: str,
                mode: LockMode) -> tuple[bool, Hashable | None]:
        """Queue ``session``; returns (owns it now, session that was robbed or None)."""
        if (session, name) in self._waiters:
            raise ValueError(f"{session!r} already waits for {name}")
        queue = self._queues.setdefault(name, [])
        victim = queue[0] if mode is LockMode.STEAL and queue else None
        waiter = _Waiter(session, mode, name)
        if mode is LockMode.STEAL:
            queue.insert(0, waiter)
        else:
            queue.append(waiter)
        self._waiters[(session, name)] = waiter
        if victim is not None and victim.mode is LockMode.STEAL:
            queue.remove(victim)
            victim.queued_on = None
        return queue[0] is waiter, (victim.session if victim is not None else None)

    def release(self, session: Hashable, name: str) -> Hashable | None:
        """Drop ``session``'s waiter; returns the lock's owner afterwards, to be told "locked".

        Like ovsdb-server, the owner is returned (and so notified) even when it did not change.
        """
        waiter = self._waiters.pop((session, name))
        if waiter.queued_on is None:
            return None
        queue = self._queues[name]
        queue.remove(waiter)
        if not queue:
            del self._queues[name]
            return None
        return queue[0].session

    def release_all(self, session: Hashable) -> list[tuple[str, Hashable]]:
        """Everything ``session`` held or awaited; returns (lock, new owner) pairs to notify."""
        notify = []
        for s, name in [k for k in self._waiters if k[0] == session]:
            new_owner = self.release(s, name)
            if new_owner is not None:
                notify.append((name, new_owner))
        return notify

    def statistics(self) -> dict[str, int]:
        return {"locks": len(self._queues), "waiters": len(self._waiters)}
