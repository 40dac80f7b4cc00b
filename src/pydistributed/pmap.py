"""``pmap``: map a function over the workers of a pool, the results in input order.

::

    caller thread          feeder threads (one per worker of the pool)            workers
    -------------          ---------------------------------------------          -------
    start the feeders      next element (or batch) from the shared iterator
    wait until all done    pid = pool.take()            (a free worker)
                           remotecall_fetch(f, pid, x) -------------------------> f(x)
                           pool.put(pid); results[i] = value <------------------- value
                           on an error: on_error, then retries (another worker, maybe)

So every worker of the pool has one call in flight, and its next element goes out as soon as
its answer is in (Julia: ``asyncmap(remote(pool, f), c; ntasks=nworkers(pool))``). The feeders
are a fixed ``asyncmap.Job``. With ``batch_size > 1`` an item is a batch, run on the worker by
a local ``asyncmap``. The function goes to each worker once per map (a ``FunctionCache``, as
``CachingPool`` does), not once per element.

Ctrl-C: a ``KeyboardInterrupt`` in the caller of ``pmap`` stops the feeders from starting more
elements, interrupts (``interrupt(pid)``) every worker running one of this map's calls, waits a
few seconds for those calls to come back, and is raised. The workers go back to their pool and
the cluster stays usable.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .asyncmap import (
    DEFAULT_NTASKS,
    INTERRUPT_GRACE,
    MAX_CHUNK,
    Job,
    asyncmap,
    elements,
    known_length,
)
from .backoff import ExponentialBackOff
from .cluster import Cluster, current_cluster
from .errors import CapturedException, RemoteException, capture
from .funccache import FunctionCache
from .remotecall import fetch_on
from .workerpool import AbstractWorkerPool, CachingPool, WorkerPool, default_worker_pool

# asyncmap and ExponentialBackOff live in their own modules; they are named here too, as they
# were before (import them from ``pydistributed``).
__all__ = ["INTERRUPT_GRACE", "ExponentialBackOff", "asyncmap", "pmap"]

log = logging.getLogger("pydistributed.pmap")

# batch_size="auto" (see _auto_sizes): about this many batches per worker (as multiprocessing's
# map; Julia's batchsplit makes at least 3 per worker but of at most 100 elements, which costs
# a round trip per 100 elements: far too slow for tiny tasks here)...
AUTO_BATCHES_PER_WORKER = 4
AUTO_MAX_BATCH = 10_000  # ...of at most this many elements;
AUTO_FIRST_BATCH = 100  # an input of unknown length starts with batches of this many

_END: Any = object()


class _Failed:
    """An element of a batch that raised on worker ``pid`` (when pmap handles errors)."""

    __slots__ = ("captured", "pid")

    def __init__(self, pid: int, captured: CapturedException) -> None:
        self.pid = pid
        self.captured = captured

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Failed, (self.pid, self.captured))


class _BatchCall:
    """What runs a batch on a worker: a local asyncmap of ``f`` over the batch's elements.

    With ``capture``, an element that raises gives a :class:`_Failed` in its place and the
    others go on (pmap then handles it); without, the first error fails the whole batch.
    """

    def __init__(self, f: Callable[..., Any], star: bool, capture: bool) -> None:
        self.f = f
        self.star = star
        self.capture = capture

    def __call__(self, batch: list[Any]) -> list[Any]:
        c = current_cluster()  # the worker's cluster, running this batch (see scope)
        f = self.f
        fn: Callable[[Any], Any] = (lambda args: f(*args)) if self.star else f
        if self.capture:
            inner = fn
            pid = c.myid

            def fn(item: Any) -> Any:
                try:
                    return inner(item)
                except Exception as e:
                    return _Failed(pid, capture(e))

        job = Job(c, fn, iter(batch), DEFAULT_NTASKS, adaptive=True, max_chunk=MAX_CHUNK)
        return job.run()


def _unwrap(e: BaseException) -> BaseException:
    """The exception that ``f`` raised: a RemoteException's original one."""
    if isinstance(e, RemoteException):
        return e.captured.exc
    return e


def _reiterable_delays(retry_delays: Iterable[float]) -> Iterable[float]:
    """Each element retries with a fresh iteration of the delays: a one-shot iterator (a
    generator) is read once, into a tuple."""
    if retry_delays is None:
        return ()
    if iter(retry_delays) is retry_delays:
        return tuple(retry_delays)
    return retry_delays


def _check_batch_size(batch_size: Any) -> int | str:
    if batch_size == "auto" and isinstance(batch_size, str):
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValueError(f'batch_size must be a positive int or "auto", not {batch_size!r}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be a positive int or "auto", not {batch_size}')
    return batch_size


def _auto_size(n: int, nworkers: int) -> int:
    """``batch_size="auto"`` for ``n`` elements: about AUTO_BATCHES_PER_WORKER batches per
    worker, of at most AUTO_MAX_BATCH elements."""
    return max(1, min(AUTO_MAX_BATCH, -(-n // (AUTO_BATCHES_PER_WORKER * max(1, nworkers)))))


def _auto_sizes(
    elements: Iterator[Any], total: int | None, nworkers: int
) -> tuple[list[Any], Iterator[int]]:
    """The sizes of the batches for ``batch_size="auto"``, and the elements read to decide.

    Of a known length, every batch has :func:`_auto_size`. Of an unknown length, up to
    ``AUTO_BATCHES_PER_WORKER * nworkers * AUTO_FIRST_BATCH`` elements are read ahead (Julia's
    ``batchsplit`` peeks so too): if the input ends there, its length is known; else the
    batches start at AUTO_FIRST_BATCH and double up to AUTO_MAX_BATCH.
    """
    if total is not None:
        return [], itertools.repeat(_auto_size(total, nworkers))
    peek = AUTO_BATCHES_PER_WORKER * max(1, nworkers) * AUTO_FIRST_BATCH
    head = list(itertools.islice(elements, peek))
    if len(head) < peek:
        return head, itertools.repeat(_auto_size(len(head), nworkers))
    growing = itertools.chain(
        itertools.takewhile(
            lambda s: s < AUTO_MAX_BATCH,
            (AUTO_FIRST_BATCH << k for k in itertools.count()),
        ),
        itertools.repeat(AUTO_MAX_BATCH),
    )
    return head, growing


def _batches(head: list[Any], rest: Iterator[Any], sizes: Iterator[int]) -> Iterator[list[Any]]:
    it = itertools.chain(head, rest)
    for size in sizes:
        batch = list(itertools.islice(it, size))
        if not batch:
            return
        yield batch


class _Progress:
    """A tqdm bar on standard error, updated from any thread (or nothing)."""

    def __init__(self, enabled: bool, total: int | None) -> None:
        self._bar: Any = None
        self._lock = threading.Lock()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, file=sys.stderr, desc="pmap", unit="it")

    def update(self, n: int) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _PMap:
    """One call of pmap: its settings, its workers in use, and its error handling."""

    def __init__(
        self,
        cluster: Cluster,
        f: Callable[..., Any],
        pool: AbstractWorkerPool,
        star: bool,
        on_error: Callable[[BaseException], Any] | None,
        retry_delays: Iterable[float],
        retry_check: Callable[[Any, BaseException], Any] | None,
        progress: _Progress,
    ) -> None:
        self.f = f
        self.pool = pool
        self.star = star
        self.on_error = on_error
        self.delays = retry_delays
        self.retry = next(iter(retry_delays), _END) is not _END
        self.check = retry_check
        self.progress = progress
        self.cluster = cluster
        self.stopping = threading.Event()
        self._busy: dict[int, int] = {}
        self._busy_lock = threading.Lock()
        own = pool.cache if isinstance(pool, CachingPool) else None
        self.cache = own if own is not None else FunctionCache(cluster)
        self.own_cache = own is None

    # -- calls on workers ------------------------------------------------------------------

    def call(self, fn: Any, args: tuple[Any, ...]) -> Any:
        """``remotecall_fetch(fn, <a free worker of the pool>, *args)``, the function cached."""
        pool = self.pool
        pid = pool.take()
        with self._busy_lock:
            self._busy[pid] = self._busy.get(pid, 0) + 1
        try:
            return self.cache.call(fetch_on, pid, fn, args, {})
        finally:
            with self._busy_lock:
                n = self._busy.pop(pid, 1) - 1
                if n:
                    self._busy[pid] = n
            pool.put(pid)

    def interrupt_busy(self) -> None:
        """Ctrl-C: interrupt the calls of this map that are running on workers."""
        with self._busy_lock:
            pids = [p for p in self._busy if p != self.cluster.myid]
        if pids:
            self.cluster.lifecycle.interrupt(pids)

    # -- error handling --------------------------------------------------------------------

    def handled(self, attempt: Callable[[], Any], first_error: BaseException | None = None) -> Any:
        """Run ``attempt`` with on_error and retries (Julia's ``retry(delays, check)`` around
        ``on_error``): on_error runs first, and if it returns, its value is the result; else
        the error is retried after the next delay, if ``retry_check`` agrees. ``first_error``:
        the first attempt already ran and failed so."""
        it = iter(self.delays)
        delay = next(it, _END)
        err = first_error
        while True:
            if err is None:
                try:
                    return attempt()
                except Exception as e:
                    err = e
            if self.stopping.is_set():
                raise err
            if self.on_error is not None:
                try:
                    return self.on_error(_unwrap(err))
                except Exception as e:
                    err = e
            if delay is _END or self.stopping.is_set():
                raise err
            if self.check is not None:
                verdict = self.check(it, _unwrap(err))
                if isinstance(verdict, tuple) and len(verdict) == 2:
                    state, verdict = verdict
                    it = iter(state)
                if not verdict:
                    raise err
            if self.stopping.wait(delay):
                raise err
            delay = next(it, _END)
            err = None

    # -- what the feeders run --------------------------------------------------------------

    def element(self, item: Any) -> Any:
        args = item if self.star else (item,)
        if self.on_error is None and not self.retry:
            value = self.call(self.f, args)
        else:
            value = self.handled(lambda: self.call(self.f, args))
        self.progress.update(1)
        return value

    def local_element(self, item: Any) -> Any:
        f = self.f
        args = item if self.star else (item,)
        if self.on_error is None and not self.retry:
            value = f(*args)
        else:
            value = self.handled(lambda: f(*args))
        self.progress.update(1)
        return value

    def batch(self, runner: _BatchCall, batch: list[Any]) -> list[Any]:
        capture_errors = runner.capture
        try:
            results: list[Any] = self.call(runner, (batch,))
        except Exception as e:
            if not capture_errors:
                raise
            # the whole batch failed (a dead worker...): every element is handled alone
            results = [self.recover(item, e) for item in batch]
        else:
            for i, r in enumerate(results):
                if isinstance(r, _Failed):
                    err = RemoteException(r.pid, r.captured)
                    results[i] = self.recover(batch[i], err)
        self.progress.update(len(batch))
        return results

    def recover(self, item: Any, err: BaseException) -> Any:
        args = item if self.star else (item,)
        return self.handled(lambda: self.call(self.f, args), first_error=err)

    def close(self) -> None:
        if self.own_cache:
            try:
                self.cache.clear()
            except Exception:
                log.exception("pmap: dropping the function on the workers failed")


def pmap(
    f: Callable[..., Any],
    *iterables: Any,
    pool: AbstractWorkerPool | None = None,
    distributed: bool = True,
    batch_size: int | str = 1,
    on_error: Callable[[BaseException], Any] | None = None,
    retry_delays: Iterable[float] = (),
    retry_check: Callable[[Any, BaseException], Any] | None = None,
    progress: bool = False,
) -> list[Any]:
    """Map ``f`` over the iterables on the workers of a pool; the results in input order.

    ``pmap(f, xs)`` uses the default worker pool; ``pmap(f, pool, xs)`` or ``pool=pool`` another
    one. Several iterables are zipped, as in ``map``. Any iterable works, generators of unknown
    length too: the input is read lazily, a few elements per worker ahead. Each worker of the
    pool runs one element at a time; ``f`` goes to each worker once per call of pmap.

    Args:
        f: the function; it must be picklable (lambdas and closures are, by value).
        *iterables: the inputs; a pool may come first.
        pool: the workers to use (default: ``default_worker_pool()``).
        distributed: False maps on this process with concurrent threads (``asyncmap`` with as
            many tasks as the pool has workers). A pool of no workers, or only this process,
            also maps here.
        batch_size: elements per remote call: an int >= 1, or ``"auto"``: about 4 batches per
            worker, of at most 10_000 elements (an input of unknown length: batches of 100
            doubling up to 10_000, unless it turns out short). A batch runs on the worker as
            a local ``asyncmap``.
        on_error: called with the exception of a failed element (the original one, not the
            ``RemoteException`` around it; ``ProcessExitedException`` for a worker that
            died); what it returns takes the element's place, what it raises stops the map.
        retry_delays: the delays in seconds before each retry of a failed element (any
            iterable, e.g. ``[0, 0, 0]`` or ``ExponentialBackOff(n=3)``); a retry goes to a
            free worker, possibly another. With ``on_error`` too, ``on_error`` runs first and
            an element it handles is not retried. If a whole batch fails, each of its
            elements is retried.
        retry_check: ``retry_check(state, exc) -> bool`` or ``(state, bool)``: whether to
            retry after ``exc``. ``state`` is the iterator of the delays still to come (Julia's
            iteration state); a ``(state, bool)`` answer replaces it.
        progress: show a progress bar (tqdm) on standard error.

    Returns:
        The results, one per element, in input order.

    Raises:
        RemoteException: ``f`` raised on a worker (without ``on_error``): the first error stops
            the map once the elements already started have finished.
        ProcessExitedException: a worker died while running an element (without retries).
        ValueError: ``batch_size`` is 0, negative or not an int or ``"auto"``.
        RuntimeError: every worker of the pool has exited (a pool given empty, and the
            default pool without workers, map on this process, as in Julia).
        KeyboardInterrupt: Ctrl-C; the calls in flight were interrupted.
    """
    if iterables and isinstance(iterables[0], AbstractWorkerPool):
        if pool is not None:
            raise TypeError("pmap() got a pool both as an argument and as pool=")
        pool, iterables = iterables[0], iterables[1:]
    if pool is None:
        pool = default_worker_pool()
    elif not isinstance(pool, AbstractWorkerPool):
        raise TypeError(f"pmap(): pool must be a worker pool, not {type(pool).__name__}")
    size = _check_batch_size(batch_size)
    if not callable(f):
        raise TypeError(f"pmap(): f must be callable, not {type(f).__name__}")
    if on_error is not None and not callable(on_error):
        raise TypeError("pmap(): on_error must be callable")
    delays = _reiterable_delays(retry_delays)
    total = known_length(iterables) if iterables else None
    items, star = elements(iterables)

    c = current_cluster()
    members = pool.workers
    if distributed and not members and isinstance(pool, WorkerPool) and pool._lost_all():
        # as take() says, and Julia's pmap over such a pool; an empty pool maps here
        raise RuntimeError("No active worker available in pool")
    if not members or members == [c.myid]:
        distributed = False
    bar = _Progress(progress, total)
    run = _PMap(c, f, pool, star, on_error, delays, retry_check, bar)
    stop = run.stopping.set
    try:
        if not distributed:
            ntasks = max(1, len(members))
            job = Job(c, run.local_element, items, ntasks, adaptive=True, name="pmap", on_stop=stop)
            return job.run()

        def nworkers() -> int:
            return len(pool)

        if size == 1:
            job = Job(c, run.element, items, nworkers, adaptive=False, name="pmap", on_stop=stop)
            return job.run(on_interrupt=run.interrupt_busy)
        if size == "auto":
            head, sizes = _auto_sizes(items, total, len(members))
        else:
            head, sizes = [], itertools.repeat(int(size))
        runner = _BatchCall(f, star, capture=on_error is not None or run.retry)
        batches = _batches(head, items, sizes)
        job = Job(
            c,
            lambda b: run.batch(runner, b),
            batches,
            nworkers,
            adaptive=False,
            name="pmap",
            on_stop=stop,
        )
        parts = job.run(on_interrupt=run.interrupt_busy)
        return list(itertools.chain.from_iterable(parts))
    finally:
        run.stopping.set()
        bar.close()
        run.close()
