"""Local, thread-safe channels: Julia's ``AbstractChannel`` and ``Channel``.

``Channel(size)`` is a first-in, first-out queue shared by threads, with Julia's semantics:

* ``Channel(0)`` is a rendezvous: ``put`` returns only once a ``take`` has received its value.
* ``Channel(n)`` buffers up to ``n`` values; ``put`` blocks while the buffer is full. Putters
  waiting for room get it first come, first served: a newcomer never overtakes them.
* ``Channel(math.inf)`` never blocks ``put``.

``close()`` stops further ``put``; values already buffered can still be taken, after which
``take``/``fetch``/``wait`` raise :class:`~pydistributed.errors.ChannelClosedError`. Iterating
a channel takes values until it is closed and empty.

How the rendezvous works (all under one lock)::

    put(v):  a taker is waiting?  yes -> hand v to that taker (its _Request), return
                                  no  -> post an _Offer(v), wait until a taker marks it taken
    take():  an offer is posted?  yes -> mark the first offer taken, wake its putter, return v
                                  no  -> post a _Request, wait until a putter fills it

So offers and requests are never both pending. A putter that gives up (timeout, ``close``, an
exception such as ``KeyboardInterrupt``) withdraws its offer under the lock, so a value whose
``put`` did not return normally is never delivered. A taker that gives up after its request
was filled hands the value back to the front of the channel, so no value is lost.

Every blocking method takes ``timeout`` (seconds, ``None`` = forever), computes one monotonic
deadline and raises the builtin :class:`TimeoutError` once it has passed; a negative timeout
polls. This module does no I/O and imports nothing above :mod:`pydistributed.errors`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from . import timeouts
from .channelbase import AbstractChannel, check_size
from .channelbase import wait_on as _wait
from .errors import ChannelClosedError

__all__ = ["AbstractChannel", "Channel"]

T = TypeVar("T")


class _Offer:
    """A value posted by a putter blocked on a rendezvous channel.

    ``cond`` is ``None`` for a value handed back by an interrupted taker: its putter has
    already returned, so the channel owns the value and nobody is waiting for it.
    """

    __slots__ = ("cond", "taken", "value")

    def __init__(self, value: Any, cond: threading.Condition | None) -> None:
        self.value = value
        self.cond = cond
        self.taken = False


class _Request:
    """A taker blocked on a rendezvous channel, waiting for a putter to fill it.

    ``copy``: the taker wants the value as it is when ``put`` hands it over (a taker on
    another process, whose answer is encoded later): the putter fills ``copied`` with
    ``copy(value)`` before it returns, so a change to the value after ``put`` cannot reach it.
    """

    __slots__ = ("cond", "copied", "copy", "filled", "value")

    def __init__(self, cond: threading.Condition, copy: Callable[[Any], Any] | None) -> None:
        self.cond = cond
        self.copy = copy
        self.filled = False
        self.value: Any = None
        self.copied: Any = None

    def fill(self, value: Any) -> None:
        """Hand ``value`` over (lock held). Raises what ``copy`` raises; then nothing was."""
        if self.copy is not None:
            self.copied = self.copy(value)
        self.value = value
        self.filled = True
        self.cond.notify()

    def result(self) -> Any:
        return self.copied if self.copy is not None else self.value


class Channel(AbstractChannel[T]):
    """A local, thread-safe FIFO channel (Julia's ``Channel{Any}(size)``).

    Args:
        size: the capacity: ``0`` for an unbuffered (rendezvous) channel, a positive ``int``
            for a bounded buffer, ``math.inf`` for an unbounded one.

    Raises:
        ValueError: ``size`` is not a non-negative ``int`` or ``math.inf`` (a ``bool`` is not a
            size).

    Many threads may put and take concurrently; every value is taken exactly once, in the
    order the puts completed.
    """

    def __init__(self, size: int | float = 0) -> None:
        self._size: int | float = check_size(size)
        # An RLock, not a Lock: Condition.wait then restores the lock with RLock's C method
        # rather than a Python one, so a KeyboardInterrupt (or an asynchronous exception)
        # arriving as the wait ends cannot leave this thread without the lock it must release.
        self._lock = threading.RLock()
        self._not_empty = threading.Condition(self._lock)  # takers of a buffered channel
        # putters of a bounded channel waiting for room, first come first served: each has a
        # condition of its own, and only the first is woken when room frees (see _wait_room)
        self._room_waiters: deque[threading.Condition] = deque()
        self._readable = threading.Condition(self._lock)  # fetch() and wait()
        self._buffer: deque[Any] = deque()
        self._offers: deque[_Offer] = deque()  # size 0: values of blocked putters, in order
        self._requests: deque[_Request] = deque()  # size 0: blocked takers, in order
        self._takers = 0  # takers of a buffered channel waiting for a value now
        self._open = True

    # -- queries ---------------------------------------------------------------------------

    @property
    def size(self) -> int | float:
        """The capacity: ``0`` (unbuffered), a positive ``int``, or ``math.inf``."""
        return self._size

    def n_avail(self) -> int:
        """How many values can be taken now (for size 0: how many putters are waiting)."""
        with self._lock:
            return self._n_avail()

    def _n_avail(self) -> int:
        return len(self._offers) if self._size == 0 else len(self._buffer)

    def isready(self) -> bool:
        """Whether a value can be taken now (for size 0: a putter is waiting). Never blocks."""
        with self._lock:
            return self._n_avail() > 0

    def isopen(self) -> bool:
        """Whether the channel is still open. Never blocks."""
        return self._open

    def __repr__(self) -> str:
        with self._lock:
            state = "open" if self._open else "closed"
            return f"Channel(size={self._size}, avail={self._n_avail()}, {state})"

    # -- put -------------------------------------------------------------------------------

    def put(self, value: T, timeout: float | None = None) -> T:
        """Add ``value`` at the end of the channel; returns ``value`` (Julia's ``put!`` on a
        ``Channel``; ``RemoteChannel.put`` and ``Future.put`` return the reference, as Julia's).

        Blocks on an unbuffered channel until a ``take`` receives the value, and on a full
        bounded channel until there is room. Never blocks on an unbounded channel. When the
        taker of an unbuffered channel is on another process (a ``RemoteChannel`` owned here),
        it receives the value as it was when ``put`` returned: the value is pickled before.

        Args:
            value: any object; it is stored as is, not copied.
            timeout: seconds to wait at most; ``None`` waits forever, ``0`` polls.

        Raises:
            ChannelClosedError: the channel is closed, or closed while this call was blocked;
                the value was not added.
            TimeoutError: the timeout passed first; the value was not added and will never
                be delivered.
            Exception: of pickling the value for a taker on another process (unbuffered):
                the value was not taken.
        """
        deadline = None if timeout is None else timeouts.deadline(timeouts.check_timeout(timeout))
        with self._lock:
            if not self._open:
                raise ChannelClosedError("put on a closed channel")
            if self._size == 0:
                self._put_rendezvous(value, deadline, timeout)
                return value
            if self._size != math.inf:
                self._wait_room(deadline, timeout)
            self._buffer.append(value)
            self._not_empty.notify()
            self._readable.notify_all()
            if self._room_waiters:
                self._wake_putter()  # room left: the next one's turn
        return value

    def _wait_room(self, deadline: float | None, timeout: float | None) -> None:
        # Lock held, channel open and bounded: wait until the buffer has room and no putter
        # that came earlier still waits for it (no barging: a stream's batch, which comes
        # back for every run of values, queues behind the putters that waited before it).
        if len(self._buffer) < self._size and not self._room_waiters:
            return
        cond = threading.Condition(self._lock)
        self._room_waiters.append(cond)
        try:
            while len(self._buffer) >= self._size or self._room_waiters[0] is not cond:
                _wait(cond, deadline, "put", timeout)
                # Checked after every wakeup: room freed after close() is no licence.
                if not self._open:
                    raise ChannelClosedError("channel closed while put was blocked")
        except BaseException:
            self._room_waiters.remove(cond)
            self._wake_putter()  # room we were woken for goes to the next one
            raise
        self._room_waiters.popleft()  # we were first

    def _wake_putter(self) -> None:
        # Lock held: wake the first putter waiting for room, if there is room.
        if self._room_waiters and len(self._buffer) < self._size:
            self._room_waiters[0].notify()

    def _put_some(self, values: list[Any], start: int, timeout: float | None) -> int:
        """Put ``values[start:]`` in order, as many as there is room for: blocks (up to
        ``timeout``) only until the first one fits. Returns how many were put (at least one).

        A stream's batch (``refops.stream_put``) goes in this way, one lock per run of values
        rather than per value; each value waits its turn for room like a ``put``, so a batch
        does not jump ahead of putters that were waiting before it. Raises as :meth:`put`
        (then nothing more was put).
        """
        if self._size == 0:
            self.put(values[start], timeout)  # only to a taker, one at a time
            return 1
        deadline = timeouts.deadline(timeout)
        with self._lock:
            if not self._open:
                raise ChannelClosedError("put on a closed channel")
            end = len(values)
            if self._size != math.inf:
                self._wait_room(deadline, timeout)
                end = min(end, start + int(self._size - len(self._buffer)))
            self._buffer.extend(values[start:end])
            self._not_empty.notify(end - start)
            self._readable.notify_all()
            if self._room_waiters:
                self._wake_putter()  # room left: the next one's turn
            return end - start

    def _put_now(self, values: list[Any]) -> bool:
        """Put all of ``values`` if there is room for them now and nobody waits for room;
        else put nothing and return False (never blocks: the owner's reading thread uses it,
        ``refops``)."""
        with self._lock:
            if (
                not self._open
                or self._size == 0
                or self._room_waiters
                or len(self._buffer) + len(values) > self._size
            ):
                return False
            self._buffer.extend(values)
            self._not_empty.notify(len(values))
            self._readable.notify_all()
            return True

    def _put_rendezvous(self, value: Any, deadline: float | None, timeout: float | None) -> None:
        # Lock held, channel open.
        if self._requests:
            self._requests[0].fill(value)  # raises if the value cannot be copied: not taken
            self._requests.popleft()
            return
        offer = _Offer(value, threading.Condition(self._lock))
        self._offers.append(offer)
        self._readable.notify_all()
        try:
            while not offer.taken:
                if not self._open:
                    raise ChannelClosedError("channel closed while put was blocked")
                assert offer.cond is not None
                _wait(offer.cond, deadline, "put", timeout)
        finally:
            if not offer.taken:
                # Withdraw: a put that did not return normally must never deliver its value.
                # close() may already have removed it.
                try:
                    self._offers.remove(offer)
                except ValueError:
                    pass

    # -- take ------------------------------------------------------------------------------

    def take(self, timeout: float | None = None) -> T:
        """Remove and return the first value.

        Blocks until a value is available (for size 0: until a ``put`` offers one).

        Args:
            timeout: seconds to wait at most; ``None`` waits forever, ``0`` polls.

        Raises:
            ChannelClosedError: the channel is closed and empty, or became so while blocked.
            TimeoutError: the timeout passed first; nothing was taken.
            TypeError, ValueError: ``timeout`` is not a number of seconds (NaN) or ``None``.
        """
        if timeout is not None:
            timeout = timeouts.check_timeout(timeout)
        return self._take(None, timeout)

    def _take(self, copy: Callable[[Any], Any] | None, timeout: float | None) -> Any:
        """``take``; with ``copy``, returns ``copy(value)``, made before an unbuffered
        channel's ``put`` returns (for a taker on another process: see ``refops.take_ch``).
        A value that ``copy`` refuses is not taken: the error is raised, the value stays.
        ``timeout`` has been checked (``timeouts.check_timeout``) by the caller."""
        deadline = timeouts.deadline(timeout)
        with self._lock:
            if self._size == 0:
                return self._take_rendezvous(deadline, timeout, copy)
            try:
                while not self._buffer:
                    if not self._open:
                        raise ChannelClosedError("take on a closed, empty channel")
                    self._takers += 1
                    try:
                        _wait(self._not_empty, deadline, "take", timeout)
                    finally:
                        self._takers -= 1
            except BaseException:
                # We may have consumed a wakeup meant for "a value arrived": pass it on.
                if self._buffer:
                    self._not_empty.notify()
                raise
            value = self._buffer[0]
            if copy is not None:
                value = copy(value)  # raises: the value stays first in the channel
            self._buffer.popleft()
            if self._room_waiters:
                self._room_waiters[0].notify()
            return value

    def _take_now(
        self, small: Callable[[Any], bool], copy: Callable[[Any], Any], none: Any = None
    ) -> Any:
        """Take the first value if there is one now and ``small(value)``, as ``copy(value)``;
        else take nothing and return ``none`` (never blocks, like :meth:`_put_now`)."""
        with self._lock:
            # a value there for a taker that waits (woken for it) is that taker's
            if self._size == 0 or len(self._buffer) <= self._takers or not small(self._buffer[0]):
                return none
            value = copy(self._buffer[0])
            self._buffer.popleft()
            if self._room_waiters:
                self._wake_putter()
            return value

    def _take_more(self, n: int, small: Callable[[Any], bool] | None) -> list[Any]:
        """Up to ``n`` more values that are there now, in order, leaving one for each taker
        that waits (a consumer's values taken ahead, ``refops.lease_take``: it never drains
        the channel while other takers wait); with ``small``, only while ``small(value)``.
        Never blocks; nothing for size 0."""
        with self._lock:
            if self._size == 0:
                return []
            m = min(n, len(self._buffer) - self._takers)
            out: list[Any] = []
            buf = self._buffer
            while len(out) < m and (small is None or small(buf[0])):
                out.append(buf.popleft())
            if out and self._room_waiters:
                self._wake_putter()
            return out

    def _take_rendezvous(
        self, deadline: float | None, timeout: float | None, copy: Callable[[Any], Any] | None
    ) -> Any:
        # Lock held.
        if self._offers:
            offer = self._offers[0]
            value = offer.value if copy is None else copy(offer.value)  # raises: not taken
            self._offers.popleft()
            offer.taken = True
            if offer.cond is not None:
                offer.cond.notify()
            return value
        if not self._open:
            raise ChannelClosedError("take on a closed, empty channel")
        request = _Request(threading.Condition(self._lock), copy)
        self._requests.append(request)
        try:
            while not request.filled:
                if not self._open:
                    raise ChannelClosedError("channel closed while take was blocked")
                _wait(request.cond, deadline, "take", timeout)
        except BaseException:
            if request.filled:
                # Interrupted after a putter handed us its value (whose put has returned):
                # give the value back to the front of the channel rather than lose it.
                self._hand_back(request.value)
            raise
        finally:
            if not request.filled:
                try:
                    self._requests.remove(request)
                except ValueError:
                    pass
        return request.result()

    def _hand_back(self, value: Any) -> None:
        # Lock held. Keeps the invariant that offers and requests are never both pending.
        if self._requests:
            try:
                self._requests[0].fill(value)
                self._requests.popleft()
                return
            except Exception:
                # that taker cannot have it (its copy failed): the value waits as an offer,
                # and the taker finds it, and the failure, when it looks again
                pass
        self._offers.appendleft(_Offer(value, None))
        self._readable.notify_all()

    def _give_back(self, values: list[Any]) -> None:
        """Put ``values`` back at the front of the channel, in order, at once: values a
        consumer took ahead and never used (``refops.lease_end``). They were in the channel
        before, so neither its size nor its being closed keeps them out."""
        with self._lock:
            if self._size == 0:
                for value in reversed(values):
                    self._hand_back(value)
                return
            self._buffer.extendleft(reversed(values))
            self._not_empty.notify(len(values))
            self._readable.notify_all()

    # -- fetch / wait ----------------------------------------------------------------------

    def fetch(self, timeout: float | None = None) -> T:
        """Return the first value without removing it.

        Blocks until a value is available; for size 0, until a ``put`` is offering one (which
        stays offered: the putter keeps waiting for a ``take``).

        Args:
            timeout: seconds to wait at most; ``None`` waits forever, ``0`` polls.

        Raises:
            ChannelClosedError: the channel is closed and empty, or became so while blocked.
            TimeoutError: the timeout passed first.
        """
        deadline = None if timeout is None else timeouts.deadline(timeouts.check_timeout(timeout))
        with self._lock:
            self._wait_ready(deadline, "fetch", timeout)
            return self._offers[0].value if self._size == 0 else self._buffer[0]

    def wait(self, timeout: float | None = None) -> None:
        """Block until a value is available (``isready()``), without taking it.

        Args:
            timeout: seconds to wait at most; ``None`` waits forever, ``0`` polls.

        Raises:
            ChannelClosedError: the channel is closed and empty, or became so while blocked.
            TimeoutError: the timeout passed first.
        """
        deadline = None if timeout is None else timeouts.deadline(timeouts.check_timeout(timeout))
        with self._lock:
            self._wait_ready(deadline, "wait", timeout)

    def _wait_ready(self, deadline: float | None, op: str, timeout: float | None) -> None:
        # Lock held. Peekers are woken with notify_all, so no wakeup can be lost here.
        while not self._n_avail():
            if not self._open:
                raise ChannelClosedError(f"{op} on a closed, empty channel")
            _wait(self._readable, deadline, op, timeout)

    # -- close -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the channel. Idempotent; never blocks.

        Further ``put`` raises ``ChannelClosedError``; a ``put`` blocked now raises it too, and
        its value is not delivered. Buffered values can still be taken; once the channel is
        empty, ``take``, ``fetch`` and ``wait`` raise ``ChannelClosedError``.
        """
        with self._lock:
            if not self._open:
                return
            self._open = False
            # Offers of blocked putters are withdrawn now, so no taker can get them between
            # close() and their putters waking up to raise. Handed-back values stay.
            for offer in self._offers:
                if offer.cond is not None:
                    offer.cond.notify()
            self._offers = deque(o for o in self._offers if o.cond is None)
            for request in self._requests:
                request.cond.notify()
            self._not_empty.notify_all()
            for cond in self._room_waiters:
                cond.notify()
            self._readable.notify_all()
