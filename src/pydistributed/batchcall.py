"""What runs a batch of ``pmap(..., batch_size=n)`` on a worker: :class:`BatchCall`, a local
asyncmap of the map's function over the batch's elements, with a quick path for elements that
take microseconds (most of a batch's cost was the asyncmap's own bookkeeping), and
:class:`Failed`, an element of a batch that raised, when pmap handles errors."""

from __future__ import annotations

import functools
import itertools
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from .asyncmap import DEFAULT_NTASKS, FAST_ITEM, MAX_CHUNK, Job
from .cluster import current_cluster
from .errors import CapturedException, capture

__all__ = ["PROBE", "BatchCall", "Failed"]

# On a worker: how quick the last batch of each recent map was (its key -> the chunk size its
# elements went in, 1: not quick), so that a batch after another of the same map starts in chunks.
_CHUNKS: dict[int, int] = {}
_CHUNKS_LOCK = threading.Lock()
# ...and by function: how quick a function's elements were in the last map of it here
_FUNCTIONS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
REMEMBERED_MAPS = 64
PROBE = 16  # a batch of a map not known quick: its first elements as an asyncmap, to find out
stats = {"taken over": 0}  # inline runs, stuck or slow, that the tick handed on (for tests)


class Failed:
    """An element of a batch that raised on worker ``pid`` (when pmap handles errors)."""

    __slots__ = ("captured", "pid")

    def __init__(self, pid: int, captured: CapturedException) -> None:
        self.pid = pid
        self.captured = captured

    def __reduce__(self) -> tuple[Any, ...]:
        return (Failed, (self.pid, self.captured))


class BatchCall:
    """What runs a batch on a worker: a local asyncmap of ``f`` over the batch's elements.

    With ``capture``, an element that raises gives a :class:`Failed` in its place and the
    others go on (pmap then handles it); without, the first error fails the whole batch.

    Quick elements (under ``FAST_ITEM`` each) run in chunks that double, on this thread,
    without the asyncmap's lock and bookkeeping, until a chunk is not quick: the rest then runs
    as an asyncmap (a thread for each element that waits). The worker remembers how quick the
    elements were, by the map's ``key`` and by the function, so that a later batch of quick
    elements starts in chunks at once, and the first batch of a later map of a function that
    was quick starts inline an element at a time (no thread woken: the first batch of every
    map of W2b). Any other first batch starts as an asyncmap of its first ``PROBE`` elements
    (a thread for an element that waits). An element run inline that has not returned after
    a tick of the housekeeping thread (50-100 ms) leaves the elements after it to an asyncmap
    (:func:`_run_quick`): one that waits for another of its batch is not a hang.
    """

    def __init__(self, f: Callable[..., Any], star: bool, capture: bool) -> None:
        self.f = f
        self.star = star
        self.capture = capture
        self.key = uuid.uuid4().int >> 64  # the map's (each message may carry a copy)

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
                    return Failed(pid, capture(e))

        chunk = _CHUNKS.get(self.key)
        known = chunk is not None
        inline = False
        if chunk is None:
            # the map's first batch here: a function quick in its last map here starts inline,
            # an element at a time at first (watched: see _Watch); any other, as an asyncmap
            chunk = 1
            inline = known = _quick_before(f)
        results: list[Any] = []
        while len(results) < len(batch):
            if chunk > 1 or inline:
                inline = False
                chunk = _run_quick(c, fn, batch, len(results), chunk, results)
                continue
            # not known quick: as an asyncmap (the first PROBE elements only, for a batch not
            # known slow either: the rest may go quicker)
            end = len(batch) if known else len(results) + PROBE
            known = True
            rest = iter(batch[len(results) : end])
            job = Job(c, fn, rest, DEFAULT_NTASKS, adaptive=True, max_chunk=MAX_CHUNK)
            results += job.run()
            chunk = job.chunk
            _remember(self.key, f, chunk)
        _remember(self.key, f, chunk)
        return results


class _Watch:
    """A batch running inline (:func:`_run_quick`), as the tick sees it: ``out`` grows by one as
    each element finishes. When it has not grown for a whole tick, an element is stuck (waits,
    maybe for one after it in the batch); when it grew by fewer elements than a tick holds of
    quick ones (``FAST_ITEM`` each), the elements are no longer quick (and a chunk of 256 such
    would run one after another to its end before the runner saw it). Either way, the tick
    hands the elements not started to an asyncmap on a thread of their own (``rest``,
    ``helper``)."""

    __slots__ = (
        "cluster",
        "done",
        "error",
        "fn",
        "helper",
        "it",
        "out",
        "rest",
        "results",
        "seen",
        "seen_at",
    )

    def __init__(self, cluster: Any, fn: Callable[[Any], Any], out: list[Any], it: Any) -> None:
        self.cluster = cluster
        self.fn = fn
        self.out = out
        self.it = it  # the batch's elements not started (shared with the runner's map)
        self.seen = -1  # len(out) at the last tick...
        self.seen_at = 0.0  # ...and when it was
        self.rest: list[Any] | None = None  # taken over: the elements the helper runs
        self.helper: Job | None = None
        self.results: list[Any] = []
        self.error: BaseException | None = None
        self.done: threading.Event | None = None  # made by the tick when it takes over


_WATCHED: dict[int, _Watch] = {}  # id -> the batches running inline in this process
_WATCH_LOCK = threading.Lock()
_TICKING: weakref.WeakSet[Any] = weakref.WeakSet()  # the RefCounters whose tick looks at it
_WINDOW = 0.04  # judged over this long at least (two clusters in a process tick twice as often)


def _watch_tick() -> None:
    """On the cluster's housekeeping tick: take over the inline runs stuck on an element or no
    longer quick."""
    if not _WATCHED:
        return
    now = time.monotonic()
    with _WATCH_LOCK:
        for w in list(_WATCHED.values()):
            k = len(w.out)
            if w.rest is not None or (w.seen >= 0 and now - w.seen_at < _WINDOW):
                continue  # taken over already, or seen too recently to judge
            if w.seen < 0 or (k - w.seen) * FAST_ITEM >= now - w.seen_at:
                w.seen, w.seen_at = k, now  # (first seen, or still quick)
                continue
            w.rest = list(w.it)  # (atomic: the runner waits inside an element)
            if not w.rest:
                continue
            stats["taken over"] += 1
            w.done = threading.Event()
            c, rest = w.cluster, iter(w.rest)
            w.helper = Job(c, w.fn, rest, DEFAULT_NTASKS, adaptive=True, max_chunk=MAX_CHUNK)
            c.executor.submit(functools.partial(_help, w), main_ok=False)


def _help(w: _Watch) -> None:
    try:
        w.results = w.helper.run()  # type: ignore[union-attr]
    except BaseException as e:
        w.error = e
    finally:
        w.done.set()  # type: ignore[union-attr]


def _run_quick(
    c: Any, fn: Callable[[Any], Any], batch: list[Any], start: int, chunk: int, out: list[Any]
) -> int:
    """Run the elements of ``batch`` from ``start`` on, into ``out``, on this thread, in chunks
    that double while the elements stay quick (under ``FAST_ITEM`` each), as a runner of
    ``Job`` would without its lock and bookkeeping; stop after a chunk that was not quick (the
    rest is for a ``Job``, which starts a thread for each element that waits). The chunk size
    to go on with (1: not quick).

    Watched meanwhile (:class:`_Watch`): an element that has not returned after a tick of the
    housekeeping thread (``refcount.FLUSH_INTERVAL``, 50-100 ms), or elements that were not
    quick over a tick, leave the elements after them to an asyncmap on another thread, so that
    one waiting for another of the batch does not wait for ever, and slow ones do not run one
    after another; costs nothing while the elements return."""
    it = itertools.islice(batch, start, None)
    clock = time.perf_counter
    n = len(batch)
    w = _Watch(c, fn, out, it)
    _watch(c, w)
    quick = True
    try:
        while len(out) < n and w.rest is None:
            k = len(out)
            t0 = clock()
            out += map(fn, itertools.islice(it, chunk))
            if clock() - t0 >= FAST_ITEM * max(1, len(out) - k):
                quick = False
                break
            chunk = min(2 * chunk, MAX_CHUNK)
    except BaseException:
        with _WATCH_LOCK:
            _WATCHED.pop(id(w), None)
        if w.helper is not None:
            w.helper._stop()
        raise
    with _WATCH_LOCK:
        _WATCHED.pop(id(w), None)
    if not w.rest:  # (taken over once all had started: nothing for a helper)
        return chunk if quick else 1
    try:
        w.done.wait()  # type: ignore[union-attr]  # the helper runs the rest
    except BaseException:
        w.helper._stop()  # type: ignore[union-attr]
        raise
    if w.error is not None:
        raise w.error
    out += w.results
    return 1


def _watch(c: Any, w: _Watch) -> None:
    """Register ``w`` for the tick (the first time, the cluster's housekeeping thread is
    asked to call :func:`_watch_tick` at every tick)."""
    refcount = c.refcount
    if refcount not in _TICKING:
        with _WATCH_LOCK:
            first = refcount not in _TICKING
            _TICKING.add(refcount)
        if first:
            refcount.add_tick(_watch_tick)
    with _WATCH_LOCK:
        _WATCHED[id(w)] = w


def _quick_before(f: Any) -> bool:
    """Whether ``f``'s elements were quick in its last map here (the worker remembers a function
    by the object itself, weakly: one imported by name is the same object in every map; one
    that cannot be weakly referenced is not remembered)."""
    try:
        return _FUNCTIONS.get(f, 1) > 1
    except TypeError:
        return False


def _remember(key: int, f: Any, chunk: int) -> None:
    with _CHUNKS_LOCK:
        _CHUNKS.pop(key, None)
        _CHUNKS[key] = chunk  # (the newest last)
        while len(_CHUNKS) > REMEMBERED_MAPS:
            del _CHUNKS[next(iter(_CHUNKS))]
        try:
            _FUNCTIONS[f] = chunk
        except TypeError:  # (not weakly referenceable: not remembered)
            pass
