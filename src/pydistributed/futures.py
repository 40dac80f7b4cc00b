"""The ``concurrent.futures`` and ``asyncio`` side of a ``Future``.

A :class:`~pydistributed.Future` *is* a ``concurrent.futures.Future`` (a subclass: that is what
``concurrent.futures.wait``, ``as_completed`` and ``asyncio.wrap_future`` require, since they
use its private ``_condition``, ``_state`` and ``_waiters``), and is awaitable. This module holds
that side, :class:`StandardFuture`; ``remoteref.py`` holds Julia's side and how a value is
fetched, ``watch.py`` how it is watched.

States (``concurrent.futures``' own)::

    PENDING    an Executor's task, queued on this process: cancel() works
    RUNNING    a remote call or a Future(pid) waiting for its put: cancel() returns False
    FINISHED   the value (or failure) is known here: cached, or the owner has exited
    CANCELLED_AND_NOTIFIED   cancelled while PENDING

How completion arrives, with no thread that polls::

    fetch()/put()/result() here ----------------------------> _finish() on that thread
    watched (wait, as_completed, add_done_callback, await):
      owner is here:   FutureSlot.on_set(...) -------------> _finish() on the putting thread
      owner elsewhere: RemoteDo(watch_ref) to the owner, which answers Result(rid, value)
                       once the value is set; the reading thread fills a WatchSlot -> _finish()
                       (watch.py)

Nothing waits on either side while a watched Future is not done: the owner keeps a callback
on the Future's storage, this process an entry in the connection's table of pending answers.
A thread that reads messages never waits for a Future's lock: if the lock is busy, and for
every callback given to ``add_done_callback``, the work goes to one thread per process
(``pydist-futures``), started when first needed. Callbacks therefore run on that thread when
the value came in a message, and on the calling thread when it came from a call made here.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import TYPE_CHECKING, Any

from . import watch
from .errors import CapturedException, RemoteException, capture
from .refstore import Failure
from .watch import NOT_CACHED, defer

if TYPE_CHECKING:  # asyncio is imported when first awaited: most programs never do
    import asyncio

__all__ = [
    "CANCELLED",
    "CANCELLED_AND_NOTIFIED",
    "FINISHED",
    "NOTHING",
    "PENDING",
    "RUNNING",
    "Cancelled",
    "StandardFuture",
    "outcome_exception",
]

log = logging.getLogger("concurrent.futures")  # where concurrent.futures logs a bad callback

NOTHING: Any = NOT_CACHED  # no value cached here (yet)

_FINAL = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)


class Cancelled(Failure):
    """What the storage of a Future cancelled before its task started holds: fetching it (from
    any process) raises ``concurrent.futures.CancelledError``."""

    __slots__ = ()

    def __init__(self, pid: int) -> None:
        super().__init__(pid, CapturedException(cf.CancelledError(), ""))

    def error(self) -> Any:
        return cf.CancelledError()

    def __reduce__(self) -> tuple[Any, ...]:
        return (Cancelled, (self.pid,))


def outcome_exception(failure: Failure) -> BaseException:
    """The exception that ``result()`` raises for a failed call: the call's own exception (its
    type, its message), with the ``RemoteException`` (and so the remote traceback) as its
    ``__cause__``, as ``ProcessPoolExecutor`` does. A ``BaseException`` that is not an
    ``Exception`` (an interrupt, ``SystemExit`` on the master) stays wrapped in its
    ``RemoteException``: a remote Ctrl-C must not look like a local one."""
    err = failure.error()
    if not isinstance(err, RemoteException):
        return err  # type: ignore[no-any-return]  # Cancelled
    exc = err.captured.exc
    if isinstance(exc, Exception):
        if exc.__cause__ is not err:
            exc.__cause__ = err
        return exc
    return err


def _call_back(fn: Callable[[Any], Any], fut: Any) -> None:
    try:
        fn(fut)
    except Exception:
        log.exception("exception calling callback for %r", fut)


# -- the standard side of a Future --------------------------------------------------------------


class StandardFuture(cf.Future):  # type: ignore[type-arg]
    """The ``concurrent.futures.Future`` methods of a Future (see the module's docstring).

    A subclass provides ``_lock`` (an RLock), ``_value`` (the cached value, or ``NOTHING``),
    ``_release()`` (drop the stored copy once cached), ``_arm()`` (start watching),
    ``_fetch_outcome(timeout)`` (Julia's fetch, which caches) and ``isready()``; the state
    lives in class defaults until first changed, so that a new handle costs nothing more.
    """

    _lock: Any
    _value: Any
    _cluster: Any
    _state: str = RUNNING
    _result: Any = None
    _exception: BaseException | None = None
    _cv: threading.Condition | None = None
    _armed: bool = False
    _waiter_list: list[Any] | None = None
    _callbacks: list[tuple[Callable[[Any], Any], bool]] | None = None

    # -- hooks --------------------------------------------------------------------------

    def _release(self) -> None:
        raise NotImplementedError

    def _arm(self) -> None:
        """Start watching: learn of the value when it is set, with no thread waiting (once)."""
        if self._armed or self._state != RUNNING:
            return  # done, or an Executor's queued task (the Executor finishes it)
        with self._lock:
            if self._armed or self._state != RUNNING:
                return
            self._armed = True
        watch.arm(self)

    def _fetch_outcome(self, timeout: float | None) -> None:
        """Julia's fetch, which caches (and so finishes); the owner's exit finishes it too."""
        try:
            self.fetch(timeout)
        except (TimeoutError, RemoteException):
            if self._state == FINISHED:
                return  # a failed call: its failure is cached
            raise
        except Exception as e:  # the owner exited: the Future failed here
            if self._value is NOTHING:
                self._finish(None, e)

    def isready(self) -> bool:
        raise NotImplementedError

    def fetch(self, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def put(self, value: Any) -> Any:
        raise NotImplementedError

    # -- what concurrent.futures.wait and as_completed use --------------------------------

    def _get_cv(self) -> threading.Condition:
        cv = self._cv
        if cv is None:
            with self._lock:
                cv = self._cv
                if cv is None:
                    cv = self._cv = threading.Condition(self._lock)
        return cv

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        # read by concurrent.futures.wait/as_completed before they look at _state: whoever
        # looks at the state wants to hear of its change, so start watching
        self._arm()
        return self._get_cv()

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        waiters = self._waiter_list
        if waiters is None:
            with self._lock:
                waiters = self._waiter_list
                if waiters is None:
                    waiters = self._waiter_list = []
        return waiters

    # -- completion ---------------------------------------------------------------------

    def _finish(
        self, value: Any, exc: BaseException | None, block: bool = True, inline: bool = True
    ) -> None:
        """The value is known here (``value``; a ``Failure`` for a failed call), or the Future
        failed here (``exc``: its owner has exited): cache the value, move to FINISHED (or
        CANCELLED_AND_NOTIFIED), wake waiters and run callbacks.

        ``block``: whether this thread may wait for the lock (a thread reading messages may
        not: the work then goes to the ``pydist-futures`` thread). ``inline``: whether user
        callbacks may run on this thread (else they go to that thread).
        """
        lock = self._lock
        if block:
            lock.acquire()
        elif not lock.acquire(False):
            defer(self._finish, value, exc, True, True)
            return
        try:
            if exc is None and self._value is NOTHING:
                self._value = value
                self._release()  # the value lives in this handle now
            if self._state in _FINAL:
                return
            if exc is None:
                value = self._value
                if isinstance(value, Failure):
                    if isinstance(value, Cancelled):
                        self._state = CANCELLED_AND_NOTIFIED
                    else:
                        exc = outcome_exception(value)
                else:
                    self._result = value
            if self._state != CANCELLED_AND_NOTIFIED:
                self._exception = exc
                self._state = FINISHED
            callbacks = self._notify()
        finally:
            lock.release()
        if callbacks:
            self._run_callbacks(callbacks, inline)

    def _notify(self) -> list[tuple[Callable[[Any], Any], bool]] | None:
        """Lock held, state final: wake the waiters; return the callbacks to run."""
        waiters = self._waiter_list
        if waiters:
            state, exc = self._state, self._exception
            for waiter in waiters:
                if state == CANCELLED_AND_NOTIFIED:
                    waiter.add_cancelled(self)
                elif exc is not None:
                    waiter.add_exception(self)
                else:
                    waiter.add_result(self)
        cv = self._cv
        if cv is not None:
            cv.notify_all()
        callbacks, self._callbacks = self._callbacks, None
        return callbacks

    def _run_callbacks(
        self, callbacks: list[tuple[Callable[[Any], Any], bool]], inline: bool
    ) -> None:
        for fn, internal in callbacks:
            if internal or inline:
                _call_back(fn, self)
            else:
                defer(_call_back, fn, self)

    def _on_done(self, fn: Callable[[Any], Any], internal: bool) -> None:
        """Call ``fn(self)`` once done (now if done); ``internal``: it never blocks, and may
        run on a thread that reads messages."""
        with self._lock:
            if self._state not in _FINAL:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append((fn, internal))
                pending = True
            else:
                pending = False
        if pending:
            self._arm()
        else:
            _call_back(fn, self)

    def _wait_final(self, timeout: float | None) -> bool:
        """Wait until the state is final (the outcome comes from a watch, or an Executor)."""
        if self._state in _FINAL:
            return True
        cv = self._get_cv()
        deadline = None if timeout is None else time.monotonic() + timeout
        with cv:
            while self._state not in _FINAL:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                cv.wait(remaining)
        return True

    def _outcome(self, timeout: float | None) -> None:
        """Make the state final, within ``timeout`` seconds.

        Raises:
            concurrent.futures.TimeoutError: not within ``timeout`` seconds.
        """
        if self._state in _FINAL:
            return
        if self._state == PENDING or self._armed:
            if not self._wait_final(timeout):
                raise cf.TimeoutError()
            return
        try:
            self._fetch_outcome(timeout)  # caches: _finish
        except TimeoutError:
            raise cf.TimeoutError() from None
        if not self._wait_final(0 if timeout is None else timeout):
            raise cf.TimeoutError()

    # -- concurrent.futures.Future's methods ----------------------------------------------

    def cancel(self) -> bool:
        """Cancel the Future if its task has not started (an ``Executor``'s task still queued
        here); returns whether it is cancelled. A started call is never stopped, and a
        ``remotecall`` has started when it returns: False."""
        with self._lock:
            if self._state in _CANCELLED:
                return True
            if self._state != PENDING:
                return False
            self._state = CANCELLED_AND_NOTIFIED
            self._store_cancelled()
            callbacks = self._notify()
        if callbacks:
            self._run_callbacks(callbacks, True)
        return True

    def _store_cancelled(self) -> None:
        """Lock held: record the cancellation where the value would have gone."""

    def cancelled(self) -> bool:
        """Whether the Future was cancelled (before its task started)."""
        return self._state in _CANCELLED

    def running(self) -> bool:
        """Whether the call has started and is not done (asks the owner, as ``done()``)."""
        return self._state == RUNNING and not self.done()

    def done(self) -> bool:
        """Whether the value is set (or the Future was cancelled). Asks the owner unless the
        outcome is known here already; Julia's ``isready``."""
        state = self._state
        if state in _FINAL:
            return True
        if state == PENDING:
            return False
        return self.isready()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the value and return it (``concurrent.futures``' spelling of ``fetch``).

        Raises:
            Exception: the call's own exception (its type), with the ``RemoteException``
                (remote traceback) as ``__cause__``; where ``fetch`` raises RemoteException.
            concurrent.futures.CancelledError: cancelled.
            concurrent.futures.TimeoutError: not done within ``timeout`` seconds.
            ProcessExitedException: the owner exited before the value was fetched.
        """
        self._outcome(timeout)
        if self._state in _CANCELLED:
            raise cf.CancelledError()
        exc = self._exception
        if exc is not None:
            try:
                raise exc
            finally:
                del exc, self  # no cycle through the traceback
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait for the outcome; the exception ``result()`` would raise, or None."""
        self._outcome(timeout)
        if self._state in _CANCELLED:
            raise cf.CancelledError()
        return self._exception

    def add_done_callback(self, fn: Callable[[Any], object]) -> None:
        """Call ``fn(future)`` once done (at once, here, if it is). Watching starts now: no
        thread waits for it. ``fn`` runs on this thread when the outcome was reached by a call
        made here, else on the ``pydist-futures`` thread (never on one that reads messages)."""
        self._on_done(fn, False)

    def set_running_or_notify_cancel(self) -> bool:
        """For an executor: PENDING -> RUNNING (True), or False if cancelled meanwhile."""
        with self._lock:
            if self._state in _CANCELLED:
                return False
            if self._state == PENDING:
                self._state = RUNNING
                return True
            raise RuntimeError(f"Future in unexpected state: {self._state}")

    def set_result(self, result: Any) -> None:
        """``concurrent.futures``' spelling of :meth:`put`.

        Raises:
            concurrent.futures.InvalidStateError: set (or cancelled) already.
        """
        if self._state != RUNNING or self._value is not NOTHING:
            raise cf.InvalidStateError(f"{self._state}: {self!r}")
        try:
            self.put(result)
        except RuntimeError as e:
            raise cf.InvalidStateError(str(e)) from None

    def set_exception(self, exception: BaseException | None) -> None:
        """Set the Future to a failure: ``result()`` raises ``exception``, ``fetch()`` a
        ``RemoteException`` of it (as if a call here had raised it).

        Raises:
            concurrent.futures.InvalidStateError: set (or cancelled) already.
        """
        if exception is None:
            raise TypeError("set_exception(None)")
        self.set_result(Failure(self._cluster.myid, capture(exception)))

    # -- asyncio ----------------------------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        """``await fut``: the value, without blocking the event loop and without a thread
        (a watch's completion wakes the loop with ``call_soon_threadsafe``). Raises what
        :meth:`result` raises. Cancelling the awaiting task cancels the Future only if its
        task has not started (an Executor's); a started call goes on, and its value is
        fetched and cached when it comes."""
        if self._state not in _FINAL:
            import asyncio

            loop = asyncio.get_running_loop()
            waiter = loop.create_future()

            def wake(_: Any) -> None:
                try:
                    loop.call_soon_threadsafe(_set_if_pending, waiter)
                except RuntimeError:
                    pass  # the loop is closed: nobody awaits any more

            def on_cancel(w: asyncio.Future[Any]) -> None:
                if w.cancelled():
                    self.cancel()

            waiter.add_done_callback(on_cancel)
            self._on_done(wake, True)
            yield from waiter
        return self.result(0)


def _set_if_pending(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_result(None)
