"""A consumer that takes one value ahead from a ``RemoteChannel``: ``with rc.consume() as c``.

Each ``take`` from another process is a round trip. A consumer hides it behind the work on
the value it has: when it returns a value, it has already asked the owner for the next one::

    consumer                                         owner (where)
    --------                                         -------------
    c.take() -> v1   -- CallFetch(lease_take 2, --> take v2 (blocks while the channel is
                          used 1)                    empty); keep v2 as consumer's lease
    (works on v1)    <------------ v2 ------------   forget lease 1 (used)
    c.take() -> v2   -- CallFetch(lease_take 3, --> ...
                          used 2)
    c.close()        -- CallFetch(lease_end,    --> v3 (taken, not used) back to the front
                          used 2)                    of the channel

* At most one value waits at a consumer that is busy with another: a slow consumer delays
  that one value by the time of its current item (a plain ``take`` delays none).
* Nothing is lost. A value is the consumer's once ``take`` has returned it; the owner keeps
  every value it took ahead for a consumer until the consumer's next request says it was
  returned. When the consumer is closed, or its process exits, the values it took ahead and
  never returned go back to the front of the channel, in order, for any taker.
* Order: one request at a time per consumer, so a consumer gets values in channel order.

On a channel that lives on this process a consumer is the plain ``take`` (nothing ahead).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import refops
from .channelbase import take_until_closed
from .messages import RemoteDo
from .peer import ResponseSlot

if TYPE_CHECKING:  # only a type here
    from types import TracebackType

__all__ = ["ChannelConsumer"]

T = TypeVar("T")

_ids = itertools.count(1)  # consumer ids, unique in this process


class ChannelConsumer(Generic[T]):
    """Takes from a :class:`~pydistributed.RemoteChannel`, one value ahead (``rc.consume()``).

    Use it from one thread, as a context manager or an iterator inside one (``close`` on exit
    gives back the value taken ahead).
    """

    def __init__(self, rc: Any) -> None:
        self._rc = rc
        c = rc._cluster
        self._local = rc.where == c.myid
        self._cid = next(_ids)
        self._seq = 0  # the number of the last take asked for
        self._used = 0  # the number of the last value returned
        self._pending: tuple[int, int, ResponseSlot] | None = None  # (seq, rid, slot)
        self._closed = False

    def __repr__(self) -> str:
        return f"ChannelConsumer({self._rc!r}, {'closed' if self._closed else 'open'})"

    def take(self, timeout: float | None = None) -> T:
        """The next value; asks for the one after before returning it.

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first (the take stays asked for: the
                next call gets its value).
            ProcessExitedException: the owner has exited.
            ValueError: the consumer was closed.
        """
        if self._closed:
            raise ValueError("take on a closed ChannelConsumer")
        if self._local:
            return self._rc.take(timeout)  # type: ignore[no-any-return]
        if self._pending is None:
            self._ask()
        assert self._pending is not None
        seq, _, slot = self._pending
        if not slot.wait(timeout):
            raise TimeoutError(f"ChannelConsumer.take timed out after {timeout} s")
        self._pending = None
        if not slot.ok:
            raise slot.value
        value = refops.raise_marker(slot.value)  # ChannelClosedError: nothing is pending
        self._used = seq
        self._ask()  # the next one, which tells the owner that this one is used
        return value  # type: ignore[no-any-return]

    def _ask(self) -> None:
        rc = self._rc
        c = rc._cluster
        self._seq += 1
        slot = ResponseSlot()
        args = (rc._key, self._cid, self._seq, self._used, c.myid)
        rid = c.calls.call_fetch_nowait(rc.where, refops.lease_take, args, {}, slot)
        self._pending = (self._seq, rid, slot)

    def close(self) -> None:
        """Stop taking: the value taken ahead (if any) goes back to the front of the channel.
        Idempotent.

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
        waiting = pending is not None and not pending[2].is_set()
        if pending is not None and waiting:
            # a take still waiting there gives up; one that takes now gives its value back
            msg = RemoteDo(refops.cancel_request, (c.myid, pending[1]), {})
            c.connections.send_quietly(rc.where, msg)
        args = (rc._key, self._cid, self._used, waiting, c.myid)
        c.calls.call_fetch(rc.where, refops.lease_end, args)

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
            if not self._closed and self._pending is not None:
                warnings.warn(
                    f"{self!r} was not closed: a value it takes ahead stays on the owner "
                    "until this process exits",
                    ResourceWarning,
                    stacklevel=1,
                )
        except Exception:
            pass
