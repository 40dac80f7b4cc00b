"""A consumer that takes values ahead from a ``RemoteChannel``: ``with rc.consume() as c``.

Each ``take`` from another process is a round trip. A consumer hides it behind the work on
the values it has: it keeps up to ``ahead`` values (default :data:`AHEAD`) taken at the owner
and leased to it, fetched in one request, hands them out one by one, and asks for more when
half of them are used::

    consumer (ahead=4)                                  owner (where)
    ------------------                                  -------------
    c.take()  -- CallFetch(lease_take 1, n=1,      -->  take v1 (waits while the channel is
                 used 0, mark)                          empty); map the consumer's used mark
              <------------- [v1], marked ----------    keep v1 (the consumer's lease)
    c.take() -> v1, mark := 1
              -- CallFetch(lease_take 2, n=4, used 1) --> take v2, then v3..v5 if they are
    c.take() -> v2, mark := 2  <------ [v2..v5] ------    there now and nobody else waits
    c.take() -> v3, mark := 3  (no message)               forget lease 1 (used)
    c.take() -> v4, mark := 4, half used:
              -- CallFetch(lease_take 6, n=3, used 4) --> ...
    c.close() -- CallFetch(lease_end, used 4)        --> v5 and later ones (taken, not used)
                                                          go back to the front of the channel

* The *used mark* (``leasemark``) is a page of shared memory where the consumer writes the
  number of each value before ``take`` returns it: the owner reads it when the consumer's
  process has exited (killed included), so it gives back exactly the values never returned,
  without a message per value. With no mark (the owner is on another host, no ``/dev/shm``),
  or with ``ahead=1``, the consumer asks for one value at a time, and each request says which
  values were returned (one value ahead, as a consumer always did before ``ahead``).
* Fairness: one request waits for one value, then takes only values that are there at once,
  at most half the size of a bounded channel, and leaves one for each other taker waiting at
  the owner (a waiting consumer gets its first value before anyone gets more). A busy
  consumer holds at most ``ahead`` values another could have taken.
* Nothing is lost, nothing is duplicated. A value is the consumer's once ``take`` has
  returned it; the owner keeps every value it took ahead for a consumer until it learns that
  it was returned. When the consumer is closed, or its process exits, the values it took
  ahead and never returned go back to the front of the channel, in order, for any taker.
* Order: one request at a time per consumer, so a consumer gets values in channel order.
* Errors of the owner (closed channel, exited owner) are raised once the values already
  here are taken.

On a channel that lives on this process a consumer is the plain ``take`` (nothing ahead).
"""

from __future__ import annotations

import itertools
import warnings
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import refops, timeouts
from .channelbase import take_until_closed
from .errors import ChannelClosedError
from .leasemark import UsedMark
from .messages import RemoteDo
from .peer import ResponseSlot

if TYPE_CHECKING:  # only a type here
    from types import TracebackType

__all__ = ["AHEAD", "ChannelConsumer"]

T = TypeVar("T")

_ids = itertools.count(1)  # consumer ids, unique in this process

AHEAD = 8
"""How many values a consumer keeps ahead by default (``RemoteChannel.consume(ahead=...)``)."""


class ChannelConsumer(Generic[T]):
    """Takes from a :class:`~pydistributed.RemoteChannel`, up to ``ahead`` values ahead
    (``rc.consume()``).

    Use it from one thread, as a context manager or an iterator inside one (``close`` on exit
    gives back the values taken ahead).

    Raises:
        ValueError: ``ahead`` is not an ``int`` >= 1.
    """

    def __init__(self, rc: Any, ahead: int = AHEAD) -> None:
        if not isinstance(ahead, int) or isinstance(ahead, bool) or ahead < 1:
            raise ValueError(f"consume(ahead=...): an int >= 1, not {ahead!r}")
        self._rc = rc
        c = rc._cluster
        self._local = rc.where == c.myid
        self._cid = next(_ids)
        self._ahead = ahead
        self._next = 1  # the number of the next value to ask for
        self._used = 0  # the number of the last value returned
        self._buf: deque[tuple[int, Any]] = deque()  # (number, value) here, not returned
        self._pending: tuple[int, int, ResponseSlot] | None = None  # (seq, rid, slot)
        self._error: BaseException | None = None  # raised once the values here are taken
        self._mark: UsedMark | None = None
        self._marked = False  # the owner holds our used mark: several values may be ahead
        self._closed = False

    def __repr__(self) -> str:
        return f"ChannelConsumer({self._rc!r}, {'closed' if self._closed else 'open'})"

    def take(self, timeout: float | None = None) -> T:
        """The next value. Asks the owner for more before returning it when half of those
        ahead are used (with one value ahead: always).

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first (the take stays asked for: the
                next call gets its value).
            ProcessExitedException: the owner has exited.
            ValueError: the consumer was closed.
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        if self._closed:
            raise ValueError("take on a closed ChannelConsumer")
        if self._local:
            return self._rc.take(timeout)  # type: ignore[no-any-return]
        buf = self._buf
        if not buf:
            if self._error is not None:
                e, self._error = self._error, None
                raise e
            if self._pending is None:
                self._ask()
            assert self._pending is not None
            if not self._pending[2].wait(timeout):
                raise TimeoutError(
                    f"ChannelConsumer.take timed out after {timeouts.seconds(timeout)} s"
                )
            self._receive()
            if not buf:
                assert self._error is not None
                e, self._error = self._error, None
                raise e
        elif self._pending is not None and self._pending[2].is_set():
            self._receive()
        seq, value = buf.popleft()
        self._used = seq
        if self._marked:
            assert self._mark is not None
            self._mark.set(seq)  # before it is returned: see leasemark
        if self._pending is None and self._error is None and len(buf) <= self._ahead // 2:
            try:
                self._ask()  # more, which tells the owner that this one is used
            except Exception as e:  # the owner is gone: this value is ours all the same
                self._error = e
        return value  # type: ignore[no-any-return]

    def _ask(self) -> None:
        rc = self._rc
        c = rc._cluster
        path = None
        if self._ahead > 1 and self._mark is None:
            try:
                self._mark = UsedMark()
                path = self._mark.path
            except OSError:
                self._ahead = 1  # no mark: one value at a time, each one reported
        n = self._ahead - len(self._buf) if self._marked else 1
        slot = ResponseSlot()
        args = (rc._key, self._cid, self._next, n, self._used, path, c.myid)
        rid = c.calls.call_fetch_nowait(rc.where, refops.lease_take, args, {}, slot)
        self._pending = (self._next, rid, slot)

    def _receive(self) -> None:
        """Take in the answer of the request asked (it has come)."""
        assert self._pending is not None
        seq, _, slot = self._pending
        self._pending = None
        if not slot.ok:
            self._error = slot.value
            return
        try:
            values, marked = refops.raise_marker(slot.value)
        except ChannelClosedError as e:
            self._error = e
            return
        if not self._marked:
            self._marked = marked
            if not marked:
                self._ahead = 1  # the owner cannot read our mark: one value at a time
        self._buf.extend(enumerate(values, seq))
        self._next = seq + len(values)

    def close(self) -> None:
        """Stop taking: the values taken ahead (if any) go back to the front of the channel,
        in order. Idempotent.

        Raises:
            ProcessExitedException: the owner has exited (its channel is gone anyway).
        """
        if self._closed:
            return
        self._closed = True
        if self._local:
            return
        rc = self._rc
        c = rc._cluster
        pending, self._pending = self._pending, None
        self._buf.clear()
        waiting = pending is not None and not pending[2].is_set()
        try:
            if pending is not None and waiting:
                # a take still waiting there gives up; one that takes now gives its values back
                msg = RemoteDo(refops.cancel_request, (c.myid, pending[1]), {})
                c.connections.send_quietly(rc.where, msg)
            args = (rc._key, self._cid, self._used, waiting, c.myid)
            c.calls.call_fetch(rc.where, refops.lease_end, args)
        finally:
            if self._mark is not None:
                self._mark.close()

    def __iter__(self) -> Iterator[T]:
        """Take values until the channel is closed and empty."""
        return take_until_closed(self.take)

    def __enter__(self) -> ChannelConsumer[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the block's exception wins
            self.close()
        except Exception:
            pass

    def __del__(self) -> None:
        try:
            if not self._closed and (self._pending is not None or self._buf):
                warnings.warn(
                    f"{self!r} was not closed: the values it took ahead stay on the owner "
                    "until this process exits",
                    ResourceWarning,
                    stacklevel=1,
                )
            if not self._closed and self._mark is not None:
                self._mark.close()  # (the owner has its own mapping of it)
        except Exception:
            pass
