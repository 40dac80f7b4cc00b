"""Remote references: ``Future`` and ``RemoteChannel``, and the generic functions on them.

A reference names storage on one process, its owner ``where``, by an ``RRID(whence, id)``.
Its operations run on the owner, through ``call_fetch`` of the operations in ``refops.py``
(or directly, when the owner is this process)::

    any process                          the owner (where)
    -----------                          -----------------
    rc.take()  -- CallFetch(take_ch) --> an executor thread: channel.take(), polled every
                                         0.25 s while blocked, given up if the caller is gone
               <----------- Result ---- the value (or a marker: timed out, closed)

Every handle is counted on the owner, per holding process:

* a handle made here is announced to the owner (``Future(pid)``: an add-client notice;
  ``RemoteChannel(pid)`` and ``remotecall``: the creating call counts it);
* a handle pickled into a message is announced for the receiving process by the sender,
  before the message leaves (``codec.note_ref`` and ``RefCounter.announce``); the receiver
  that already holds that reference keeps the object it has and releases the extra count,
  so a reference is one object per process;
* a handle that is garbage collected, or a ``Future`` whose value has been fetched (or put)
  and is cached here, is released: its finalizer only appends to a deque (it may
  run on any thread, at any bytecode, even while that thread holds a lock the sender needs),
  and a flusher thread sends the releases in batches every 50 ms (``refcount.py``);
* the owner frees the storage when no process holds a handle any more, and forgets the
  handles of a process that has exited.

A handle pickled outside a message (``pickle.dumps`` by hand, ``copy.copy``) is not counted
by the sender; the process that unpickles it announces itself instead.
"""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

from . import codec, refops, timeouts
from .cluster import Cluster, current_cluster
from .futures import FINISHED, NOTHING, Cancelled, StandardFuture
from .ids import RRID, check_pid
from .refhandle import _new, _RemoteRef
from .refops import raise_marker
from .refstore import Failure, FutureSlot
from .remotechannel import RemoteChannel

__all__ = ["Future", "RemoteChannel", "_RemoteRef"]

T = TypeVar("T")

_NOTHING: Any = NOTHING


def _rebuild_fetched(where: int, whence: int, id: int, value: Any) -> Future:
    """Unpickle a Future whose value was already fetched: it carries the value, no count."""
    c = current_cluster()  # the cluster decoding this message (see scope)
    rrid = RRID(whence, id)
    fut, made = c.refcount.get_or_make(
        rrid,
        lambda existing: isinstance(existing, Future),
        lambda: _new(Future, c, where, rrid, value=value, released=True),
    )
    if not made:
        # on the thread that reads the message: it must not wait for the Future's lock
        fut._finish(value, None, False, False)
    return fut  # type: ignore[no-any-return]


class Future(_RemoteRef, StandardFuture, Generic[T]):
    """A write-once reference to a value on process ``where``.

    ``Future(pid=None)`` makes an empty one on ``pid`` (this process by default), to be set
    once with :meth:`put`. ``remotecall`` returns one for its result. :meth:`fetch` waits for
    the value and caches it here; the remote copy is then released (so is it after a
    :meth:`put` from here, which caches the value too).

    It is also a ``concurrent.futures.Future`` (``result``, ``exception``, ``done``,
    ``add_done_callback``, ``cancel``; ``concurrent.futures.wait`` and ``as_completed``) and
    awaitable (``await fut``): see ``futures.py`` and ``docs/python-interop.md``. ``fetch``
    raises ``RemoteException`` for a failed call; ``result`` raises the call's own exception,
    with the ``RemoteException`` as its cause.

    Attributes:
        where: the process that stores the value.
        whence: the process that created the reference.
        id: unique among the references created on ``whence``.
    """

    __slots__ = ("_lock", "_value")

    _lock: threading.RLock
    _value: Any

    def _prepare(self) -> None:
        self._value = _NOTHING
        self._lock = threading.RLock()

    def __init__(self, pid: int | None = None) -> None:
        c = current_cluster()
        where = c.myid if pid is None else c.registry.check_exists(check_pid(pid), "Future(pid)")
        rrid = RRID(c.myid, c.refcount.next_id())
        self._value = _NOTHING
        self._lock = threading.RLock()
        self._init(c, where, rrid)
        c.refcount.register(rrid, self)
        c.refcount.add_handle(where, rrid)

    @classmethod
    def _for_call(cls, cluster: Cluster, where: int, rrid: RRID) -> Future:
        """The handle of a call's result (the call itself counted it on the owner)."""
        fut: Future = _new(cls, cluster, where, rrid)
        cluster.refcount.register(rrid, fut)
        return fut

    def __reduce__(self) -> tuple[Any, ...]:
        value = self._value
        if value is not _NOTHING:
            return (_rebuild_fetched, (self.where, self.rrid.whence, self.rrid.id, value))
        return super().__reduce__()

    def _slot(self) -> FutureSlot:
        return refops.future_slot(self._cluster, self._key)

    _release_now = False  # an Executor's: see _release

    def _release(self) -> None:
        # a value cached here. An Executor's Future (stored here) releases its storage at
        # once (this is never a finalizer: the store's lock may be taken), so that the value
        # does not outlive the Future; others in the flusher's next batch.
        if not self._released:
            self._released = True
            c = self._cluster
            if self._release_now and self.where == c.myid:
                c.refs.release(self.rrid, c.myid)
            else:
                c.refcount.queue_release(self.where, self.rrid)

    def _cache(self, value: Any) -> Any:
        """Keep ``value`` here (the first one wins) and release the stored copy (also when it
        is stored here: the owner frees it once no other process holds the reference); the
        Future is done (``futures.StandardFuture._finish``)."""
        self._finish(value, None)
        return self._value

    @staticmethod
    def _unwrap(value: Any) -> Any:
        if isinstance(value, Failure):
            raise value.error()
        return value

    def fetch(self, timeout: float | None = None) -> T:
        """Wait for the value and return it (cached here after the first time).

        Blocks until the value is set, on the owner.

        Raises:
            RemoteException: the call that was to produce the value raised.
            ProcessExitedException: the owner has exited (also while this call waits).
            TimeoutError: ``timeout`` seconds passed first.
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        value = self._value
        if value is _NOTHING:
            c = self._cluster
            if self._armed:  # watched: its answer is on the way, no second request
                if not self._wait_final(timeout):
                    raise TimeoutError(f"{self!r} was not set within {timeouts.seconds(timeout)} s")
                value = self._value
                if value is _NOTHING:  # failed here: its owner exited
                    raise self._exception  # type: ignore[misc]
                return self._unwrap(value)
            if self.where == c.myid:
                value = self._slot().fetch(timeout)
            else:
                ready, value = raise_marker(
                    c.calls.call_fetch(self.where, refops.fetch_ref, (self._key, timeout, c.myid))
                )
                if not ready:
                    raise TimeoutError(f"{self!r} was not set within {timeouts.seconds(timeout)} s")
            value = self._cache(value)
        return self._unwrap(value)

    def wait(self, timeout: float | None = None) -> Future:
        """Block until the value is set; returns the Future (Julia's ``wait``).

        Raises:
            RemoteException: the call that was to produce the value raised (as ``fetch``
                would; Julia's ``wait_ref`` rethrows it too).
            TimeoutError: ``timeout`` seconds passed first.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        if timeout is not None:  # (the check costs a call: not for the common None)
            timeout = timeouts.check_timeout(timeout)
        err = self._sync_wait(timeout)
        if err is not None:
            raise err
        return self

    def isready(self) -> bool:
        """Whether the value is set (asks the owner; True at once once cached here)."""
        if self._value is not _NOTHING:
            return True
        return bool(self._call(refops.isready_ref, self._key))

    def put(self, value: Any) -> Future:
        """Set the value, once, and cache it here; returns the Future.

        Raises:
            RuntimeError: the value was set already (by anyone).
            ProcessExitedException: the owner has exited.
        """
        if self._value is not _NOTHING:
            raise RuntimeError("a Future can be set only once")
        c = self._cluster
        if self.where == c.myid:
            ok = self._slot().try_put(value)
        else:
            ok = c.calls.call_fetch(self.where, refops.put_ref, (self._key, codec.oob(value)))
        if not ok:
            raise RuntimeError("a Future can be set only once")
        self._cache(value)
        return self

    def _sync_wait(self, timeout: float | None = None) -> BaseException | None:
        c = self._cluster
        try:
            if self._value is not _NOTHING:
                value = self._value
            elif self._armed or self._state == FINISHED:
                if not self._wait_final(timeout):
                    raise TimeoutError(f"{self!r} was not set within {timeouts.seconds(timeout)} s")
                if self._value is _NOTHING:
                    return self._exception
                value = self._value
            elif self.where == c.myid:
                value = self._slot().fetch(timeout)
            else:
                ready, value = raise_marker(
                    c.calls.call_fetch(self.where, refops.status_ref, (self._key, timeout, c.myid))
                )
                if not ready:
                    raise TimeoutError(f"{self!r} was not set within {timeouts.seconds(timeout)} s")
        except TimeoutError:
            raise
        except Exception as e:
            return e
        if isinstance(value, Failure):
            return value.error()
        return None

    # -- the concurrent.futures side (see futures.py) -----------------------------------

    def _store_cancelled(self) -> None:
        # lock held, PENDING: an Executor's Future, stored here
        value = Cancelled(self._cluster.myid)
        self._slot().try_put(value)
        self._value = value
        self._release()
