"""What a map's elements and outcomes mean, for ``pmap`` and ``imap``: batches, ``on_error``,
retries, progress; the elements themselves run on ``pipeline.Pipeline`` (on the workers) or on
``asyncmap.Job`` (here, ``distributed=False``).

An element's outcome (:meth:`MapPolicy.outcome`): a value is the element's result; an error
goes through :meth:`MapPolicy.failure` (Julia's ``retry(delays, check)`` around ``on_error``,
one step at a time): ``on_error`` runs first and what it returns is the result; else, while
delays remain and ``retry_check`` agrees, the element is sent again after the next delay, to
whichever worker has room first; else the map stops with the error. With ``batch_size > 1`` an
element of the pipeline is a batch, run on the worker by a local ``asyncmap``
(:class:`BatchCall`); when errors are handled, a batch's failed elements come back as
:class:`Failed` and are retried alone, and a batch that failed as a whole (a dead worker) has
each of its elements retried.
"""

from __future__ import annotations

import itertools
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import timeouts
from .asyncmap import INTERRUPT_GRACE
from .batchcall import BatchCall, Failed
from .cluster import Cluster
from .errors import RemoteException, strip_internal
from .funccache import FunctionCache
from .pipeline import Dropped, Pipeline
from .workerpool import AbstractWorkerPool, CachingPool

__all__ = [
    "AUTO_BATCHES_PER_WORKER",
    "AUTO_FIRST_BATCH",
    "AUTO_MAX_BATCH",
    "BatchCall",
    "MapPolicy",
    "Progress",
    "Run",
    "auto_size",
    "auto_sizes",
    "check_batch_size",
    "make_batches",
    "reiterable_delays",
]

log = logging.getLogger("pydistributed.pmap")

# batch_size="auto" (see auto_sizes): about this many batches per worker (as multiprocessing's
# map; Julia's batchsplit makes at least 3 per worker but of at most 100 elements, which costs
# a round trip per 100 elements: far too slow for tiny tasks here)...
AUTO_BATCHES_PER_WORKER = 4
AUTO_MAX_BATCH = 10_000  # ...of at most this many elements;
AUTO_FIRST_BATCH = 100  # an input of unknown length starts with batches of this many

_END: Any = object()

Run = tuple[int, list[Any]]
"""Results of consecutive elements: the index of the first, and the values."""


def _unwrap(e: BaseException) -> BaseException:
    """The exception that ``f`` raised: a RemoteException's original one."""
    if isinstance(e, RemoteException):
        return e.captured.exc
    return e


def reiterable_delays(retry_delays: Iterable[float], name: str = "pmap") -> Iterable[float]:
    """Each element retries with a fresh iteration of the delays: a one-shot iterator (a
    generator) is read once, into a tuple. The delays of a list or tuple (and of a one-shot
    iterator) are checked now; those of another iterable (an ``ExponentialBackOff``, one of
    your own, possibly endless) are not read ahead, and not checked.

    Raises:
        TypeError: ``retry_delays`` is not iterable, or a delay is not a number.
        ValueError: a delay is negative or NaN.
    """
    if retry_delays is None:
        return ()
    if not isinstance(retry_delays, Iterable) or isinstance(retry_delays, (str, bytes)):
        raise TypeError(
            f"{name}(): retry_delays must be an iterable of delays in seconds (a list, an "
            f"ExponentialBackOff), not {type(retry_delays).__name__} ({retry_delays!r})"
        )
    if iter(retry_delays) is retry_delays:
        retry_delays = tuple(retry_delays)
    if isinstance(retry_delays, (list, tuple)):
        for delay in retry_delays:
            check_delay(delay, name)
    return retry_delays


def check_delay(delay: Any, name: str = "pmap") -> float:
    """``delay``, a delay of ``retry_delays``, if it is a number of seconds >= 0.

    Raises:
        TypeError, ValueError: it is not (naming ``retry_delays`` and the delay).
    """
    what = f"{name}(): a delay of retry_delays"
    t = timeouts.check_seconds(delay, what)
    if t < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, not {delay!r}")
    return t


def check_flag(value: Any, what: str) -> bool:
    """``value`` if it is a ``bool`` (``what`` names the argument in the error).

    Raises:
        TypeError: it is not (``pmap(..., distributed="no")`` would be true).
    """
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {type(value).__name__} ({value!r})")
    return value


def check_batch_size(batch_size: Any) -> int | str:
    if batch_size == "auto" and isinstance(batch_size, str):
        return "auto"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise ValueError(f'batch_size must be a positive int or "auto", not {batch_size!r}')
    if batch_size < 1:
        raise ValueError(f'batch_size must be a positive int or "auto", not {batch_size}')
    return batch_size


def auto_size(n: int, nworkers: int) -> int:
    """``batch_size="auto"`` for ``n`` elements: about AUTO_BATCHES_PER_WORKER batches per
    worker, of at most AUTO_MAX_BATCH elements."""
    return max(1, min(AUTO_MAX_BATCH, -(-n // (AUTO_BATCHES_PER_WORKER * max(1, nworkers)))))


def auto_sizes(
    elements: Iterator[Any], total: int | None, nworkers: int
) -> tuple[list[Any], Iterator[int]]:
    """The sizes of the batches for ``batch_size="auto"``, and the elements read to decide.

    Of a known length, every batch has :func:`auto_size`. Of an unknown length, up to
    ``AUTO_BATCHES_PER_WORKER * nworkers * AUTO_FIRST_BATCH`` elements are read ahead (Julia's
    ``batchsplit`` peeks so too): if the input ends there, its length is known; else the
    batches start at AUTO_FIRST_BATCH and double up to AUTO_MAX_BATCH.
    """
    if total is not None:
        return [], itertools.repeat(auto_size(total, nworkers))
    peek = AUTO_BATCHES_PER_WORKER * max(1, nworkers) * AUTO_FIRST_BATCH
    head = list(itertools.islice(elements, peek))
    if len(head) < peek:
        return head, itertools.repeat(auto_size(len(head), nworkers))
    growing = itertools.chain(
        itertools.takewhile(
            lambda s: s < AUTO_MAX_BATCH,
            (AUTO_FIRST_BATCH << k for k in itertools.count()),
        ),
        itertools.repeat(AUTO_MAX_BATCH),
    )
    return head, growing


def make_batches(
    head: list[Any], rest: Iterator[Any], sizes: Iterator[int], seq: list[Any] | None = None
) -> Iterator[list[Any]]:
    """The batches: lists of ``sizes`` elements of ``head`` then ``rest``; or slices of
    ``seq``, the list that ``rest`` iterates, when it is given (and ``head`` is empty)."""
    if seq is not None and not head:
        start = 0
        for size in sizes:
            if start >= len(seq):
                return
            yield seq[start : start + size]
            start += size
        return
    it = itertools.chain(head, rest)
    for size in sizes:
        batch = list(itertools.islice(it, size))
        if not batch:
            return
        yield batch


class Progress:
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


class MapPolicy:
    """One call of pmap or imap: its settings, and what each element's outcome means."""

    def __init__(
        self,
        cluster: Cluster,
        f: Callable[..., Any],
        pool: AbstractWorkerPool,
        star: bool,
        on_error: Callable[[BaseException], Any] | None,
        retry_delays: Iterable[float],
        retry_check: Callable[[Any, BaseException], Any] | None,
        progress: Progress,
    ) -> None:
        self.f = f
        self.pool = pool
        self.star = star
        self.on_error = on_error
        self.delays = retry_delays
        self.retry = next(iter(retry_delays), _END) is not _END
        self.handles = on_error is not None or self.retry
        self.check = retry_check
        self.progress = progress
        self.cluster = cluster
        self.stopping = threading.Event()
        own = pool.cache if isinstance(pool, CachingPool) else None
        self.cache = own if own is not None else FunctionCache(cluster)
        self.own_cache = own is None
        self.engine: Pipeline | None = None
        self._attempts: dict[Any, list[Any]] = {}  # token -> [delays to come, next delay]
        self._starts: dict[int, int] = {}  # batch number -> index of its first element
        self._partial: dict[int, list[Any]] = {}  # batch number -> [start, results, missing]
        self._resolved: list[Run] = []  # elements on_error gave a value, not yet handed on

    # -- on this process (distributed=False) -----------------------------------------------

    def handled(self, attempt: Callable[[], Any]) -> Any:
        """Run ``attempt`` with on_error and retries (Julia's ``retry(delays, check)`` around
        ``on_error``): on_error runs first, and if it returns, its value is the result; else
        the error is retried after the next delay, if ``retry_check`` agrees."""
        it = iter(self.delays)
        delay = next(it, _END)
        while True:
            try:
                return attempt()
            except Exception as e:
                err: BaseException = e
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

    def local_element(self, item: Any) -> Any:
        f = self.f
        args = item if self.star else (item,)
        if not self.handles:
            value = f(*args)
        else:
            value = self.handled(lambda: f(*args))
        self.progress.update(1)
        return value

    # -- on the workers: the elements' outcomes --------------------------------------------

    def elements(self, items: Iterator[Any]) -> Iterator[tuple[Any, Any, tuple[Any, ...]]]:
        f = self.f
        if self.star:
            return ((i, f, item) for i, item in enumerate(items))
        return ((i, f, (item,)) for i, item in enumerate(items))

    def batches(
        self, runner: BatchCall, batches: Iterator[list[Any]]
    ) -> Iterator[tuple[Any, Any, tuple[Any, ...]]]:
        start = 0
        for b, batch in enumerate(batches):
            self._starts[b] = start
            start += len(batch)
            yield b, runner, (batch,)

    def outcome(self, token: Any, f: Any, args: tuple[Any, ...], ok: bool, value: Any) -> list[Run]:
        """What an outcome gives: the runs of elements now done."""
        if type(token) is tuple:  # an element of a batch, run alone after a failure
            if ok:
                return self._fill(token, value)
            self.failure(token, f, args, value)
            return []
        if not isinstance(f, BatchCall):
            if ok:
                self.progress.update(1)
                return [(token, [value])]
            self.failure(token, f, args, value)
            return []
        batch = args[0]
        start = self._starts.pop(token)
        if ok:
            # (Failed only comes back when errors are handled: the batch captures them)
            failed = [k for k, r in enumerate(value) if type(r) is Failed] if self.handles else []
            if not failed:
                self.progress.update(len(batch))
                return [(start, value)]
            self._partial[token] = [start, value, len(failed)]
            for k in failed:
                err = RemoteException(value[k].pid, value[k].captured)
                self.failure((token, k), self.f, self._args(batch[k]), err)
            return []
        if not self.handles or isinstance(value, Dropped):
            self.failure(token, f, args, value)
            return []
        # the whole batch failed (a dead worker...): every element is handled alone
        self._partial[token] = [start, [None] * len(batch), len(batch)]
        for k, item in enumerate(batch):
            self.failure((token, k), self.f, self._args(item), value)
        return []

    def _args(self, item: Any) -> tuple[Any, ...]:
        return item if self.star else (item,)  # type: ignore[no-any-return]

    def _fill(self, token: tuple[int, int], value: Any) -> list[Run]:
        b, k = token
        part = self._partial[b]
        part[1][k] = value
        part[2] -= 1
        if part[2]:
            return []
        del self._partial[b]
        self.progress.update(len(part[1]))
        return [(part[0], part[1])]

    def failure(self, token: Any, f: Any, args: tuple[Any, ...], err: BaseException) -> None:
        """An element failed: on_error, then a retry after the next delay if ``retry_check``
        agrees, else the map stops with the error (as :meth:`handled`, one step at a time)."""
        engine = self.engine
        assert engine is not None
        if isinstance(err, Dropped) or engine.stopped:
            return
        if not self.handles:
            engine.fail(err)
            return
        state = self._attempts.get(token)
        if state is None:
            it = iter(self.delays)
            state = self._attempts[token] = [it, next(it, _END)]
        if self.on_error is not None:
            try:
                value = self.on_error(_unwrap(err))
            except Exception as e:
                err = e
            else:
                self._attempts.pop(token, None)
                self._resolved.extend(self._resolve(token, value))
                return
        it, delay = state
        if delay is _END:
            engine.fail(err)
            return
        if self.check is not None:
            verdict = self.check(it, _unwrap(err))
            if isinstance(verdict, tuple) and len(verdict) == 2:
                new_state, verdict = verdict
                it = state[0] = iter(new_state)
            if not verdict:
                engine.fail(err)
                return
        state[1] = next(it, _END)
        engine.retry(token, f, args, delay)

    def _resolve(self, token: Any, value: Any) -> list[Run]:
        if type(token) is tuple:
            return self._fill(token, value)
        self.progress.update(1)
        return [(token, [value])]

    def run(self, engine: Pipeline) -> Iterator[list[Run]]:
        """Drive ``engine`` to the end; the runs of elements that finish, as they finish.

        Raises:
            BaseException: the first error, once the elements running have finished;
                KeyboardInterrupt once the interrupted ones are back (INTERRUPT_GRACE at most).
        """
        self.engine = engine
        try:
            while not engine.done:
                runs: list[Run] = []
                quick = 0
                try:
                    for token, f, args, ok, value in engine.step():
                        if ok and type(token) is int and not isinstance(f, BatchCall):
                            runs.append((token, [value]))
                            quick += 1
                            continue
                        runs += self.outcome(token, f, args, ok, value)
                        if self._resolved:
                            runs += self._resolved
                            self._resolved = []
                except Exception as e:
                    engine.fail(e)
                if quick:
                    self.progress.update(quick)
                if runs:
                    yield runs
        except KeyboardInterrupt:
            self.stopping.set()
            engine.interrupt(INTERRUPT_GRACE)
            raise
        except GeneratorExit:  # the caller of imap stopped early
            self.stopping.set()
            engine.fail(GeneratorExit())
            engine.drain(INTERRUPT_GRACE)
            raise
        finally:
            self.stopping.set()
            engine.close()
        if engine.error is not None:
            raise strip_internal(engine.error)

    def close(self) -> None:
        if self.own_cache:
            try:
                self.cache.clear()
            except Exception:
                log.exception("pmap: dropping the function on the workers failed")
