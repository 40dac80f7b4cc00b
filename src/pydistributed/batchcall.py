"""What runs a batch of ``pmap(..., batch_size=n)`` on a worker: :class:`BatchCall`, a local
asyncmap of the map's function over the batch's elements, with a quick path for elements that
take microseconds (most of a batch's cost was the asyncmap's own bookkeeping), and
:class:`Failed`, an element of a batch that raised, when pmap handles errors."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
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
REMEMBERED_MAPS = 64
PROBE = 16  # a batch of a map not known quick: its first elements as an asyncmap, to find out


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
    as an asyncmap (a thread for each element that waits). The first batch of a map on a
    worker starts as an asyncmap of its first ``PROBE`` elements (a thread for an element
    that waits, as always); the worker remembers how quick the elements were, by the map's
    ``key``, so that a later batch of quick elements starts in chunks at once.
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

        chunk = _CHUNKS.get(self.key, 1)
        results: list[Any] = []
        while len(results) < len(batch):
            if chunk > 1:
                chunk = _run_quick(fn, batch, len(results), chunk, results)
                continue
            # not known quick: as an asyncmap (the first PROBE elements only, for a batch not
            # known slow either: the rest may go quicker)
            end = len(batch) if self.key in _CHUNKS else len(results) + PROBE
            rest = iter(batch[len(results) : end])
            job = Job(c, fn, rest, DEFAULT_NTASKS, adaptive=True, max_chunk=MAX_CHUNK)
            results += job.run()
            chunk = job.chunk
            _remember(self.key, chunk)
        _remember(self.key, chunk)
        return results


def _run_quick(
    fn: Callable[[Any], Any], batch: list[Any], start: int, chunk: int, out: list[Any]
) -> int:
    """Run the elements of ``batch`` from ``start`` on, into ``out``, on this thread, in chunks
    that double while the elements stay quick (under ``FAST_ITEM`` each), as a runner of
    ``Job`` would without its lock and bookkeeping; stop after a chunk that was not quick (the
    rest is for a ``Job``, which starts a thread for each element that waits). The chunk size
    to go on with (1: not quick)."""
    it = itertools.islice(batch, start, None)
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


def _remember(key: int, chunk: int) -> None:
    with _CHUNKS_LOCK:
        _CHUNKS.pop(key, None)
        _CHUNKS[key] = chunk  # (the newest last)
        while len(_CHUNKS) > REMEMBERED_MAPS:
            del _CHUNKS[next(iter(_CHUNKS))]
