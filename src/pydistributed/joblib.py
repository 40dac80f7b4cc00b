"""A joblib backend, ``"pydistributed"``: ``joblib.Parallel`` and scikit-learn's ``n_jobs`` on
the cluster's workers.

``import pydistributed.joblib`` registers it (so does :func:`register`, which may be called
again)::

    import joblib
    import pydistributed.joblib  # registers "pydistributed"

    with joblib.parallel_backend("pydistributed"):
        GridSearchCV(SVC(), grid).fit(X, y)  # the fits run on the workers

The rules (``docs/joblib.md`` has the long form):

- **How many jobs.** ``n_jobs=-1`` (and ``None``, and the default of ``parallel_backend``) means
  one job per worker; ``-2`` one fewer, and so on (joblib's convention, with the worker count in
  place of the CPU count); a count above the number of workers is capped at it (a worker runs one
  batch at a time for this backend). ``n_jobs=1``, or a cluster with no workers (``nworkers()``
  is 1, the master works), makes joblib run the tasks one after another in the calling process,
  as it does for every backend.
- **Where.** Each batch goes to a free worker of a private :class:`~pydistributed.WorkerPool` of
  the workers there are when the ``Parallel`` call starts (or of the pool given as
  ``parallel_backend("pydistributed", pool=...)``), one batch per worker at a time; batches that
  find no free worker wait on this process, not on the workers.
- **Batching** is joblib's automatic batching (``batch_size="auto"``), tuned by the measured
  duration of each batch, as for joblib's process backends.
- **Errors.** A task that raises makes ``Parallel`` raise the task's own exception (a
  ``ValueError`` stays a ``ValueError``), as with joblib's default backend; its ``__cause__`` is
  the :class:`~pydistributed.RemoteException`, which names the worker and carries the remote
  traceback. A worker that exits during the call gives ``ProcessExitedException``. After an
  error, batches not yet sent are dropped; batches already running finish on their workers and
  their results are discarded (they are not interrupted: ``interrupt`` would stop every call on
  those workers, not only this ``Parallel``'s).
- **Nested** ``Parallel`` calls inside a task run on that worker, in threads (joblib's default
  for nested calls). A task may also use the ``"pydistributed"`` backend itself: its batches go
  from that worker to the workers it knows.

How a batch is sent: a bounded set of helper threads on the calling process (one per job) each
takes a submitted batch and runs it with ``remotecall_fetch(batch, pool)``; the batch's
``concurrent.futures.Future`` completes when the answer arrives, and joblib's callback runs
then, on that helper thread. The helper threads are daemon threads, so a ``Parallel`` abandoned
by an error never holds up the interpreter's exit.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any

import joblib
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from .errors import RemoteException
from .processes import workers
from .remotecall import remotecall_fetch
from .workerpool import AbstractWorkerPool, WorkerPool

__all__ = ["NAME", "PydistributedBackend", "register"]

NAME = "pydistributed"
"""The name the backend is registered under."""

_STOP: Any = object()


class _Sender:
    """``n`` daemon threads that run submitted batches with ``remotecall_fetch`` on a pool."""

    def __init__(self, n: int, pool: AbstractWorkerPool) -> None:
        self._pool = pool
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"pydist-joblib-{i}", daemon=True)
            for i in range(n)
        ]
        for t in self._threads:
            t.start()

    def submit(self, func: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fut, func))
        return fut

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fut, func = item
            if not fut.set_running_or_notify_cancel():
                continue  # cancelled before it was sent
            try:
                result = remotecall_fetch(func, self._pool)
            except BaseException as e:
                fut.set_exception(e)
            else:
                fut.set_result(result)
            del fut, func, item

    def shutdown(self) -> None:
        """Cancel the batches not sent yet; let the threads end once their call has answered."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(_STOP)


def _task_error(e: RemoteException) -> BaseException:
    """The task's own exception (or its stand-in, when it could not be pickled)."""
    exc = e.captured.exc
    if not isinstance(exc, BaseException):  # pragma: no cover - CapturedException guarantees it
        return e
    return exc


class PydistributedBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend interface on pydistributed's workers (see the module's docstring).

    Args:
        pool: the workers to use (a ``WorkerPool``); default: a private pool of all the
            workers there are when each ``Parallel`` call starts. A ``CachingPool`` brings
            nothing here: every batch is a new object, which it would keep on its worker until
            ``clear()``.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        pool: AbstractWorkerPool | None = None,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._given_pool = pool
        self._pool: AbstractWorkerPool | None = None
        self._sender: _Sender | None = None
        self._n_jobs = 1
        self._lock = threading.Lock()

    def _worker_count(self) -> int:
        if self._given_pool is not None:
            return max(len(self._given_pool), 1)
        return len(workers())  # [1] with no workers: one job, the master's

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The number of batches run at once: ``n_jobs`` resolved against the worker count."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        count = self._worker_count()
        if n_jobs is None or n_jobs < 0:
            n_jobs = -1 if n_jobs is None else n_jobs
            return max(count + 1 + n_jobs, 1)
        return min(n_jobs, count)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Set up for one ``Parallel`` call; returns the effective number of jobs."""
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        with self._lock:
            self._stop_sender()
            self._n_jobs = n
            if self._given_pool is not None:
                self._pool = self._given_pool
            else:
                self._pool = None  # made at the first batch, of the workers there are then
        return n

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], Any] | None = None
    ) -> concurrent.futures.Future[Any]:
        """Send one batch to a free worker; ``callback(future)`` runs when it is done."""
        with self._lock:
            if self._sender is None:
                if self._pool is None:
                    self._pool = WorkerPool(workers())
                self._sender = _Sender(self._n_jobs, self._pool)
            fut = self._sender.submit(func)
        if callback is not None:
            fut.add_done_callback(callback)
        return fut

    apply_async = submit  # joblib < 1.5 calls it by this name

    def retrieve_result_callback(self, out: concurrent.futures.Future[Any]) -> Any:
        """The batch's results, or the task's own exception raised."""
        try:
            return out.result()
        except RemoteException as e:
            raise _task_error(e) from e  # the task's own type; the RemoteException as cause

    def _stop_sender(self) -> None:
        if self._sender is not None:
            self._sender.shutdown()
            self._sender = None

    def terminate(self) -> None:
        """End of a ``Parallel`` call: stop the helper threads, forget the private pool."""
        with self._lock:
            self._stop_sender()
            if self._given_pool is None:
                self._pool = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """After an error: drop the batches not sent yet (running ones finish, unread)."""
        with self._lock:
            self._stop_sender()  # a later submit (ensure_ready) starts new threads


def register() -> None:
    """Register the ``"pydistributed"`` backend with joblib (done on import; idempotent)."""
    joblib.register_parallel_backend(NAME, PydistributedBackend)


register()
