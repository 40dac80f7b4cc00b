"""Watching a Future: learning of its value when it is set, with no thread waiting on either
side (``concurrent.futures.wait``/``as_completed``, ``add_done_callback`` and ``await`` watch).

::

    this process (holds the Future)              the owner (where)
    -------------------------------              -----------------
    arm(fut): an entry in the connection's
    pending answers, a WatchSlot
       --- RemoteDo(watch_ref, key, me, rid) ---> FutureSlot.on_set(answer): a callback
                                                  on the storage, nothing waits
                                                  ... the call stores its value ...
       <------------------ Result(rid, value) --- answer(value), on the thread that set it
    the reading thread fills the WatchSlot:
    fut._finish(value): cached, waiters woken

A Future that lives on this process is watched by a callback on its storage, with no message.
A thread that reads messages never waits for a Future's lock, nor runs a user's callback: that
work goes to :func:`defer`, one thread per process (``pydist-futures``), started when needed.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from . import refops, scope
from .cluster import current_cluster
from .errors import capture
from .messages import RemoteDo
from .peer import ResponseSlot

__all__ = ["NOT_CACHED", "WatchSlot", "arm", "defer", "watch_ref"]

NOT_CACHED: Any = object()  # a Future's ``_value`` while no value is cached here

log = logging.getLogger("concurrent.futures")  # where concurrent.futures logs a bad callback


class _Deferred:
    """One daemon thread per process, started on first use, that runs what was handed to it in
    order (with the cluster binding of the thread that handed it over)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[Any, Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._q.put((scope.owner(), fn, args))
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    t = threading.Thread(target=self._loop, name="pydist-futures", daemon=True)
                    t.start()
                    self._thread = t

    def _loop(self) -> None:
        while True:
            owner, fn, args = self._q.get()
            scope.state.owner = owner
            try:
                fn(*args)
            except Exception:
                log.exception("a Future's deferred work failed")
            finally:
                scope.state.owner = None
                del owner, fn, args


_deferred = _Deferred()
defer = _deferred.submit


class WatchSlot(ResponseSlot):
    """The answer slot of a watch: filled on the thread that reads the answer, it finishes the
    Future (the owner answers once the value is set; a lost connection answers at once)."""

    __slots__ = ("fut",)

    def __init__(self, fut: Any) -> None:
        super().__init__()
        self.fut: Any | None = fut

    def set(self, ok: bool, value: Any) -> None:
        super().set(ok, value)
        fut, self.fut = self.fut, None
        if fut is not None:
            if ok:
                fut._finish(value, None, False, False)
            else:
                fut._finish(None, value, False, False)


def arm(fut: Any) -> None:
    """Start watching ``fut`` (a Future whose outcome is not known here yet): its
    ``_finish`` is called once the value is set (or the owner has gone)."""
    c = fut._cluster
    if fut._value is not NOT_CACHED:
        return  # cached meanwhile (by a fetch on another thread): done already
    if fut.where == c.myid:
        # the storage lives until the value is cached here (which finishes the Future)
        slot = c.refs.lookup(fut._key)
        if slot is not None:
            slot.on_set(lambda value: fut._finish(value, None, False, False))
        return
    key, me = fut._key, c.myid
    try:
        c.calls.request(
            fut.where, lambda rid: RemoteDo(watch_ref, (key, me, rid), {}), WatchSlot(fut)
        )
    except Exception as e:  # the owner is gone (or never was): that is the outcome
        fut._finish(None, e, True, False)


def watch_ref(key: tuple[int, int], caller: int, rid: int) -> None:
    """Run on the owner by ``RemoteDo``: answer ``caller``'s request ``rid`` with the Future's
    value once it is set (at once if it is), from the thread that sets it; nothing waits."""
    c = current_cluster()

    def answer(value: Any) -> None:
        try:
            peer = c.connections.get(caller)
        except Exception:
            return  # the watcher is gone
        c.dispatch.reply(peer, rid, True, value)

    try:
        refops.future_slot(c, key).on_set(answer)
    except Exception as e:
        try:
            c.dispatch.reply(c.connections.get(caller), rid, False, capture(e))
        except Exception:
            pass


watch_ref._pydist_internal = True  # type: ignore[attr-defined]  # see dispatch.is_internal
