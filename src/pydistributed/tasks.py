"""Local concurrent work: ``Task``, ``async_``, ``sync`` and ``timedwait`` (Julia's tasks).

A :class:`Task` is Julia's ``Task`` run on its own daemon thread: ``async_(f, x)`` starts
``f(x)`` at once and returns the task; ``task.fetch()`` waits and returns the result, or
raises the task's own exception.

``with sync():`` is Julia's ``@sync``. Every thread keeps a stack of its active ``sync``
blocks (``threading.local``); :func:`register_sync` adds an object to *every* block on the
calling thread's stack, so an outer block also waits for what its inner blocks started::

    with sync() as outer:           # stack: [outer]
        async_(f)                   #   registered with outer
        with sync() as inner:       # stack: [outer, inner]
            spawnat(2, g)           #   registered with outer and inner
        # inner waits for g here    # stack: [outer]
    # outer waits for f, then for g again (already done: cheap)

``async_``, ``spawnat``, ``spawn``, ``remotecall`` and ``distributed`` call
:func:`register_sync` with the ``Task`` or ``Future`` they create. Anything registered must
provide the waiting hook::

    _sync_wait(timeout: float | None = None) -> BaseException | None

which blocks until the work is done and returns its failure (``None`` on success) without
raising; it raises ``TimeoutError`` only when ``timeout`` seconds pass first.

Registrations are per thread: work started by another thread, including by the body of a
``Task`` (which runs on its own thread), is not collected by this thread's blocks. This is
narrower than Julia, where an ``@async`` nested lexically inside another ``@async`` body is
also waited for by the enclosing ``@sync``; a task body that starts work of its own and
wants it waited for opens its own ``sync()``.

This module sits low in the layering: it imports only the standard library and ``errors``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, Protocol, TypeVar

from .errors import CompositeException, _WrappedBaseException, strip_internal
from .timeouts import check_seconds, check_timeout, seconds

__all__ = ["Task", "async_", "register_sync", "sync", "timedwait"]

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

_task_counter = itertools.count(1)


class _SyncWaitable(Protocol):
    """What :func:`register_sync` accepts: an object whose completion ``sync()`` can await."""

    def _sync_wait(self, timeout: float | None = None) -> BaseException | None: ...


W = TypeVar("W", bound=_SyncWaitable)


class Task(Generic[T]):
    """A unit of local concurrent work, run on its own daemon thread (Julia's ``Task``).

    ``Task(fn, *args, **kwargs)`` creates the task without starting it; :meth:`start` runs
    ``fn(*args, **kwargs)`` on a new thread named ``pydist-task-N``. Whatever the body raises,
    ``BaseException`` included (``KeyboardInterrupt``, ``SystemExit``), is captured and
    raised again by :meth:`wait` and :meth:`fetch`: a task never fails silently on its thread.
    Once the body has run the task drops its references to ``fn`` and the arguments.

    States, as shown by ``repr``: ``runnable`` (created or running), ``done``, ``failed``.

    Args:
        fn: the callable to run; positional-only, so ``fn`` may also be a keyword of its own.
        *args: positional arguments for ``fn``.
        **kwargs: keyword arguments for ``fn``.
    """

    def __init__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> None:
        self._call: Callable[[], T] | None = functools.partial(fn, *args, **kwargs)
        self._fn_name: str = getattr(fn, "__qualname__", None) or repr(fn)
        self._name = f"pydist-task-{next(_task_counter)}"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._result: T | None = None
        self._exception: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Task[T]:
        """Start running the task on a new daemon thread (Julia's ``schedule``).

        Returns:
            The task itself, so that ``t = Task(f).start()`` reads naturally.

        Raises:
            RuntimeError: the task was already started (or no thread could be started).
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"{self!r} was already started")
            thread = threading.Thread(
                target=self._run, name=f"{self._name} ({self._fn_name})", daemon=True
            )
            thread.start()
            # Set only once the thread exists, so a failed start leaves the task startable.
            self._thread = thread
        return self

    def _run(self) -> None:
        call, self._call = self._call, None
        assert call is not None
        try:
            self._result = call()
        except BaseException as e:  # captured, and raised again by wait()/fetch()
            self._exception = e
            log.debug("%s failed: %r", self._name, e)
        finally:
            del call
            self._done.set()

    # -- state -----------------------------------------------------------------------------

    def started(self) -> bool:
        """Whether :meth:`start` has been called (Julia's ``istaskstarted``)."""
        return self._thread is not None

    def done(self) -> bool:
        """Whether the task has finished, successfully or not (Julia's ``istaskdone``)."""
        return self._done.is_set()

    def failed(self) -> bool:
        """Whether the task has finished by raising (Julia's ``istaskfailed``)."""
        return self._done.is_set() and self._exception is not None

    def exception(self) -> BaseException | None:
        """The exception the task raised; ``None`` if it succeeded or has not finished yet.

        This never blocks; call :meth:`wait` first to wait for the task.
        """
        return self._exception if self._done.is_set() else None

    # -- waiting ---------------------------------------------------------------------------

    def _wait_done(self, timeout: float | None) -> None:
        if self._done.is_set():
            return
        if self._thread is not None and self._thread is threading.current_thread():
            raise RuntimeError(f"{self!r} cannot wait for itself")
        # One Event.wait is one monotonic deadline.
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self!r} did not finish within {seconds(timeout)} s")

    def wait(self, timeout: float | None = None) -> None:
        """Block until the task is done; raise its exception if it failed (Julia's ``wait``).

        Waiting for a task that was never started blocks until some thread starts it and it
        finishes, as in Julia; give a ``timeout``.

        Args:
            timeout: seconds to wait at most; ``None`` waits for ever.

        Raises:
            TimeoutError: the task is still running after ``timeout`` seconds (it keeps
                running).
            RuntimeError: called from the task's own thread before it finished.
            BaseException: the very exception object the task raised, not wrapped.
        """
        self._wait_done(check_timeout(timeout))
        exc = self._exception
        if exc is not None:
            raise strip_internal(exc)  # a remote error: without the task's plumbing

    def fetch(self, timeout: float | None = None) -> T:
        """Block until the task is done and return its result (Julia's ``fetch``).

        Args:
            timeout: seconds to wait at most; ``None`` waits for ever.

        Returns:
            What the task's callable returned.

        Raises:
            TimeoutError: the task is still running after ``timeout`` seconds.
            RuntimeError: called from the task's own thread before it finished.
            BaseException: the very exception object the task raised, not wrapped.
        """
        self.wait(timeout)
        return self._result  # type: ignore[return-value]  # set, since it did not raise

    def _sync_wait(self, timeout: float | None = None) -> BaseException | None:
        """Block until done and return the failure, or ``None``, without raising it.

        Raises:
            TimeoutError: the task is still running after ``timeout`` seconds.
        """
        self._wait_done(timeout)
        return self._exception

    def __repr__(self) -> str:
        if not self._done.is_set():
            state = "runnable"
        elif self._exception is not None:
            state = "failed"
        else:
            state = "done"
        return f"<Task {self._name} {self._fn_name} ({state})>"


def async_(f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Task[T]:
    """Run ``f(*args, **kwargs)`` concurrently on a new :class:`Task` (Julia's ``@async``).

    The task is started at once and registered with every active :class:`sync` block of
    the calling thread, which will wait for it.

    Args:
        f: the callable to run; positional-only.
        *args: positional arguments for ``f``.
        **kwargs: keyword arguments for ``f``.

    Returns:
        The started task.
    """
    return register_sync(Task(f, *args, **kwargs).start())


class _SyncState(threading.local):
    """The calling thread's stack of active ``sync`` blocks, innermost last."""

    def __init__(self) -> None:
        self.stack: list[sync] = []


_state = _SyncState()


def register_sync(obj: W) -> W:
    """Register ``obj`` with every active :class:`sync` block of the calling thread.

    Used by the functions that start work (``async_``, ``spawnat``, ``remotecall``, ...).
    With no active block on this thread it does nothing. Registering the same object twice
    with a block is harmless: it is waited for once.

    Args:
        obj: a ``Task``, ``Future`` or anything with ``_sync_wait(timeout=None)``.

    Returns:
        ``obj``, for chaining.

    Raises:
        TypeError: ``obj`` has no ``_sync_wait`` method (checked even outside a block, so
            that the mistake shows at once).
    """
    if not callable(getattr(obj, "_sync_wait", None)):
        raise TypeError(f"register_sync: {type(obj).__name__} has no _sync_wait() method")
    for block in _state.stack:
        block._objects.setdefault(id(obj), obj)
    return obj


class sync:
    """``with sync():`` waits on exit for all work started inside it (Julia's ``@sync``).

    On exit the block waits for every object registered with it on this thread, in
    registration order, including those registered inside nested blocks, and always for all
    of them, even when the body raised. Then:

    - body returned, no failures: nothing is raised.
    - body returned, some failures: a :class:`~pydistributed.errors.CompositeException` of
      the failures in registration order (each exception object once).
    - body raised, no further failures: the body's exception is raised again unchanged. A
      failure counts as not further if it is the body's exception itself, or a member of it
      when the body raised a ``CompositeException`` (say from a nested ``sync``).
    - body raised an ``Exception`` and there are further failures: a ``CompositeException``
      of the body's exception (its members when it is a ``CompositeException``) followed by
      the further failures.
    - body raised a ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
      ``SystemExit``, ``GeneratorExit``): it is raised again unchanged, so that Ctrl-C is
      never turned into an ``Exception``; the further failures are logged as a warning.

    Waiting after Ctrl-C can itself be interrupted by a second Ctrl-C.

    ``with sync() as s:`` binds the block; ``s.objects`` lists what it has registered. A block
    may be used again once it has exited, but not entered twice at once.

    Args:
        timeout: seconds to wait at most on exit, for everything together; ``None`` waits for
            ever.

    Raises:
        TimeoutError: on exit, some registered work was still running after ``timeout``
            seconds (it keeps running); chained from the failures seen so far, if any.
    """

    def __init__(self, timeout: float | None = None) -> None:
        self._timeout = check_timeout(timeout)
        self._objects: dict[int, _SyncWaitable] = {}
        self._stack: list[sync] | None = None

    @property
    def objects(self) -> tuple[Any, ...]:
        """The objects registered with this block so far, in registration order."""
        return tuple(self._objects.values())

    def __enter__(self) -> sync:
        if self._stack is not None:
            raise RuntimeError("this sync() block is already active")
        self._objects = {}
        self._stack = _state.stack
        self._stack.append(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            failures = self._wait_all()
        finally:
            self._leave()
        if exc is None:
            if failures:
                raise CompositeException(failures)
            return
        further = _further_failures(exc, failures)
        if not further:
            return  # the body's exception propagates unchanged
        if not isinstance(exc, Exception):
            log.warning(
                "sync(): %s raised in the block body; %d task failure(s) not raised: %r",
                type(exc).__name__,
                len(further),
                further,
            )
            return
        members = list(exc.exceptions) if isinstance(exc, CompositeException) else [exc]
        # The body's exception is a member: do not show it a second time as the context.
        raise CompositeException([*members, *further]) from None

    def _leave(self) -> None:
        stack, self._stack = self._stack, None
        assert stack is not None
        # Normally the top; search anyway so that an out-of-order exit cannot leave us behind.
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is self:
                del stack[i]
                break

    def _wait_all(self) -> list[BaseException]:
        """Wait for every registered object; return the failures, each object once."""
        timeout = self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        failures: list[BaseException] = []
        seen: set[int] = set()
        still_running = 0
        objects = list(self._objects.values())
        for obj in objects:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                err = obj._sync_wait(remaining)
            except TimeoutError:
                # Keep going with no time left: collect what has finished, count the rest.
                still_running += 1
                continue
            if err is not None and id(err) not in seen:
                seen.add(id(err))
                failures.append(err)
        if still_running:
            msg = (
                f"sync(): {still_running} of {len(objects)} still running after "
                f"{seconds(timeout)} s"
            )
            if failures:
                raise TimeoutError(msg) from CompositeException(failures)
            raise TimeoutError(msg)
        return failures


def _unwrap(e: BaseException) -> BaseException:
    return e.exc if isinstance(e, _WrappedBaseException) else e


def _further_failures(
    body_exc: BaseException, failures: list[BaseException]
) -> list[BaseException]:
    """The failures not already reported by the body's exception, compared by identity."""
    known = {id(body_exc)}
    if isinstance(body_exc, CompositeException):
        for member in body_exc.exceptions:
            known.add(id(member))
            known.add(id(_unwrap(member)))
    return [e for e in failures if id(e) not in known]


def timedwait(
    testcb: Callable[[], object], secs: float, pollint: float = 0.1
) -> Literal["ok", "timed_out"]:
    """Poll ``testcb()`` until it returns true or ``secs`` seconds pass (Julia's ``timedwait``).

    ``testcb`` is called once at once, then every ``pollint`` seconds, and a last time at the
    deadline. Unlike Julia, which requires ``pollint >= 0.001``, any ``pollint >= 0`` is
    accepted; ``0`` polls as fast as the interpreter allows. A negative ``secs`` is accepted,
    as in Julia: ``testcb`` is called once. An exception from ``testcb`` propagates.

    Args:
        testcb: the condition, called with no arguments; its result is tested for truth.
        secs: seconds to wait at most; ``math.inf`` waits for ever.
        pollint: seconds between two calls of ``testcb``.

    Returns:
        ``"ok"`` if ``testcb()`` returned true in time, otherwise ``"timed_out"``.

    Raises:
        TypeError: ``secs`` or ``pollint`` is not a number (a ``bool`` is refused).
        ValueError: ``pollint`` is negative or NaN, or ``secs`` is NaN.
    """
    secs = check_seconds(secs, "timedwait: secs")
    if not check_seconds(pollint, "timedwait: pollint") >= 0:
        raise ValueError(f"timedwait: pollint must be >= 0 seconds, got {pollint!r}")
    deadline = time.monotonic() + secs
    if testcb():
        return "ok"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timed_out"
        time.sleep(min(pollint, remaining))
        if testcb():
            return "ok"
