"""The owner's table of stored references: values, channels, and who holds them. No I/O.

Every ``Future`` and ``RemoteChannel`` has its storage on one process, its owner (``where``).
The owner keeps, per reference, a count per client process of the handles that process holds.
Add-client and delete-client notices arrive from many connections in no guaranteed order, so
a count may go below zero for a while (a delete overtook its add); the storage is freed only
when *every* count is zero, which keeps a reference alive as long as anyone still holds it.

Why an entry cannot be freed while a handle is still on its way: a process that sends a
handle holds one itself while the message is encoded, and announces the receiver's handle to
the owner (an add) before the message leaves. Its own delete, sent later on the same
connection, therefore reaches the owner after that add; so at every moment some count is
positive until the last handle anywhere is dropped.

A client that has exited is *gone*: :meth:`RefStore.drop_client` forgets its counts, and
notices about it that arrive later (an add announced by a third process before it learnt of
the exit, a delete still in flight) are ignored, so they can neither keep an entry alive for
ever nor free it early.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .errors import CapturedException, RemoteException
from .ids import RRID

__all__ = ["Failure", "FutureSlot", "Leases", "RefStore"]

log = logging.getLogger("pydistributed")


class Failure:
    """What a ``Future`` holds when the call that was to set it raised on process ``pid``."""

    __slots__ = ("_error", "captured", "pid")

    def __init__(self, pid: int, captured: CapturedException) -> None:
        self.pid = pid
        self.captured = captured
        self._error: RemoteException | None = None

    def error(self) -> RemoteException:
        """The RemoteException to raise: one object per failure, however often it is raised
        (so that ``sync()`` can tell a failure it has seen already)."""
        if self._error is None:
            self._error = RemoteException(self.pid, self.captured)
        return self._error

    def __reduce__(self) -> tuple[Any, ...]:
        return (Failure, (self.pid, self.captured))


class FutureSlot:
    """The write-once storage of a ``Future``.

    :meth:`on_set` registers a function to call with the value once it is set (how a
    ``Future`` waited on here, or watched from another process, learns of its value without a
    thread that waits): it runs on the thread that sets the value, and must not block.
    """

    __slots__ = ("_callbacks", "_cond", "_set", "_value")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._set = False
        self._value: Any = None
        self._callbacks: list[Callable[[Any], None]] | None = None

    def put(self, value: Any) -> None:
        """Set the value. Raises ``RuntimeError`` if it was set already."""
        if not self.try_put(value):
            raise RuntimeError("a Future can be set only once")

    def try_put(self, value: Any) -> bool:
        """Set the value unless it was set already; whether it was set by this call."""
        with self._cond:
            if self._set:
                return False
            self._value = value
            self._set = True
            self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for fn in callbacks:
                try:
                    fn(value)
                except Exception:  # one bad watcher must not stop the others, nor the putter
                    log.exception("a callback of a Future's storage failed")
        return True

    def on_set(self, fn: Callable[[Any], None]) -> None:
        """Call ``fn(value)`` once the value is set: now, on this thread, if it is set already."""
        with self._cond:
            if not self._set:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self._value)

    def isready(self) -> bool:
        """Whether the value is set. Never blocks."""
        return self._set

    def wait(self, timeout: float | None = None) -> None:
        """Block until the value is set.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (``<= 0`` polls).
        """
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
        """The value, once set (a :class:`Failure` if the call raised).

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        self.wait(timeout)
        return self._value


class _Entry:
    __slots__ = ("clients", "pending", "storage")

    def __init__(self) -> None:
        self.storage: Any = None
        self.clients: dict[int, int] = {}
        # made by ``ensure`` and not counted yet: kept while it waits for its first add
        self.pending = False


class RefStore:
    """The stored references of one process, keyed by :class:`~pydistributed.ids.RRID`.

    Thread-safe: notices are applied on connection reader threads while calls look storage
    up on executor threads. ``len()`` is the number of live entries.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[int, int], _Entry] = {}  # keyed by RRID (a tuple)
        self._gone: set[int] = set()
        self.leases = Leases()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rrid: object) -> bool:
        return rrid in self._entries

    def lookup(self, rrid: tuple[int, int]) -> Any:
        """The storage of ``rrid``, or None when there is none (never made, or freed).

        ``rrid`` may be a plain ``(whence, id)`` tuple: it equals the RRID.
        """
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

        A client that is gone is not counted (the storage is still made when asked for, and
        freed at once if nobody else holds the reference).

        Returns the storage (None when there is none yet and ``make`` is None; possibly a
        storage that this very change freed).
        """
        with self._lock:
            entry = self._entries.get(rrid)
            if entry is None:
                entry = self._entries[rrid] = _Entry()
            if entry.storage is None and make is not None:
                entry.storage = make()
            if client not in self._gone:
                entry.clients[client] = entry.clients.get(client, 0) + n
                entry.pending = False
            storage = entry.storage
            self._maybe_free(rrid, entry)
            return storage

    def ensure(self, rrid: RRID, make: Callable[[], Any] = FutureSlot) -> Any:
        """The storage of ``rrid``, made now (with no client counted) if there is none.

        For an operation that overtook the add that creates the storage (a ``Future(pid)``
        made on one process, sent to a second, which used it before the first one's add
        arrived): the entry then stays until its counts have gone up and back to zero.
        """
        with self._lock:
            entry = self._entries.get(rrid)
            if entry is None:
                entry = self._entries[rrid] = _Entry()
                entry.pending = True
            if entry.storage is None:
                entry.storage = make()
            return entry.storage

    def release(self, rrid: RRID, client: int, n: int = 1) -> None:
        """Count ``n`` fewer handles of ``rrid`` held by ``client`` (ignored if it is gone)."""
        with self._lock:
            if client in self._gone:
                return
            entry = self._entries.get(rrid)
            if entry is None:
                # A delete that overtook its add: remember it, so that the add cancels it.
                entry = self._entries[rrid] = _Entry()
            entry.clients[client] = entry.clients.get(client, 0) - n
            entry.pending = False
            self._maybe_free(rrid, entry)

    def apply(
        self,
        adds: Iterable[tuple[RRID, int]],
        dels: Iterable[tuple[RRID, int]],
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
        """Forget every handle that ``client`` held, and every later notice about it.

        Called when ``client`` has exited; process ids are never reused.
        """
        with self._lock:
            self._gone.add(client)
            for rrid, entry in list(self._entries.items()):
                if entry.clients.pop(client, None) is not None:
                    self._maybe_free(rrid, entry)
        for channel, values in self.leases.drop_client(client):
            self.give_back(channel, values)

    @staticmethod
    def give_back(channel: Any, values: list[Any]) -> None:
        """Put ``values`` (taken ahead, never used) back into ``channel``: at its front for a
        ``Channel``; at its end, from a thread, for a channel of the user's own."""
        give = getattr(channel, "_give_back", None)
        if give is not None:
            give(values)
            return

        def put_all() -> None:
            for value in values:
                try:
                    channel.put(value)
                except Exception:
                    return  # closed meanwhile: the values go with the channel

        threading.Thread(target=put_all, name="pydist-give-back", daemon=True).start()

    def _maybe_free(self, rrid: tuple[int, int], entry: _Entry) -> None:
        # Lock held. An entry made by ``ensure`` is kept until its first notice.
        if entry.pending:
            return
        for count in entry.clients.values():
            if count:
                return
        del self._entries[rrid]

    def clients(self, rrid: RRID) -> dict[int, int]:
        """A copy of the client counts of ``rrid`` (empty when there is no entry)."""
        with self._lock:
            entry = self._entries.get(rrid)
            return {} if entry is None else dict(entry.clients)

    def snapshot(self) -> dict[tuple[int, int], dict[int, int]]:
        """A copy of the client counts (for tests and debugging)."""
        with self._lock:
            return {k: dict(v.clients) for k, v in self._entries.items()}


class _Lease:
    __slots__ = ("channel", "ended", "mark", "used", "values")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.values: dict[int, Any] = {}  # by the number of the take
        self.ended = False
        self.used = 0  # the last value the consumer has said it returned
        self.mark: Any = None  # its used mark (a leasemark.MarkReader), if it has one

    def forget_used(self, used: int) -> None:
        self.used = max(self.used, used)
        for n in [n for n in self.values if n <= self.used]:
            del self.values[n]

    def close_mark(self) -> None:
        if self.mark is not None:
            self.mark.close()
            self.mark = None


class Leases:
    """Values that consumers on other processes took ahead (``RemoteChannel.consume``) and
    have not used yet, per ``(client, consumer id)``, so that the values of a consumer that
    ends or exits go back into their channel (``refops.lease_take``, ``lease_end``).

    A consumer that keeps several values ahead says which it returned in its requests, and,
    for its process's exit, in its used mark (``leasemark``): then only the values after the
    mark go back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], _Lease] = {}
        self._gone: set[int] = set()

    def hold(
        self,
        client: int,
        cid: int,
        channel: Any,
        seq: int,
        values: list[Any],
        used: int,
        mark: Any = None,
    ) -> bool:
        """Keep ``values``, taken by takes ``seq``, ``seq + 1``...; forget those up to
        ``used`` (returned to the consumer's caller). ``mark``: the consumer's used mark (a
        ``leasemark.MarkReader``, given with its first request), kept and closed with the
        lease. False if the consumer has ended or exited: give the values back."""
        with self._lock:
            lease = None if client in self._gone else self._held.get((client, cid))
            if lease is None and client not in self._gone:
                lease = self._held[(client, cid)] = _Lease(channel)
            if lease is None or lease.ended:
                if mark is not None:
                    mark.close()
                return False
            if mark is not None:
                lease.close_mark()
                lease.mark = mark
            lease.forget_used(used)
            for i, value in enumerate(values):
                lease.values[seq + i] = value
            return True

    def end(self, client: int, cid: int, used: int, pending: bool) -> tuple[Any, list[Any]]:
        """The consumer ended: its channel and its values taken after ``used``, in order.
        ``pending``: a take of it may still come, which must find it ended (it is kept as
        such until ``client`` exits); else it is forgotten."""
        with self._lock:
            lease = self._held.pop((client, cid), None) or _Lease(None)
            if pending:
                self._held[(client, cid)] = lease
            lease.ended = True
            lease.close_mark()
            left = [v for n, v in sorted(lease.values.items()) if n > used]
            lease.values.clear()
            return lease.channel, left

    def drop_client(self, client: int) -> list[tuple[Any, list[Any]]]:
        """``client`` has exited: every channel and the values its consumers held and had not
        returned (after their used mark), in order."""
        with self._lock:
            self._gone.add(client)
            mine = [k for k in self._held if k[0] == client]
            out = []
            for k in mine:
                lease = self._held.pop(k)
                if lease.mark is not None:
                    lease.forget_used(lease.mark.get())
                    lease.close_mark()
                if lease.values:
                    out.append((lease.channel, [v for _, v in sorted(lease.values.items())]))
            return out
