"""``pmap`` and ``imap``: map a function over the workers of a pool.

::

    caller thread (the hub: pipeline.py)                              workers
    ------------------------------------                              -------
    take free workers from the pool, a lane each
    send each lane the next elements its window allows -- MapCalls --> run them one after
      (the input read lazily; retries first)                          another, in order
    wait for outcomes; on an error: on_error, retries  <- MapResults - several outcomes a
      (mapping.py); yield (index, value) as they come                 message
    pmap: the results in input order; imap: as they come, or in order

A lane's window (elements in flight on its worker) adapts: one for elements that take much
longer than a round trip, up to ``pipeline.MAX_WINDOW`` for quick ones. With ``batch_size > 1``
an element is a batch, run on the worker by a local ``asyncmap`` (``batchcall.py``); with
``batch_size="auto"`` and a known length, all the batches go out at once. The function goes to
each worker once per map (a ``FunctionCache``, as ``CachingPool`` does), not once per element;
one that pickles by name alone goes by name in each message (see ``Pipeline``).

Ctrl-C: a ``KeyboardInterrupt`` in the caller stops the map from sending more, drops the
elements queued on the workers, interrupts (``interrupt(pid)``) every worker running one of
this map's elements, waits a few seconds for them to come back, and is raised. The workers go
back to their pool and the cluster stays usable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .asyncmap import INTERRUPT_GRACE, Job, asyncmap, elements, known_length
from .backoff import ExponentialBackOff
from .batchcall import BatchCall
from .cluster import Cluster, current_cluster
from .mapping import (
    AUTO_BATCHES_PER_WORKER,
    MapPolicy,
    Progress,
    Run,
    auto_size,
    auto_sizes,
    check_batch_size,
    check_flag,
    make_batches,
    reiterable_delays,
)
from .pipelanes import pickles_by_name
from .pipeline import Pipeline
from .workerpool import AbstractWorkerPool, WorkerPool, default_worker_pool

# asyncmap and ExponentialBackOff live in their own modules; they are named here too, as they
# were before (import them from ``pydistributed``).
__all__ = ["INTERRUPT_GRACE", "ExponentialBackOff", "asyncmap", "imap", "pmap"]


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
    pool runs one element at a time, in the order they reach it; quick elements are pipelined
    (several in flight per worker, several to a message, see ``docs/pmap.md``), slow ones go
    one at a time. ``f`` goes to each worker once per call of pmap.

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
        ProcessExitedException: a worker died with elements of the map on it (without
            retries).
        ValueError: ``batch_size`` is 0, negative or not an int or ``"auto"``.
        RuntimeError: every worker of the pool has exited (a pool given empty, and the
            default pool without workers, map on this process, as in Julia).
        KeyboardInterrupt: Ctrl-C; the elements in flight were dropped or interrupted.
    """
    outcomes = _start_map(
        f,
        iterables,
        pool,
        distributed,
        batch_size,
        on_error,
        retry_delays,
        retry_check,
        progress,
        "pmap",
    )
    # the runs come in any order; in order they are appended (cheaper than placing each one in
    # a list of the full length), those that come early wait for the ones before them
    results: list[Any] = []
    early: dict[int, list[Any]] = {}
    for runs in outcomes:
        for start, values in runs:
            if start != len(results):
                early[start] = values
                continue
            results += values
            while early and len(results) in early:
                results += early.pop(len(results))
    if early:  # the runs cover the input, one element once: a gap is a bug, not a result
        raise RuntimeError(f"pmap: no result came for element {len(results)} (internal error)")
    return results


def imap(
    f: Callable[..., Any],
    *iterables: Any,
    pool: AbstractWorkerPool | None = None,
    ordered: bool = True,
    distributed: bool = True,
    batch_size: int | str = 1,
    on_error: Callable[[BaseException], Any] | None = None,
    retry_delays: Iterable[float] = (),
    retry_check: Callable[[Any, BaseException], Any] | None = None,
    progress: bool = False,
) -> Iterator[Any]:
    """``pmap`` as an iterator: the results as they come (``multiprocessing``'s ``imap`` and,
    with ``ordered=False``, ``imap_unordered``).

    The arguments are checked at once; the map starts at the first ``next()`` and runs while
    the iterator is read: a few elements per worker are in flight ahead of the reader, so a
    reader that stops reading stops the map soon (backpressure). Every keyword means what it
    means for :func:`pmap`.

    Args:
        ordered: True: the results in input order (a result waits for those before it);
            False: each result as soon as it is in, in completion order.

    Raises:
        (from ``next()``) what :func:`pmap` raises: the first error stops the map once the
        elements running have finished, and is raised after the results that came before it
        stopped (in order: those before the first one missing).
        ValueError, TypeError: bad arguments (from the call itself).

    Closing the iterator early (``close()``, ``break`` out of a ``for`` loop and dropping it)
    drops the elements queued on the workers, waits a few seconds at most for those running,
    and gives the workers back.
    """
    check_flag(ordered, "imap(): ordered")
    outcomes = _start_map(
        f,
        iterables,
        pool,
        distributed,
        batch_size,
        on_error,
        retry_delays,
        retry_check,
        progress,
        "imap",
    )
    if not ordered:
        return _as_they_come(outcomes)
    return _in_order(outcomes)


def _start_map(
    f: Callable[..., Any],
    iterables: tuple[Any, ...],
    pool: AbstractWorkerPool | None,
    distributed: bool,
    batch_size: Any,
    on_error: Callable[[BaseException], Any] | None,
    retry_delays: Iterable[float],
    retry_check: Callable[[Any, BaseException], Any] | None,
    progress: bool,
    name: str,
) -> Iterator[list[Run]]:
    """Check a map's arguments (now) and return the map, which runs as it is iterated: lists
    of runs ``(index of the first element, [values])``, as the elements finish. ``pmap``'s
    arguments; a pool may come first in ``iterables``."""
    if iterables and isinstance(iterables[0], AbstractWorkerPool):
        if pool is not None:
            raise TypeError(f"{name}() got a pool both as an argument and as pool=")
        pool, iterables = iterables[0], iterables[1:]
    if pool is None:
        pool = default_worker_pool()
    elif not isinstance(pool, AbstractWorkerPool):
        raise TypeError(f"{name}(): pool must be a worker pool, not {type(pool).__name__}")
    size = check_batch_size(batch_size)
    if not callable(f):
        raise TypeError(f"{name}(): f must be callable, not {type(f).__name__}")
    if on_error is not None and not callable(on_error):
        raise TypeError(f"{name}(): on_error must be callable")
    delays = reiterable_delays(retry_delays, name)
    distributed = check_flag(distributed, f"{name}(): distributed")
    total = known_length(iterables) if iterables else None
    items, star = elements(iterables)
    # a list's batches are slices of it (cheaper than reading its iterator)
    seq = iterables[0] if len(iterables) == 1 and type(iterables[0]) is list else None
    c = current_cluster()
    members = pool.workers
    if distributed and not members and isinstance(pool, WorkerPool) and pool._lost_all():
        # as take() says, and Julia's pmap over such a pool; an empty pool maps here
        raise RuntimeError("No active worker available in pool")
    if not members or members == [c.myid]:
        distributed = False
    return _run(
        c,
        f,
        pool,
        star,
        on_error,
        delays,
        retry_check,
        progress,
        total,
        items,
        seq,
        size,
        distributed,
        len(members),
        name == "imap",
    )


def _run(
    c: Cluster,
    f: Callable[..., Any],
    pool: AbstractWorkerPool,
    star: bool,
    on_error: Callable[[BaseException], Any] | None,
    delays: Iterable[float],
    retry_check: Callable[[Any, BaseException], Any] | None,
    progress: bool,
    total: int | None,
    items: Iterator[Any],
    seq: list[Any] | None,
    size: int | str,
    distributed: bool,
    nmembers: int,
    streaming: bool,
) -> Iterator[list[Run]]:
    bar = Progress(progress, total)
    run = MapPolicy(c, f, pool, star, on_error, delays, retry_check, bar)
    try:
        if not distributed:
            ntasks = max(1, nmembers)
            job = Job(
                c,
                run.local_element,
                items,
                ntasks,
                adaptive=True,
                name="pmap",
                on_stop=run.stopping.set,
            )
            yield [(0, job.run())]
            return
        per = 1  # elements per batch, when all batches have that many
        if size == 1:
            source = run.elements(items)
        else:
            if size == "auto":
                head, sizes = auto_sizes(items, total, nmembers)
                per = auto_size(total, nmembers) if total is not None else 0
            else:
                head, sizes = [], itertools.repeat(int(size))
                per = int(size)
            runner = BatchCall(f, star, capture=run.handles)
            source = run.batches(runner, make_batches(head, items, sizes, seq))
        if size == 1:
            window = 1
        elif size == "auto" and total is not None:
            # the batches were cut for these workers, a few each: they all go out at once (as
            # multiprocessing queues all of its chunks), which saves a map of quick elements
            # the round trips of refilling the windows
            window = AUTO_BATCHES_PER_WORKER
        else:
            window = 2  # a batch's elements are known to be several
        # imap's reader and a progress bar want each result as it comes; pmap alone only
        # needs to refill the windows
        eager = streaming or progress
        # the map's own copy of f leaves each worker as soon as it has its last elements
        # (they hold f already: the worker looked it up while reading them)
        sent_all = run.cache.drop_from if run.own_cache else None
        length = -(-total // per) if total is not None and per else None
        engine = Pipeline(
            c,
            pool,
            lambda: len(pool),
            run.cache,
            source,
            window,
            eager,
            sent_all,
            by_name=run.own_cache and pickles_by_name(f),
            length=length,
        )
        yield from run.run(engine)
    finally:
        run.stopping.set()
        bar.close()
        run.close()


def _as_they_come(outcomes: Iterator[list[Run]]) -> Iterator[Any]:
    try:
        for runs in outcomes:
            for _, values in runs:
                yield from values
    finally:
        outcomes.close()  # type: ignore[attr-defined]


def _in_order(outcomes: Iterator[list[Run]]) -> Iterator[Any]:
    waiting: dict[int, list[Any]] = {}
    nxt = 0
    try:
        for runs in outcomes:
            for start, values in runs:
                waiting[start] = values
            while nxt in waiting:
                values = waiting.pop(nxt)
                nxt += len(values)
                yield from values
    finally:
        outcomes.close()  # type: ignore[attr-defined]
