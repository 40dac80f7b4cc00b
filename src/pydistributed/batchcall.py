"""What runs a batch of ``pmap(..., batch_size=n)`` on a worker: :class:`BatchCall`, a local
asyncmap of the map's function over the batch's elements, with a quick path for elements that
take microseconds (most of a batch's cost was the asyncmap's own bookkeeping), and
:class:`Failed`, an element of a batch that raised, when pmap handles errors."""

from __future__ import annotations

import itertools
import time
import weakref
from collections.abc import Callable
from typing import Any

from .asyncmap import DEFAULT_NTASKS, FAST_ITEM, MAX_CHUNK, Job
from .cluster import current_cluster
from .errors import CapturedException, capture

__all__ = ["QUICK_START", "BatchCall", "Failed"]

# On a worker: the functions whose elements ran quick in pmap's last batch of them (a hint: a
# batch of them starts in chunks of QUICK_START, not with a thread for its first element).
_QUICK: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
QUICK_START = 16


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
    as an asyncmap (a thread for each element that waits). This object remembers how quick its
    last batch's elements were, and the worker remembers it of ``f`` for the next map (weakly):
    a batch of quick elements after another starts in chunks, instead of starting a second
    thread for its first element.
    """

    def __init__(self, f: Callable[..., Any], star: bool, capture: bool) -> None:
        self.f = f
        self.star = star
        self.capture = capture
        self.chunk = 1

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

        chunk = self.chunk
        if chunk == 1 and _was_quick(f):
            chunk = QUICK_START
        results: list[Any] = []
        if chunk > 1:
            chunk = _run_quick(fn, batch, chunk, results)
        if len(results) < len(batch):
            rest = iter(batch[len(results) :])
            job = Job(c, fn, rest, DEFAULT_NTASKS, adaptive=True, max_chunk=MAX_CHUNK, chunk=chunk)
            results += job.run()
            chunk = job.chunk
        self.chunk = chunk
        _remember(f, chunk)
        return results


def _run_quick(fn: Callable[[Any], Any], batch: list[Any], chunk: int, out: list[Any]) -> int:
    """Run the elements of ``batch`` into ``out`` on this thread, in chunks that double while
    the elements stay quick (under ``FAST_ITEM`` each), as a runner of ``Job`` would, without
    its lock and bookkeeping; stop after a chunk that was not quick (the rest is for a
    ``Job``, which starts threads for elements that wait). The chunk size to go on with."""
    it = iter(batch)
    clock = time.perf_counter
    n = len(batch)
    while len(out) < n:
        k = len(out)
        t0 = clock()
        out += map(fn, itertools.islice(it, chunk))
        if clock() - t0 >= FAST_ITEM * (len(out) - k):
            return 1
        chunk = min(2 * chunk, MAX_CHUNK)
    return chunk


def _was_quick(f: Any) -> bool:
    try:
        return _QUICK.get(f, False)
    except TypeError:  # not hashable, or no weak reference to it
        return False


def _remember(f: Any, chunk: int) -> None:
    try:
        if chunk >= MAX_CHUNK:
            _QUICK[f] = True
        elif chunk == 1:
            _QUICK.pop(f, None)
    except TypeError:
        pass
