"""``RemoteChannel``: a reference to a channel on process ``where`` (see ``remoteref.py`` for
how references are counted, and ``channelstream.py`` for its streaming mode).

Every operation runs on the owner through ``refops`` (or directly, when the owner is this
process); ``stream()`` opens a :class:`~pydistributed.channelstream.ChannelStream`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from . import aio, codec, refops, timeouts
from .channelbase import take_until_closed
from .channelconsumer import AHEAD, ChannelConsumer
from .channels import Channel
from .channelstream import ChannelStream
from .cluster import current_cluster
from .ids import RRID, check_pid
from .refhandle import _RemoteRef
from .refops import raise_marker

__all__ = ["RemoteChannel"]

T = TypeVar("T")


class RemoteChannel(_RemoteRef, Generic[T]):
    """A reference to a channel on process ``where``.

    ``RemoteChannel(pid=None)`` makes a ``Channel(1)`` on ``pid`` (this process by default);
    ``RemoteChannel(f, pid=None)`` runs ``f()`` on ``pid`` and uses the channel it returns
    (anything with the ``AbstractChannel`` methods). Every operation runs on the owner, and
    may be called from any process the handle has been sent to.

    Attributes:
        where: the process that holds the channel.
        whence: the process that created the reference.
        id: unique among the references created on ``whence``.
    """

    __slots__ = ()

    def __init__(self, f: Callable[[], Any] | int | None = None, pid: int | None = None) -> None:
        if f is not None and not callable(f):
            if pid is not None:
                raise TypeError("RemoteChannel(f, pid): f must be callable")
            f, pid = None, f
        c = current_cluster()
        where = c.myid if pid is None else check_pid(pid)
        rrid = RRID(c.myid, c.refcount.next_id())
        if where == c.myid:
            refops.make_channel((rrid.whence, rrid.id), c.myid, f)
        else:
            c.calls.call_fetch(where, refops.make_channel, ((rrid.whence, rrid.id), c.myid, f))
        self._init(c, where, rrid)
        c.refcount.register(rrid, self)

    def _op(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking channel operation on the owner; raise what its marker says."""
        c = self._cluster
        if self.where == c.myid:
            return raise_marker(f(self._key, *args, c.myid))
        return raise_marker(c.calls.call_fetch(self.where, f, (self._key, *args, c.myid)))

    def put(self, value: Any, timeout: float | None = None) -> RemoteChannel:
        """Put ``value`` into the channel; returns the RemoteChannel.

        Returns once the value is in the channel: blocks while the channel is full (or, for
        an unbuffered channel, until a taker has received it).

        Raises:
            ChannelClosedError: the channel is closed; the value was not added.
            TimeoutError: ``timeout`` seconds passed first; the value was not added.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        c = self._cluster
        if self.where == c.myid:
            ch = c.refs.lookup(self._key)
            if type(ch) is Channel:  # ours, here: directly (it raises what put_ch's marker says)
                ch.put(value, timeout)
                return self
            self._op(refops.put_ch, value, timeout)
            return self
        self._op(refops.put_ch, codec.oob(value), timeout)
        return self

    def stream(self, linger: float = 0.0) -> ChannelStream[T]:
        """A streaming producer on this channel: ``with rc.stream() as s: s.put(v)``.

        Its ``put`` returns once the value is accepted, not stored: values go to the owner in
        batches, within a credit the owner grants from the channel's size; ``flush`` waits
        until they are stored; errors come at the next ``put``, ``flush`` or ``close``.
        ``linger``: seconds a value may wait, when no batch is in flight, for more values to
        join its batch (0: sent at once). See
        :class:`~pydistributed.channelstream.ChannelStream` and ``docs/references.md``.

        Raises:
            ChannelClosedError: the channel is closed.
            ProcessExitedException: the owner has exited.
            TypeError: ``linger`` is not a number.
            ValueError: ``linger`` is negative, infinite or NaN.
        """
        return ChannelStream(self, linger)

    def consume(self, ahead: int = AHEAD) -> ChannelConsumer[T]:
        """A consumer that takes values ahead: ``with rc.consume() as c: for v in c: ...``.

        It keeps up to ``ahead`` values (default 8) taken at the owner, fetched in one
        request, and asks for more when half are used, so that the round trips overlap the
        work on the values. A request takes only values that are there at once beyond its
        first, at most half a bounded channel's size, and leaves one for each taker waiting
        there. The values taken ahead are kept by the owner until they are returned, and go
        back to the front of the channel, in order, if the consumer is closed first or its
        process exits (killed included). ``ahead=1``: one value ahead, one request per
        value. See :class:`~pydistributed.channelconsumer.ChannelConsumer` and
        ``docs/references.md``.

        Raises:
            ValueError: ``ahead`` is not an ``int`` >= 1.
        """
        return ChannelConsumer(self, ahead)

    def take(self, timeout: float | None = None) -> T:
        """Remove and return the first value (blocks until there is one).

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first; nothing was taken.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        c = self._cluster
        if self.where == c.myid:
            ch = c.refs.lookup(self._key)
            if type(ch) is Channel:  # ours, here: directly (it raises what take_ch's marker says)
                return ch._take(None, timeout)  # type: ignore[no-any-return]  # (checked above)
        return self._op(refops.take_ch, timeout)

    def fetch(self, timeout: float | None = None) -> T:
        """Return the first value without removing it (blocks until there is one).

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        return self._op(refops.fetch_ch, timeout)

    def isready(self) -> bool:
        """Whether a value can be taken now (it may be gone by the time you take it)."""
        return bool(self._call(refops.isready_ch, self._key))

    def wait(self, timeout: float | None = None) -> RemoteChannel:
        """Block until a value is available, without taking it; returns the RemoteChannel.

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        self._op(refops.wait_ch, timeout)
        return self

    def close(self) -> None:
        """Close the channel: further puts raise; buffered values can still be taken."""
        self._call(refops.close_ch, self._key)

    def isopen(self) -> bool:
        """Whether the channel is still open."""
        return bool(self._call(refops.isopen_ch, self._key))

    async def atake(self, timeout: float | None = None) -> Any:
        """``await rc.atake()``: :meth:`take` without blocking the event loop (see ``aio.py``).

        Cancelling the awaiting task cancels the take on the owner; a value it had taken
        already is put back into the channel (at its end).
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        return await aio.channel_op(self, refops.take_ch, (timeout,), put_back=True)

    async def aput(self, value: Any, timeout: float | None = None) -> RemoteChannel:
        """``await rc.aput(v)``: :meth:`put` without blocking the event loop (see ``aio.py``)."""
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        v = value if self.where == self._cluster.myid else codec.oob(value)
        await aio.channel_op(self, refops.put_ch, (v, timeout))
        return self

    async def afetch(self, timeout: float | None = None) -> Any:
        """``await rc.afetch()``: :meth:`fetch` without blocking the event loop."""
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        return await aio.channel_op(self, refops.fetch_ch, (timeout,))

    def __iter__(self) -> Iterator[Any]:
        """Take values until the channel is closed and empty."""
        return take_until_closed(self.take)
