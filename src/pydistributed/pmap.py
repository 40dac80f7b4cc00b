"""Parallel maps: ``pmap`` over worker processes, ``asyncmap`` over local threads, and
``ExponentialBackOff``, the delays of retries.

One engine runs both maps: a :class:`_Job` hands the items of one shared iterator to *runner*
threads, one item (or a small chunk) at a time, under a lock, and stores each result at the
item's index, so results come back in input order while the input is read lazily: at most a
few items per runner are read ahead.

``pmap`` (distributed)::

    caller thread          feeder threads (one per worker of the pool)            workers
    -------------          ---------------------------------------------          -------
    start the feeders      next element (or batch) from the shared iterator
    wait until all done    pid = pool.take()            (a free worker)
                           remotecall_fetch(f, pid, x) -------------------------> f(x)
                           pool.put(pid); results[i] = value <------------------- value
                           on an error: on_error, then retries (another worker, maybe)

So every worker of the pool has one call in flight, and its next element goes out as soon as
its answer is in (Julia: ``asyncmap(remote(pool, f), c; ntasks=nworkers(pool))``). With
``batch_size > 1`` an item is a batch, run on the worker by a local ``asyncmap``. The function
goes to each worker once per map (a cache, as ``CachingPool`` does), not once per element.

``asyncmap`` (and ``pmap(..., distributed=False)``, and a batch on a worker): the calling
thread is the first runner. Python threads are not free and the GIL runs one at a time, so more
runners are started only when they help: a per-process watcher (``_Monitor``) looks every few
milliseconds at the runners of each map, and when a runner has been stuck on one item without
using the CPU (a sleep, a network wait, a lock), it starts another, up to ``ntasks``. A map of
quick or CPU-bound items thus runs in one thread at full speed; a map of waiting items soon
has ``ntasks`` of them waiting at once. A runner that finds its items quick takes them a chunk
at a time, so that the lock costs little per item.

Ctrl-C: a ``KeyboardInterrupt`` in the caller of ``pmap`` stops the feeders from starting more
elements, interrupts (``interrupt(pid)``) every worker running one of this map's calls, waits a
few seconds for those calls to come back, and is raised. The workers go back to their pool and
the cluster stays usable.
"""

from __future__ import annotations

import itertools
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .cluster import Cluster, current_cluster
from .errors import CapturedException, RemoteException, capture
from .workerpool import AbstractWorkerPool, CachingPool, _FunctionCache, default_worker_pool

__all__ = ["ExponentialBackOff", "asyncmap", "pmap"]

log = logging.getLogger("pydistributed.pmap")

DEFAULT_NTASKS = 100  # Julia's asyncmap default
# batch_size="auto" (see _auto_sizes): about this many batches per worker (as multiprocessing's
# map; Julia's batchsplit makes at least 3 per worker but of at most 100 elements, which costs
# a round trip per 100 elements: far too slow for tiny tasks here)...
AUTO_BATCHES_PER_WORKER = 4
AUTO_MAX_BATCH = 10_000  # ...of at most this many elements;
AUTO_FIRST_BATCH = 100  # an input of unknown length starts with batches of this many
INTERRUPT_GRACE = 5.0  # after Ctrl-C, how long pmap waits for the interrupted calls
_TICK = 0.002  # how often the watcher looks at the runners of asyncmaps...
_LINGER = 1.0  # ...and for how long it goes on ticking once there are none
_FAST_ITEM = 20e-6  # items quicker than this are taken in growing chunks...
_MAX_CHUNK = 256  # ...of at most this many
_NTASKS_EVERY = 0.25  # how often pmap asks the pool how many workers it has
_EXT_MONITOR = "pydistributed.pmap.monitor"

_PENDING: Any = object()
_END: Any = object()


# -- ExponentialBackOff ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExponentialBackOff:
    """An iterable of ``n`` delays in seconds that grow exponentially (Julia's
    ``ExponentialBackOff``), for ``pmap(..., retry_delays=ExponentialBackOff(n=3))``.

    The first delay is exactly ``first_delay``; each next one is the previous times
    ``factor * (1 ± jitter)`` (uniformly random), capped at ``max_delay``. Each iteration draws
    new jitter. ``len()`` is ``n``.

    Raises:
        ValueError: an argument is negative (or ``n`` is not an integer).
    """

    n: int = 1
    first_delay: float = 0.05
    max_delay: float = 10.0
    factor: float = 5.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise ValueError(f"ExponentialBackOff: n must be an int, not {self.n!r}")
        values = (self.n, self.first_delay, self.max_delay, self.factor, self.jitter)
        if any(not v >= 0 for v in values):
            raise ValueError(f"ExponentialBackOff: all inputs must be non-negative, not {self!r}")

    def __iter__(self) -> Iterator[float]:
        delay = float(self.first_delay)
        for _ in range(self.n):
            yield delay
            spread = 1.0 - self.jitter + random.random() * 2.0 * self.jitter
            delay = min(float(self.max_delay), delay * self.factor * spread)

    def __len__(self) -> int:
        return self.n


# -- the engine -------------------------------------------------------------------------------


class _Runner:
    """One thread working on a map's items; the watcher reads its progress."""

    __slots__ = ("clock", "count", "running", "seen_at", "seen_count", "seen_cpu")

    def __init__(self) -> None:
        self.count = 0  # items done (written by the runner only)
        self.running = True
        self.clock: int | None = None  # the thread's CPU-time clock, when the OS has one
        self.seen_count = -1
        self.seen_cpu: float | None = None
        self.seen_at = time.monotonic()

    def start_clock(self) -> None:
        try:
            self.clock = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):
            self.clock = None

    def cpu(self) -> float | None:
        if self.clock is None:
            return None
        try:
            return time.clock_gettime(self.clock)
        except OSError:
            return None


class _Job:
    """One map: the items of a shared iterator, run by runner threads, results in order.

    Args:
        fn: called with each item; its value is the item's result.
        items: the items, read lazily under the job's lock.
        ntasks: how many runners at most (an int, or a callable asked now and then).
        adaptive: the caller is the first runner and the watcher adds runners that help
            (asyncmap); otherwise ``ntasks`` runner threads start at once and the caller
            waits (pmap's feeders).
        max_chunk: how many items a runner may take at once.
        name: names the map in log messages.
        on_stop: called when the map stops early (an error, Ctrl-C).
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        items: Iterator[Any],
        ntasks: int | Callable[[], int],
        *,
        adaptive: bool,
        max_chunk: int = 1,
        name: str = "map",
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.fn = fn
        self.on_stop = on_stop
        self.items = items
        self._ntasks = ntasks
        self.adaptive = adaptive
        self.max_chunk = max_chunk
        self.name = name
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.stop = False
        self.exhausted = False
        self.runners: list[_Runner] = []
        self.active = 0
        self.limit = self._ask_ntasks()
        self._asked_at = time.monotonic()

    def _ask_ntasks(self) -> int:
        n = self._ntasks() if callable(self._ntasks) else self._ntasks
        return max(1, int(n))

    # -- running ---------------------------------------------------------------------------

    def run(self, on_interrupt: Callable[[], None] | None = None) -> list[Any]:
        """Run the map to the end and return the results in order.

        Raises:
            BaseException: the first error of ``fn`` (or of the iterator), once the runners
                have finished what they were doing; a KeyboardInterrupt at once (pmap: after
                ``on_interrupt`` and a bounded wait for the runners).
        """
        if self.adaptive:
            return self._run_adaptive()
        try:
            with self.lock:
                for _ in range(self.limit):
                    self._spawn_locked()
            with self.done:
                while self.active:
                    self.done.wait()
        except KeyboardInterrupt:
            self._interrupted(on_interrupt)
            raise
        return self._outcome()

    def _run_adaptive(self) -> list[Any]:
        runner = _Runner()
        with self.lock:
            self.runners.append(runner)
            self.active += 1
        watched = self.limit > 1 or callable(self._ntasks)
        monitor = _monitor(current_cluster()) if watched else None
        if monitor is not None:
            monitor.watch(self)
        try:
            self._work(runner, caller=True)
            with self.done:
                while self.active:
                    self.done.wait()
        except KeyboardInterrupt:
            self._stop()
            raise
        finally:
            if monitor is not None:
                monitor.unwatch(self)
        return self._outcome()

    def _outcome(self) -> list[Any]:
        if self.error is not None:
            raise self.error
        return self.results

    def _interrupted(self, on_interrupt: Callable[[], None] | None) -> None:
        """Ctrl-C in the caller: start nothing more, interrupt what runs, wait a little."""
        self._stop()
        deadline = time.monotonic() + INTERRUPT_GRACE
        try:
            while True:
                if on_interrupt is not None:
                    on_interrupt()
                with self.done:
                    if not self.active:
                        return
                    self.done.wait(min(1.0, max(0.0, deadline - time.monotonic())))
                    if not self.active:
                        return
                if time.monotonic() >= deadline:
                    log.warning(
                        "%s: %d calls still running %g s after Ctrl-C; not waiting for them",
                        self.name,
                        self.active,
                        INTERRUPT_GRACE,
                    )
                    return
        except KeyboardInterrupt:
            return  # a second Ctrl-C: stop waiting

    def _spawn_locked(self) -> None:
        """Lock held: start one more runner, on a thread of this process's executor (which
        keeps idle threads for a while: starting a thread costs more than a tiny task)."""
        runner = _Runner()
        self.runners.append(runner)
        self.active += 1
        try:
            current_cluster().executor.submit(lambda: self._work(runner), main_ok=False)
        except BaseException:
            self.runners.remove(runner)
            self.active -= 1
            raise

    def _fail(self, e: BaseException) -> None:
        with self.lock:
            if self.error is None and not self.stop:
                self.error = e
        self._stop()

    def _stop(self) -> None:
        with self.lock:
            self.stop = True
        if self.on_stop is not None:
            self.on_stop()

    def _work(self, runner: _Runner, caller: bool = False) -> None:
        runner.start_clock()
        fn = self.fn
        results = self.results
        chunk = 1
        try:
            while True:
                with self.lock:
                    if self.stop or self.exhausted:
                        break
                    start = len(results)
                    if chunk == 1:
                        item = next(self.items, _END)
                        batch = [] if item is _END else [item]
                    else:
                        batch = list(itertools.islice(self.items, chunk))
                    if len(batch) < chunk:
                        self.exhausted = True
                    if not batch:
                        break
                    results.extend([_PENDING] * len(batch))
                if not self.adaptive:
                    self._maybe_grow()
                t0 = time.perf_counter()
                if len(batch) == 1:
                    results[start] = fn(batch[0])
                else:
                    results[start : start + len(batch)] = [fn(item) for item in batch]
                runner.count += len(batch)
                if chunk < self.max_chunk:
                    if time.perf_counter() - t0 < _FAST_ITEM * len(batch):
                        chunk = min(2 * chunk, self.max_chunk)
                    else:
                        chunk = 1
        except Exception as e:
            self._fail(e)
        except BaseException as e:
            if caller:
                self._stop()
                raise
            self._fail(e)  # a KeyboardInterrupt or SystemExit on a runner thread
        finally:
            runner.running = False
            with self.done:
                self.active -= 1
                if not self.active:
                    self.done.notify_all()

    def _maybe_grow(self) -> None:
        """pmap: now and then ask how many workers the pool has; add feeders for new ones."""
        if not callable(self._ntasks):
            return
        now = time.monotonic()
        if now - self._asked_at < _NTASKS_EVERY:
            return
        self._asked_at = now
        try:
            limit = self._ask_ntasks()
        except Exception:
            return
        with self.lock:
            self.limit = limit
            while len(self.runners) < limit and not (self.stop or self.exhausted):
                self._spawn_locked()

    # -- the watcher's view ----------------------------------------------------------------

    def check_stalls(self) -> None:
        """Called by the watcher: add runners while the present ones wait without working."""
        if self.stop or self.exhausted:
            return
        if callable(self._ntasks) and time.monotonic() - self._asked_at >= _NTASKS_EVERY:
            self._asked_at = time.monotonic()
            self.limit = self._ask_ntasks()
        if len(self.runners) >= self.limit:
            return
        now = time.monotonic()
        blocked = 0
        for r in list(self.runners):
            if not r.running:
                continue
            cpu = r.cpu()
            if r.count == r.seen_count:
                wall = now - r.seen_at
                if cpu is None or r.seen_cpu is None or cpu - r.seen_cpu < 0.5 * wall:
                    blocked += 1
            r.seen_count, r.seen_cpu, r.seen_at = r.count, cpu, now
        if blocked:
            with self.lock:
                n = min(blocked, self.limit - len(self.runners))
                for _ in range(n):
                    if self.stop or self.exhausted:
                        break
                    self._spawn_locked()


class _Monitor:
    """The per-process watcher of running asyncmaps (see the module's docstring).

    It ticks while there are maps to watch, and for a second after the last one ends, so that
    a stream of short maps (a worker running batches) does not wake it up each time.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: set[_Job] = set()
        self._thread: threading.Thread | None = None
        self._sleeping = False

    def watch(self, job: _Job) -> None:
        with self._cond:
            self._jobs.add(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pydist-asyncmap-watch", daemon=True
                )
                self._thread.start()
            elif self._sleeping:
                self._cond.notify()

    def unwatch(self, job: _Job) -> None:
        with self._cond:
            self._jobs.discard(job)

    def _loop(self) -> None:
        idle_since: float | None = None
        while True:
            with self._cond:
                if not self._jobs:
                    now = time.monotonic()
                    if idle_since is None:
                        idle_since = now
                    if now - idle_since > _LINGER:
                        self._sleeping = True
                        while not self._jobs:
                            self._cond.wait()
                        self._sleeping = False
                if self._jobs:
                    idle_since = None
                jobs = list(self._jobs)
            time.sleep(_TICK)
            for job in jobs:
                try:
                    job.check_stalls()
                except Exception:
                    log.exception("the asyncmap watcher failed")


def _monitor(c: Cluster) -> _Monitor:
    m = c.extensions.get(_EXT_MONITOR)
    if m is None:
        m = c.extensions.setdefault(_EXT_MONITOR, _Monitor())
    return m  # type: ignore[no-any-return]


# -- asyncmap -----------------------------------------------------------------------------------


def _check_ntasks(ntasks: Any) -> int | Callable[[], int]:
    if ntasks is None:
        return DEFAULT_NTASKS
    if callable(ntasks):
        return ntasks  # type: ignore[no-any-return]
    if isinstance(ntasks, bool) or not isinstance(ntasks, int) or ntasks < 1:
        raise ValueError(f"ntasks must be a positive int, not {ntasks!r}")
    return ntasks


def _elements(iterables: tuple[Iterable[Any], ...]) -> tuple[Iterator[Any], bool]:
    """The elements to map, and whether ``f`` takes each one unpacked (several iterables)."""
    if not iterables:
        raise TypeError("a map needs at least one iterable")
    if len(iterables) == 1:
        return iter(iterables[0]), False
    return zip(*iterables, strict=False), True  # as map(): stop at the shortest


def _known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """The number of elements when every iterable has a ``len()`` (zip: the shortest)."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def asyncmap(
    f: Callable[..., Any],
    *iterables: Iterable[Any],
    ntasks: int | Callable[[], int] | None = None,
) -> list[Any]:
    """Map ``f`` over the iterables with concurrent local threads (Julia's ``asyncmap``).

    Several iterables are zipped, as in ``map``; results come in input order, and the input is
    read lazily. Up to ``ntasks`` threads run at once (default 100; an int, or a function of
    no arguments asked now and then); a new thread starts only when the running ones are
    waiting (sleeping, on the network, on a lock), so quick or CPU-bound items run in the
    calling thread alone.

    Raises:
        ValueError: ``ntasks`` is not a positive int.
        BaseException: the first exception raised by ``f``, once the items already started
            have finished.
    """
    limit = _check_ntasks(ntasks)
    elements, star = _elements(iterables)
    fn: Callable[[Any], Any] = (lambda args: f(*args)) if star else f
    return _Job(fn, elements, limit, adaptive=True, max_chunk=_MAX_CHUNK, name="asyncmap").run()


# -- pmap ---------------------------------------------------------------------------------------


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
        f = self.f
        fn: Callable[[Any], Any] = (lambda args: f(*args)) if self.star else f
        if self.capture:
            inner = fn
            pid = current_cluster().myid

            def fn(item: Any) -> Any:
                try:
                    return inner(item)
                except Exception as e:
                    return _Failed(pid, capture(e))

        job = _Job(fn, iter(batch), DEFAULT_NTASKS, adaptive=True, max_chunk=_MAX_CHUNK)
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
        self.cluster = current_cluster()
        self.stopping = threading.Event()
        self._busy: dict[int, int] = {}
        self._busy_lock = threading.Lock()
        if isinstance(pool, CachingPool) and not pool._remote:
            self.cache, self.own_cache = pool._cache, False
        else:
            self.cache, self.own_cache = _FunctionCache(self.cluster), True

    # -- calls on workers ------------------------------------------------------------------

    def call(self, fn: Any, args: tuple[Any, ...]) -> Any:
        """``remotecall_fetch(fn, <a free worker of the pool>, *args)``, the function cached."""
        pool = self.pool
        pid = pool.take()
        with self._busy_lock:
            self._busy[pid] = self._busy.get(pid, 0) + 1
        try:
            return self.cache.call("remotecall_fetch", pid, fn, args, {})
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
            self.cluster.interrupt(pids)

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
    total = _known_length(iterables) if iterables else None
    elements, star = _elements(iterables)

    c = current_cluster()
    members = pool.workers
    if not members or members == [c.myid]:
        distributed = False
    bar = _Progress(progress, total)
    run = _PMap(f, pool, star, on_error, delays, retry_check, bar)
    stop = run.stopping.set
    try:
        if not distributed:
            ntasks = max(1, len(members))
            job = _Job(
                run.local_element, elements, ntasks, adaptive=True, name="pmap", on_stop=stop
            )
            return job.run()

        def nworkers() -> int:
            return len(pool)

        if size == 1:
            job = _Job(run.element, elements, nworkers, adaptive=False, name="pmap", on_stop=stop)
            return job.run(on_interrupt=run.interrupt_busy)
        if size == "auto":
            head, sizes = _auto_sizes(elements, total, len(members))
        else:
            head, sizes = [], itertools.repeat(int(size))
        runner = _BatchCall(f, star, capture=on_error is not None or run.retry)
        batches = _batches(head, elements, sizes)
        job = _Job(
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
