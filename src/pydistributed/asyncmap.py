"""``asyncmap``: map over local threads, and the engine that runs both maps (``pmap`` too).

A :class:`Job` hands the items of one shared iterator to *runner* threads, one item (or a small
chunk) at a time, under a lock, and stores each result at the item's index, so results come
back in input order while the input is read lazily: at most a few items per runner are read
ahead.

Two ways to run a job:

* **adaptive** (``asyncmap``, ``pmap(..., distributed=False)``, a batch of ``pmap`` on a
  worker): the calling thread is the first runner. Python threads are not free and the GIL
  runs one at a time, so more runners are started only when they help: a per-cluster watcher
  (:class:`_Monitor`) looks every few milliseconds at the runners of each job, and when a
  runner has been stuck on one item without using the CPU (a sleep, a network wait, a lock),
  it starts another, up to ``ntasks``. A map of quick or CPU-bound items thus runs in one
  thread at full speed; a map of waiting items soon has ``ntasks`` of them waiting at once. A
  runner that finds its items quick takes them a chunk at a time, so that the lock costs
  little per item.
* **fixed** (``pmap``'s feeders, one per worker of the pool): ``ntasks`` runner threads start
  at once and the caller waits; ``ntasks`` may be a function (the pool's size), asked now and
  then, and runners are added for new workers.

Runner threads come from the cluster's executor (which keeps idle threads for a while:
starting a thread costs more than a tiny task).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .cluster import Cluster, ClusterVar, current_cluster

__all__ = [
    "DEFAULT_NTASKS",
    "INTERRUPT_GRACE",
    "MAX_CHUNK",
    "Job",
    "asyncmap",
    "elements",
    "known_length",
]

log = logging.getLogger("pydistributed.pmap")

DEFAULT_NTASKS = 100  # Julia's asyncmap default
INTERRUPT_GRACE = 5.0  # after Ctrl-C, how long a fixed job waits for the interrupted items
_TICK = 0.002  # how often the watcher looks at the runners of adaptive jobs...
_LINGER = 1.0  # ...and for how long it goes on ticking once there are none
_FAST_ITEM = 20e-6  # items quicker than this are taken in growing chunks...
MAX_CHUNK = 256  # ...of at most this many
_NTASKS_EVERY = 0.25  # how often a job asks a callable ntasks for its value

_PENDING: Any = object()
_END: Any = object()


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


class Job:
    """One map: the items of a shared iterator, run by runner threads, results in order.

    Args:
        cluster: whose executor runs the runner threads (and whose watcher looks at them).
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
        cluster: Cluster,
        fn: Callable[[Any], Any],
        items: Iterator[Any],
        ntasks: int | Callable[[], int],
        *,
        adaptive: bool,
        max_chunk: int = 1,
        name: str = "map",
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.cluster = cluster
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
        monitor = _MONITOR.get(self.cluster) if watched else None
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
            self.cluster.executor.submit(lambda: self._work(runner), main_ok=False)
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
        self._jobs: set[Job] = set()
        self._thread: threading.Thread | None = None
        self._sleeping = False

    def watch(self, job: Job) -> None:
        with self._cond:
            self._jobs.add(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pydist-asyncmap-watch", daemon=True
                )
                self._thread.start()
            elif self._sleeping:
                self._cond.notify()

    def unwatch(self, job: Job) -> None:
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


_MONITOR: ClusterVar[_Monitor] = ClusterVar("asyncmap.monitor", lambda: _Monitor())


# -- asyncmap -----------------------------------------------------------------------------------


def _check_ntasks(ntasks: Any) -> int | Callable[[], int]:
    if ntasks is None:
        return DEFAULT_NTASKS
    if callable(ntasks):
        return ntasks  # type: ignore[no-any-return]
    if isinstance(ntasks, bool) or not isinstance(ntasks, int) or ntasks < 1:
        raise ValueError(f"ntasks must be a positive int, not {ntasks!r}")
    return ntasks


def elements(iterables: tuple[Iterable[Any], ...]) -> tuple[Iterator[Any], bool]:
    """The elements to map, and whether ``f`` takes each one unpacked (several iterables)."""
    if not iterables:
        raise TypeError("a map needs at least one iterable")
    if len(iterables) == 1:
        return iter(iterables[0]), False
    return zip(*iterables, strict=False), True  # as map(): stop at the shortest


def known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
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
    items, star = elements(iterables)
    fn: Callable[[Any], Any] = (lambda args: f(*args)) if star else f
    job = Job(
        current_cluster(), fn, items, limit, adaptive=True, max_chunk=MAX_CHUNK, name="asyncmap"
    )
    return job.run()
