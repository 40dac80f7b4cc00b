"""``asyncmap``: map over local threads, and the engine that runs both maps (``pmap`` too).

A :class:`Job` hands the items of one shared iterator to *runner* threads, one item (or a small
chunk) at a time, under a lock, and stores each result at the item's index, so results come
back in input order while the input is read lazily: at most a few items per runner are read
ahead. With ``adaptive=True`` (``asyncmap``, ``pmap(..., distributed=False)``, a batch of
``pmap`` on a worker) the calling thread is the first runner, else (``pmap``'s feeders, one per
worker) it starts one and waits.

Before a runner runs an item that it took alone, it starts another runner, up to ``ntasks`` (an
int, or a function asked now and then: pmap's pool size, which may grow), so that an item that
waits (a sleep, a remote call, a lock) never holds up the next ones. A runner that finds its
items quick takes them a chunk at a time, doubling, so that the lock costs little per item, and
starts no more runners; nor do the runners it started, which begin with its chunk size. So a map
of quick items stays in a thread or two. Runner threads come from the cluster's executor (which
keeps idle threads for a while: starting a thread costs more than a tiny task).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .cluster import Cluster, current_cluster
from .errors import strip_internal

__all__ = [
    "DEFAULT_NTASKS",
    "FAST_ITEM",
    "INTERRUPT_GRACE",
    "MAX_CHUNK",
    "Job",
    "asyncmap",
    "elements",
    "known_length",
]

log = logging.getLogger("pydistributed.pmap")

DEFAULT_NTASKS = 100  # Julia's asyncmap default
INTERRUPT_GRACE = 5.0  # after Ctrl-C, how long pmap waits for the interrupted items
FAST_ITEM = 20e-6  # items quicker than this are taken in growing chunks...
MAX_CHUNK = 256  # ...of at most this many
_NTASKS_EVERY = 0.25  # how often a job asks a callable ntasks for its value

_PENDING: Any = object()


class Job:
    """One map: the items of a shared iterator, run by runner threads, results in order.

    Args:
        cluster: whose executor runs the runner threads.
        fn: called with each item; its value is the item's result.
        items: the items, read lazily under the job's lock.
        ntasks: how many runners at most (an int, or a callable asked now and then).
        adaptive: the caller is the first runner and Ctrl-C is raised at once (asyncmap);
            otherwise the caller waits, and after Ctrl-C waits a little for the runners
            (pmap's feeders).
        max_chunk: how many items a runner may take at once.
        chunk: how many a runner takes at first (the items were found quick before).
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
        chunk: int = 1,
        name: str = "map",
        on_stop: Callable[[], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.fn = fn
        self.items = items
        self._ntasks = ntasks
        self.caller = adaptive
        self.max_chunk = max_chunk
        self.name = name
        self.on_stop = on_stop
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.stop = False
        self.exhausted = False
        self.runners = 0  # started
        self.active = 0  # runners that took items and have not finished yet
        # how many items a runner takes at first: the last one's finding (or the caller's, from
        # a map like this one: a batch of pmap after the one before)
        self.chunk = max(1, min(chunk, max_chunk))
        self.limit = self._ask_ntasks()
        self._asked_at = time.monotonic()

    def _ask_ntasks(self) -> int:
        n = self._ntasks() if callable(self._ntasks) else self._ntasks
        return max(1, int(n))

    def run(self, on_interrupt: Callable[[], None] | None = None) -> list[Any]:
        """Run the map to the end and return the results in order.

        Raises:
            BaseException: the first error of ``fn`` (or of the iterator), once the runners
                have finished what they were doing; a KeyboardInterrupt at once (pmap: after
                ``on_interrupt`` and a bounded wait for the runners).
        """
        try:
            with self.lock:
                if self.caller:
                    self.runners += 1
                else:
                    self._spawn_locked()
            if self.caller:
                self._work(caller=True)
            with self.done:
                while self.active or not (self.exhausted or self.stop):
                    self.done.wait()
        except KeyboardInterrupt:
            if self.caller:
                self._stop()
            else:
                self._interrupted(on_interrupt)
            raise
        if self.error is not None:
            raise strip_internal(self.error)  # a remote error: without the runner's plumbing
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
                    if self.active:
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
        """Lock held: start one more runner on a thread of the cluster's executor."""
        self.runners += 1
        try:
            self.cluster.executor.submit(self._work, main_ok=False)
        except BaseException:
            self.runners -= 1
            raise

    def _stop(self) -> None:
        with self.lock:
            self.stop = True
        if self.on_stop is not None:
            self.on_stop()

    def _work(self, caller: bool = False) -> None:
        fn = self.fn
        results = self.results
        chunk = self.chunk
        counted = False  # a runner that finds nothing to do is not waited for
        try:
            while True:
                with self.lock:
                    if self.stop or self.exhausted:
                        break
                    start = len(results)
                    batch = list(itertools.islice(self.items, chunk))
                    if len(batch) < chunk:
                        self.exhausted = True
                    if not batch:
                        break
                    if not counted:
                        counted = True
                        self.active += 1
                    results.extend([_PENDING] * len(batch))
                    if chunk == 1 and self.runners < self.limit and not self.exhausted:
                        self._spawn_locked()  # this item may wait: another runner goes on
                if callable(self._ntasks):
                    self._maybe_grow()
                t0 = time.perf_counter()
                if len(batch) == 1:
                    results[start] = fn(batch[0])
                else:
                    results[start : start + len(batch)] = [fn(item) for item in batch]
                if self.max_chunk > 1:
                    fast = time.perf_counter() - t0 < FAST_ITEM * len(batch)
                    chunk = self.chunk = min(2 * chunk, self.max_chunk) if fast else 1
        except BaseException as e:
            with self.lock:
                if self.error is None and not self.stop:
                    self.error = e
            self._stop()
            if caller and not isinstance(e, Exception):
                raise  # Ctrl-C in the caller: at once
        finally:
            with self.done:
                self.active -= counted
                if not self.active:
                    self.done.notify_all()

    def _maybe_grow(self) -> None:
        """Now and then ask how many runners there may be (pmap: one per worker of the pool,
        which may grow)."""
        now = time.monotonic()
        if now - self._asked_at >= _NTASKS_EVERY:
            self._asked_at = now
            try:
                self.limit = self._ask_ntasks()
            except Exception:
                pass


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
    no arguments asked now and then), the calling thread first: each thread starts the next
    one before it runs an item that may wait, so waiting items (a sleep, the network, a lock)
    soon have ``ntasks`` threads; quick items (under 20 us) are taken in chunks by a thread
    or two.

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
