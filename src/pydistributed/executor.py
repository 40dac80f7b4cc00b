"""``Executor``: a ``concurrent.futures.Executor`` over a worker pool.

Code written for ``ProcessPoolExecutor`` runs unchanged (``submit``, ``map`` with ``timeout``
and ``chunksize``, ``shutdown(wait, cancel_futures)``, ``with``), lambdas and closures
included; its futures are pydistributed ``Future`` objects (which are
``concurrent.futures.Future`` objects) and raise the task's own exception type, with the
``RemoteException`` (and its remote traceback) as ``__cause__``.

::

    submit(f, x)  -> a Future, PENDING, queued here (cancel() works until the task is sent)
    dispatcher thread (one per Executor):
        pid = pool.take()                 a free worker (at most max_workers at once)
        next task not cancelled -> RUNNING, CallFetch(f, x) to pid, without waiting
    the reading thread, when the answer comes:
        pool.put(pid); the Future gets the value (or the failure): FINISHED

So work queues on the master, not on the workers: a worker has one task of this Executor at a
time, ``shutdown(cancel_futures=True)`` cancels everything not sent yet, and other users of
the pool (``pmap``, ``remotecall(f, pool)``) share its workers fairly. No thread waits for an
answer. ``map`` ships its function to each worker once (a ``FunctionCache`` for the map), and
with ``chunksize > 1`` sends ``chunksize`` elements per task, as ``ProcessPoolExecutor`` does.

A worker that dies fails the task it was running with ``ProcessExitedException`` (where
``ProcessPoolExecutor`` breaks the whole pool); the pool drops it and the other tasks go on.
With no workers, the default pool hands out the master, and tasks run on the master's own
threads (objects passed without a copy, as a call to oneself is).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import scope
from .cluster import current_cluster
from .errors import CapturedException, RemoteException, capture
from .funccache import FunctionCache
from .futures import PENDING
from .peer import ResponseSlot
from .poolstate import PoolState
from .refstore import Failure
from .remoteref import Future
from .watch import defer
from .workerpool import AbstractWorkerPool, CachingPool, WorkerPool, default_worker_pool

__all__ = ["Executor"]

_live: weakref.WeakSet[Executor] = weakref.WeakSet()
_interpreter_exiting = False


class _Task:
    __slots__ = ("args", "cache", "fn", "fut", "kwargs")

    def __init__(
        self,
        fut: Future,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        cache: FunctionCache | None,
    ) -> None:
        self.fut = fut
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.cache = cache


class _Chunk:
    """Runs a chunk of ``map``'s calls on a worker: one task, one answer (a list)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, chunk: list[tuple[Any, ...]]) -> list[Any]:
        fn = self.fn
        return [fn(*args) for args in chunk]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Chunk, (self.fn,))


class _TaskSlot(ResponseSlot):
    """The answer of a task: filled on the thread that reads it (must not block)."""

    __slots__ = ("executor", "fut", "pid")

    def __init__(self, executor: Executor, pid: int, fut: Future) -> None:
        super().__init__()
        self.executor = executor
        self.pid = pid
        self.fut = fut

    def set(self, ok: bool, value: Any) -> None:
        super().set(ok, value)
        self.executor._task_done(self.pid, self.fut, ok, value, False)


class Executor(cf.Executor):
    """A ``concurrent.futures.Executor`` whose tasks run on the workers of ``pool``.

    Args:
        pool: a worker pool (``WorkerPool``, ``CachingPool``); the default pool when None,
            which follows ``addprocs``/``rmprocs``. An int here is taken as ``max_workers``, so
            that ``Executor(4)`` reads as ``ProcessPoolExecutor(4)``.
        max_workers: at most this many tasks running at once (on as many workers); None: as
            many as the pool has free workers.

    Raises:
        ValueError: ``max_workers`` is not positive.
    """

    def __init__(
        self, pool: AbstractWorkerPool | int | None = None, max_workers: int | None = None
    ) -> None:
        if isinstance(pool, int) and not isinstance(pool, bool):
            if max_workers is not None:
                raise TypeError("Executor(pool, max_workers): pool must be a worker pool")
            pool, max_workers = None, pool
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if pool is not None and not isinstance(pool, AbstractWorkerPool):
            raise TypeError(f"Executor(pool): a worker pool, not {type(pool).__name__}")
        self._cluster = current_cluster()
        self._pool: AbstractWorkerPool = pool if pool is not None else default_worker_pool()
        self._max_workers = max_workers
        # a pool whose state lives here gives a worker back without I/O: on the reading thread
        self._put_inline = isinstance(self._pool, WorkerPool) and isinstance(
            self._pool._home, PoolState
        )
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Task] = collections.deque()
        self._in_flight = 0
        self._shutdown = False
        self._thread: threading.Thread | None = None
        _live.add(self)

    def __repr__(self) -> str:
        return f"<Executor on {self._pool!r}, max_workers={self._max_workers}>"

    # -- submitting --------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; returns its Future (PENDING until sent to a worker).

        Raises:
            RuntimeError: the Executor was shut down.
        """
        return self._submit([(fn, args, kwargs)], None)[0]

    def _submit(
        self,
        calls: Iterable[tuple[Any, tuple[Any, ...], dict[str, Any]]],
        cache: FunctionCache | None,
    ) -> list[Future]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        # (the user's iterables are read outside the lock, which a reading thread may need)
        tasks = [_Task(_pending_future(), fn, args, kwargs, cache) for fn, args, kwargs in calls]
        with self._cond:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            self._queue.extend(tasks)
            if self._thread is None:
                t = threading.Thread(target=self._dispatch, name="pydist-executor", daemon=True)
                t.start()
                self._thread = t
            self._cond.notify_all()
        return [t.fut for t in tasks]

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``map(fn, *iterables)`` on the workers: an iterator of the results, in order.

        The calls are queued at once (the iterables are read now, as the standard
        ``Executor.map`` does); results are waited for as the iterator is advanced. The
        function goes to each worker once. ``chunksize`` elements travel per task.

        Raises (from the iterator):
            Exception: the first failed call's own exception, at its place.
            concurrent.futures.TimeoutError: the whole map took more than ``timeout`` s.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end_time = None if timeout is None else timeout + time.monotonic()
        cache = None
        if not isinstance(self._pool, CachingPool):
            cache = FunctionCache(self._cluster)
            weakref.finalize(cache, cache.finalizer(), (cache.uid, cache.used))
        zipped = zip(*iterables)  # noqa: B905  (as map(): stops at the shortest)
        if chunksize == 1:
            fs = self._submit(((fn, args, {}) for args in zipped), cache)
        else:
            runner = _Chunk(fn)
            chunks = iter(lambda: list(itertools.islice(zipped, chunksize)), [])
            fs = self._submit(((runner, (chunk,), {}) for chunk in chunks), cache)
        return _results(fs, end_time, chunksize > 1, cache)

    # -- the dispatcher ---------------------------------------------------------------------

    def _dispatch(self) -> None:
        scope.bind(self._cluster)
        pool, cond, queue = self._pool, self._cond, self._queue
        while True:
            with cond:
                while not queue or (
                    self._max_workers is not None and self._in_flight >= self._max_workers
                ):
                    if self._shutdown and not queue:
                        self._thread = None
                        cond.notify_all()
                        return
                    cond.wait()
            try:
                pid = pool.take()
            except Exception as e:  # the pool has no live worker left: nothing can run
                self._fail_queued(e)
                continue
            with cond:
                task = self._next_task()
            if task is None:
                pool.put(pid)
                continue
            self._send(pid, task)
            del task  # (a finished task's Future and value must not live on in this frame)

    def _next_task(self) -> _Task | None:
        """Lock held: the next task not cancelled, now RUNNING and counted in flight."""
        queue = self._queue
        while queue:
            task = queue.popleft()
            if task.fut.set_running_or_notify_cancel():
                self._in_flight += 1
                return task
        return None

    def _send(self, pid: int, task: _Task) -> None:
        c = self._cluster
        fut = task.fut
        if pid == c.myid:  # no workers: the master works, on one of its pool threads
            fn, args, kwargs = task.fn, task.args, task.kwargs

            def run() -> None:
                ok, value = c.dispatch.execute(fn, args, kwargs)
                self._task_done(pid, fut, ok, value, True)

            c.executor.submit(run, False)
            return
        slot = _TaskSlot(self, pid, fut)

        def form(p: int, f: Any, a: tuple[Any, ...], k: dict[str, Any]) -> None:
            c.calls.call_fetch_nowait(p, f, a, k, slot)

        try:
            if task.cache is not None:
                task.cache.call(form, pid, task.fn, task.args, task.kwargs)
            else:
                self._pool.call_on(pid, form, task.fn, task.args, task.kwargs)
        except Exception as e:  # could not be pickled (nothing sent), or the worker is gone
            if not slot.is_set():
                self._task_done(pid, fut, False, e, True)

    def _task_done(self, pid: int, fut: Future, ok: bool, value: Any, may_block: bool) -> None:
        if self._put_inline or may_block:
            self._pool.put(pid)
        else:
            defer(self._pool.put, pid)
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()
        _set_outcome(fut, ok, value)

    def _fail_queued(self, e: BaseException) -> None:
        with self._cond:
            tasks = list(self._queue)
            self._queue.clear()
        for t in tasks:
            if t.fut.set_running_or_notify_cancel():
                _set_outcome(t.fut, False, e)

    # -- shutting down -----------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more tasks; with ``cancel_futures`` the tasks not sent to a worker yet are
        cancelled; with ``wait``, return once every task sent or queued is done. Tasks already
        running are never stopped. Calling it again is harmless."""
        with self._cond:
            self._shutdown = True
            cancelled: list[_Task] = []
            if cancel_futures:
                cancelled = list(self._queue)
                self._queue.clear()
            self._cond.notify_all()
        for t in cancelled:
            t.fut.cancel()
        if wait:
            with self._cond:
                while self._thread is not None or self._in_flight:
                    self._cond.wait()


def _set_outcome(fut: Future, ok: bool, value: Any) -> None:
    """A task is done: store its value (``ok``) or its failure (a ``RemoteException``, a
    ``CapturedException`` of a call run here, or a local error) in its Future, which lives
    here. Never blocks: runs on a reading thread."""
    c = fut._cluster
    if not ok:
        if isinstance(value, RemoteException):
            value = Failure(value.pid, value.captured)
        elif isinstance(value, CapturedException):
            value = Failure(c.myid, value)
        else:
            value = Failure(c.myid, capture(value))
    fut._slot().try_put(value)
    fut._finish(value, None, False, False)


def _pending_future() -> Future[Any]:
    fut: Future[Any] = Future()
    fut._state = PENDING
    fut._release_now = True
    return fut


def _results(
    fs: list[Future], end_time: float | None, chunked: bool, cache: FunctionCache | None
) -> Iterator[Any]:
    """The iterator of ``map``: each Future's result in order (a chunk's, one by one); what is
    left is cancelled if the iterator is closed early or raises."""
    try:
        fs.reverse()
        while fs:
            timeout = None if end_time is None else end_time - time.monotonic()
            # (no local name for the value: the caller may drop it while we are suspended)
            if chunked:
                yield from _result_or_cancel(fs.pop(), timeout)
            else:
                yield _result_or_cancel(fs.pop(), timeout)
        if cache is not None:
            cache.clear()
    finally:
        for fut in fs:
            fut.cancel()


def _result_or_cancel(fut: Future, timeout: float | None) -> Any:
    try:
        return fut.result(timeout)
    finally:
        fut.cancel()
        del fut


def _python_exit() -> None:
    """At interpreter exit (before ``atexit`` handlers, as ``concurrent.futures`` does): let
    every Executor finish the tasks it has queued."""
    global _interpreter_exiting
    _interpreter_exiting = True
    for ex in list(_live):
        try:
            ex.shutdown(wait=True)
        except Exception:
            pass


_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_python_exit)
