"""asyncio on remote channels: ``await rc.atake()``, ``await rc.aput(v)``, ``await rc.afetch()``.

A channel operation is the same request as the blocking method's (``refops``), sent without
waiting: its answer fills an :class:`_AioSlot` on the thread that reads it, which wakes the event
loop with ``call_soon_threadsafe``. No thread waits on this process for a pending ``await``; the
owner runs the operation as it runs a blocking one (on one of its threads while it waits). On
a channel that lives on this process there is no message: the operation runs on one of this
process's pool threads.

Cancelling the awaiting task cancels the operation on the owner (``refops.cancel_request``,
as Ctrl-C does for the blocking methods): it gives up at its next slice, having done nothing.
An operation that had done its work already still answers: a value that ``atake`` had taken is
then put back into the channel (at its end), so that nothing is lost.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import refops
from .messages import CallFetch, RemoteDo
from .peer import ResponseSlot

if TYPE_CHECKING:  # imported when first used
    import asyncio

__all__ = ["channel_op"]


class _AioSlot(ResponseSlot):
    """The answer of a channel operation awaited by an asyncio task."""

    __slots__ = ("loop", "put_back", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any]) -> None:
        super().__init__()
        self.loop = loop
        self.waiter = waiter
        self.put_back: Any = None  # the channel, for an atake

    def set(self, ok: bool, value: Any) -> None:
        super().set(ok, value)
        try:
            self.loop.call_soon_threadsafe(self._deliver, ok, value)
        except RuntimeError:  # the loop is closed: nobody awaits
            self._orphan(ok, value)

    def _deliver(self, ok: bool, value: Any) -> None:
        waiter = self.waiter
        if waiter.done():  # the awaiting task was cancelled
            self._orphan(ok, value)
        elif ok:
            waiter.set_result(value)
        else:
            waiter.set_exception(value)

    def _orphan(self, ok: bool, value: Any) -> None:
        rc = self.put_back
        if rc is not None and ok and not isinstance(value, refops.Marker):
            # taken after all, and nobody will see it: back into the channel, from a thread
            # that may block (rare: a cancel that came too late)
            threading.Thread(target=_put_back, args=(rc, value), daemon=True).start()


def _put_back(rc: Any, value: Any) -> None:
    try:
        rc.put(value)
    except Exception:
        pass  # closed meanwhile, or its owner is gone: the value goes with the channel


async def channel_op(rc: Any, f: Any, args: tuple[Any, ...], put_back: bool = False) -> Any:
    """Run the channel operation ``f(key, *args, caller)`` for ``rc`` and await its answer.

    Raises what the blocking method raises (``ChannelClosedError``, ``TimeoutError``,
    ``ProcessExitedException``).
    """
    import asyncio

    c = rc._cluster
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    slot = _AioSlot(loop, waiter)
    if put_back:
        slot.put_back = rc
    key, me = rc._key, c.myid
    rid = None
    if rc.where == me:

        def run() -> None:
            try:
                value = f(key, *args, me)
            except BaseException as e:
                slot.set(False, e)
            else:
                slot.set(True, value)

        c.executor.submit(run, False)
    else:
        _, rid, _ = c.calls.request(
            rc.where, lambda rid: CallFetch(rid, f, (key, *args, me), {}), slot
        )
    try:
        value = await waiter
    except asyncio.CancelledError:
        if rid is not None:
            c.connections.send_quietly(rc.where, RemoteDo(refops.cancel_request, (me, rid), {}))
        raise
    return refops.raise_marker(value)
