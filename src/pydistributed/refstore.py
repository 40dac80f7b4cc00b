"""The owner's table of stored references: values, channels, and who holds them. No I/O.

Every ``Future`` and ``RemoteChannel`` has its storage on one process, its owner (``where``).
The owner keeps, per reference, a count per client process of the handles that process holds.
Add-client and delete-client notices arrive from many connections in no guaranteed order, so
a count may go below zero for a while (a delete overtook its add); the storage is freed only
when *every* count is zero, which keeps a reference alive as long as anyone still holds it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import CapturedException
from .ids import RRID

__all__ = ["Failure", "FutureSlot", "RefStore"]


class Failure:
    """What a ``Future`` holds when the call that was to set it raised on process ``pid``."""

    __slots__ = ("captured", "pid")

    def __init__(self, pid: int, captured: CapturedException) -> None:
        self.pid = pid
        self.captured = captured

    def __reduce__(self) -> tuple[Any, ...]:
        return (Failure, (self.pid, self.captured))


class FutureSlot:
    """The write-once storage of a ``Future``."""

    __slots__ = ("_cond", "_set", "_value")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._set = False
        self._value: Any = None

    def put(self, value: Any) -> None:
        """Set the value. Raises ``RuntimeError`` if it was set already."""
        with self._cond:
            if self._set:
                raise RuntimeError("a Future can be set only once")
            self._value = value
            self._set = True
            self._cond.notify_all()

    def isready(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> None:
        """Block until the value is set. Raises ``TimeoutError`` after ``timeout`` seconds."""
        if self._set:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._set:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("the Future was not set in time")
                self._cond.wait(remaining)

    def fetch(self, timeout: float | None = None) -> Any:
        """The value, once set (a :class:`Failure` if the call raised)."""
        self.wait(timeout)
        return self._value


class _Entry:
    __slots__ = ("clients", "storage")

    def __init__(self) -> None:
        self.storage: Any = None
        self.clients: dict[int, int] = {}


class RefStore:
    """The stored references of one process, keyed by :class:`~pydistributed.ids.RRID`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[RRID, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, rrid: RRID) -> Any:
        """The storage of ``rrid``, or None when there is none (never made, or freed)."""
        entry = self._entries.get(rrid)
        return None if entry is None else entry.storage

    def add(
        self,
        rrid: RRID,
        client: int,
        n: int = 1,
        make: Callable[[], Any] | None = FutureSlot,
    ) -> Any:
        """Count ``n`` more handles of ``rrid`` held by ``client``; make the storage if needed.

        Returns the storage (None when there is none yet and ``make`` is None, or when the
        reference was freed by this very change).
        """
        with self._lock:
            entry = self._entries.get(rrid)
            if entry is None:
                entry = self._entries[rrid] = _Entry()
            if entry.storage is None and make is not None:
                entry.storage = make()
            entry.clients[client] = entry.clients.get(client, 0) + n
            storage = entry.storage
            self._maybe_free(rrid, entry)
            return storage

    def ensure(self, rrid: RRID, make: Callable[[], Any] = FutureSlot) -> Any:
        """The storage of ``rrid``, made now if there is none, without counting a handle.

        An operation can reach the owner before the call or notice that creates the
        reference (they travel on different connections); the storage made here is the one
        that the creating call will then fill.
        """
        with self._lock:
            entry = self._entries.get(rrid)
            if entry is None:
                entry = self._entries[rrid] = _Entry()
            if entry.storage is None:
                entry.storage = make()
            return entry.storage

    def install(self, rrid: RRID, storage: Any) -> None:
        """Set the storage of ``rrid`` (made by a factory) if the entry is still there."""
        with self._lock:
            entry = self._entries.get(rrid)
            if entry is not None and entry.storage is None:
                entry.storage = storage

    def release(self, rrid: RRID, client: int, n: int = 1) -> None:
        """Count ``n`` fewer handles of ``rrid`` held by ``client``."""
        with self._lock:
            entry = self._entries.get(rrid)
            if entry is None:
                # A delete that overtook its add: remember it, so that the add cancels it.
                entry = self._entries[rrid] = _Entry()
            entry.clients[client] = entry.clients.get(client, 0) - n
            self._maybe_free(rrid, entry)

    def apply(
        self,
        adds: list[tuple[RRID, int]] | tuple[tuple[RRID, int], ...],
        dels: list[tuple[RRID, int]] | tuple[tuple[RRID, int], ...],
    ) -> None:
        """Apply a batch of notices, adds first.

        An add for a reference with no storage yet makes a Future's storage: that is how a
        ``Future(pid)`` made on another process comes into being on its owner.
        """
        for rrid, client in adds:
            self.add(rrid, client)
        for rrid, client in dels:
            self.release(rrid, client)

    def drop_client(self, client: int) -> None:
        """Forget every handle that ``client`` held (it has exited)."""
        with self._lock:
            for rrid, entry in list(self._entries.items()):
                if entry.clients.pop(client, None) is not None:
                    self._maybe_free(rrid, entry)

    def _maybe_free(self, rrid: RRID, entry: _Entry) -> None:
        for count in entry.clients.values():
            if count:
                return
        del self._entries[rrid]

    def snapshot(self) -> dict[RRID, dict[int, int]]:
        """A copy of the client counts (for tests and debugging)."""
        with self._lock:
            return {k: dict(v.clients) for k, v in self._entries.items()}
