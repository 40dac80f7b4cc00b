"""Julia's ``Distributed`` macros as functions: ``spawnat``, ``spawn``, ``fetchfrom``,
``everywhere`` and ``distributed`` (Julia's ``macros.jl``).

Each takes a callable where Julia takes an expression::

    @spawnat p expr                      spawnat(p, f, *args, **kwargs) -> Future
    @spawnat :any expr / @spawn expr     spawnat("any", f, ...) / spawn(f, ...) -> Future
    @fetchfrom p expr                    fetchfrom(p, f, *args, **kwargs) -> value
    @everywhere [procs] expr             everywhere(code_or_f, *args, procs=None, **bindings)
    @distributed [reducer] for x in c    distributed(f, c, reducer=None)

``spawnat`` and ``spawn`` return the ``Future`` of a ``remotecall``, which registers it with
the enclosing ``sync()`` blocks of the calling thread. ``distributed`` without a reducer
returns a ``Task`` registered the same way; with a reducer it blocks and returns the result.
``everywhere`` blocks until every process is done, and registers nothing.

``spawn`` picks the workers round-robin, as Julia's ``nextproc()``: ``n`` calls on ``n``
workers visit each once. The counter belongs to the current ``Cluster`` (a ``ClusterVar``),
not to this module.

How ``distributed`` splits its collection (Julia's ``splitrange``)::

    splitrange(10, 3) -> [range(0, 4), range(4, 7), range(7, 10)]   sizes 4, 3, 3
    splitrange(2, 4)  -> [range(0, 1), range(1, 2)]                  never an empty part

Part ``i`` goes to the ``i``-th worker of ``workers()``; it travels as a slice of the
collection (a ``range`` stays a ``range``), never the whole collection.
"""

from __future__ import annotations

import functools
import hashlib
import linecache
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from .cluster import ClusterVar, current_cluster
from .errors import CompositeException
from .ids import check_pid
from .remotecall import remotecall, remotecall_fetch
from .remoteref import Future
from .tasks import Task, register_sync, sync

__all__ = ["distributed", "everywhere", "fetchfrom", "nextproc", "spawn", "spawnat", "splitrange"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


# -- spawn, spawnat, fetchfrom -------------------------------------------------------------


class _RoundRobin:
    """The per-process counter of :func:`nextproc` (Julia's ``nextidx``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def take(self) -> int:
        with self._lock:
            idx = self._next
            self._next += 1
        return idx


ROUND_ROBIN: ClusterVar[_RoundRobin] = ClusterVar("macros.round_robin", _RoundRobin)


def nextproc() -> int:
    """The next worker in round-robin order (Julia's ``nextproc()``); ``1`` with no workers.

    Consecutive calls walk through ``workers()`` in order and start again at the first, so
    ``n`` calls on ``n`` workers return each worker once. The position is kept per cluster.
    """
    c = current_cluster()
    ws = c.registry.worker_ids()
    return ws[ROUND_ROBIN.get(c).take() % len(ws)]


def _where(p: Any) -> Any:
    """``"any"`` -> the next worker round-robin; anything else goes to ``remotecall`` as is."""
    if isinstance(p, str):
        if p == "any":
            return nextproc()
        raise ValueError(f'a process id or "any" was expected, not {p!r}')
    return p


def spawnat(p: int | str, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Run ``f(*args, **kwargs)`` on process ``p``; return a :class:`Future` at once.

    Julia's ``@spawnat p expr``. With ``p == "any"`` the process is chosen round-robin, as
    :func:`spawn` does. The Future is registered with every enclosing ``sync()`` block of the
    calling thread, which waits for it on exit. An error of ``f`` is raised by ``fetch`` (or
    by the ``sync()`` block) as a ``RemoteException`` naming the process.

    Args:
        p: a process id, or ``"any"``.
        f: the callable to run; positional-only, so keywords named ``p`` or ``f`` go to it.
        *args: positional arguments for ``f``.
        **kwargs: keyword arguments for ``f``.

    Returns:
        The Future of the result.

    Raises:
        ValueError: ``p`` is a string other than ``"any"``.
        TypeError: ``p`` is neither an int nor a string.
        pickle.PicklingError: ``f`` or an argument could not be pickled (nothing was sent).
        ProcessExitedException: the process has exited.

    Example:
        >>> fut = spawnat(2, pow, 2, 10)
        >>> fut.fetch()
        1024
    """
    return remotecall(f, _where(p), *args, **kwargs)


def spawn(f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
    """Run ``f(*args, **kwargs)`` on the next worker, round-robin; return a Future at once.

    Julia's ``@spawn expr`` (``@spawnat :any expr``). With no workers it runs on process 1.
    Registered with the enclosing ``sync()`` blocks like :func:`spawnat`.

    Args:
        f: the callable to run; positional-only.
        *args: positional arguments for ``f``.
        **kwargs: keyword arguments for ``f``.

    Returns:
        The Future of the result.

    Example:
        >>> [spawn(myid).fetch() for _ in range(3)]   # with workers 2 and 3
        [2, 3, 2]
    """
    return remotecall(f, nextproc(), *args, **kwargs)


def fetchfrom(p: int | str, f: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``f(*args, **kwargs)`` on process ``p`` and return its value (Julia's ``@fetchfrom``).

    The same as ``spawnat(p, f, ...).fetch()`` in one message each way. ``p`` may also be
    ``"any"`` (the next worker round-robin), which Julia's macro does not accept.

    Args:
        p: a process id, or ``"any"``.
        f: the callable to run; positional-only.
        *args: positional arguments for ``f``.
        **kwargs: keyword arguments for ``f``.

    Returns:
        What ``f`` returned.

    Raises:
        RemoteException: ``f`` raised there (``.pid`` names the process).
        ValueError: ``p`` is a string other than ``"any"``.
        ProcessExitedException: the process has exited, or exits before answering.

    Example:
        >>> fetchfrom(2, myid)
        2
    """
    return remotecall_fetch(f, _where(p), *args, **kwargs)


# -- everywhere ----------------------------------------------------------------------------


def _source_name(code: str) -> str:
    """A file name for ``code`` in tracebacks, the same for the same text on every process."""
    digest = hashlib.sha1(code.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"<everywhere-{digest}>"


def _compile(code: str) -> Any:
    """Compile ``code`` and register its lines so that tracebacks and ``inspect`` show them."""
    filename = _source_name(code)
    compiled = compile(code, filename, "exec")
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    return compiled


def _everywhere_here(code: Any, args: tuple[Any, ...], bindings: dict[str, Any]) -> None:
    """Run one process's part of :func:`everywhere` (called there by ``remotecall_fetch``)."""
    namespace = sys.modules["__main__"].__dict__
    namespace.update(bindings)
    if isinstance(code, str):
        exec(_compile(code), namespace)
    else:
        code(*args)


def everywhere(
    code: str | Callable[..., Any],
    /,
    *args: Any,
    procs: int | Iterable[int] | None = None,
    **bindings: Any,
) -> None:
    """Run code in ``__main__`` of every process, in parallel (Julia's ``@everywhere``).

    A string is executed as a module body in ``__main__`` of each process: its imports,
    functions, classes and variables become globals there, usable by later calls (look them
    up through ``__main__``) and later ``everywhere`` strings. ``bindings`` are set as globals
    there first, as Julia's ``$x`` interpolation does. A callable is called with ``*args`` on
    each process instead (the bindings are still set first).

    The calls to the other processes are all started, then this process's own part runs
    concurrently with them; ``everywhere`` returns when every process is done. Nothing is
    registered with an enclosing ``sync()``: ``everywhere`` has already waited.

    Args:
        code: Python source text, or a callable.
        *args: positional arguments for a callable ``code`` (a string takes none).
        procs: the process ids to run on: one id or several (in order, each listed time);
            default ``procs()``, this process included.
        **bindings: globals to set in ``__main__`` of each process before running ``code``.

    Raises:
        SyntaxError: ``code`` is a string that does not compile (raised here, nothing sent).
        TypeError: ``args`` were given with a string, or ``procs`` is not ints.
        ValueError: on the master, an id in ``procs`` that no process ever had; nothing ran.
        CompositeException: some processes failed: one member per failed process, in the
            order of ``procs``, each a ``RemoteException`` whose ``.pid`` names the process
            (this process's own failure too, as ``RemoteException(myid(), ...)``), or the
            error of sending to it (a ``PicklingError``, a ``ProcessExitedException``). It is
            shown one line per failure, below the remote traceback of the first (its cause).

    Example:
        >>> everywhere("import math\\ndef hyp(a, b):\\n    return math.hypot(a, b)")
        >>> remotecall_fetch(lambda: __import__("__main__").hyp(3, 4), 2)
        5.0
        >>> everywhere("scale = factor * 2", factor=21)   # scale == 42 on every process
    """
    if isinstance(code, str):
        if args:
            raise TypeError("everywhere: positional arguments go with a callable, not a string")
        _compile(code)  # a syntax error is the caller's, raised once, here
    elif not callable(code):
        raise TypeError(f"everywhere takes source text or a callable, not {type(code).__name__}")
    c = current_cluster()
    pids = _pid_list(c.registry.proc_ids() if procs is None else procs)
    for p in pids:  # an id that names no process is the caller's mistake: nothing runs
        c.registry.check_exists(p, "everywhere(procs=...)")
    me = c.myid
    # Start the other processes first, so that our own part does not delay their messages
    # (Julia's remotecall_eval runs the local part last for the same reason). Each call runs
    # on a Task of its own: sent at once, waited for here, registered with no sync() block.
    order = [i for i, p in enumerate(pids) if p != me] + [i for i, p in enumerate(pids) if p == me]
    tasks: dict[int, Task[Any]] = {}
    for i in order:
        tasks[i] = Task(remotecall_fetch, _everywhere_here, pids[i], code, args, bindings)
        tasks[i].start()
    failures = [e for e in (_failure(tasks[i]) for i in range(len(pids))) if e is not None]
    if failures:
        n, total = len(failures), len(pids)
        raise _short_report(failures, f"everywhere: {n} of {total} calls failed")


def _short_report(failures: list[Exception], message: str) -> CompositeException:
    """The failures as a CompositeException, each member shown as itself: a RemoteException
    reads ``On worker N: Type: message`` and its remote traceback. Each member loses its local
    traceback and context (the task's plumbing that waited for it)."""
    for e in failures:
        e.__traceback__ = None
        e.__cause__ = None
        e.__suppress_context__ = True
    return CompositeException(failures, message)


def _failure(task: Task[Any]) -> Exception | None:
    """Wait for ``task``; return its exception instead of raising it (``None``: success)."""
    try:
        task.wait()
    except Exception as e:
        return e
    return None


def _pid_list(procs: int | Iterable[int]) -> list[int]:
    if isinstance(procs, int) and not isinstance(procs, bool):
        return [procs]
    if isinstance(procs, (str, bytes)) or not isinstance(procs, Iterable):
        raise TypeError(f"procs must be a process id or ids, not {type(procs).__name__}")
    return [check_pid(p, "procs to be process ids") for p in procs]


# -- distributed ---------------------------------------------------------------------------


def splitrange(n_items: int, n_parts: int) -> list[range]:
    """Split the indices ``0 .. n_items-1`` into contiguous parts (Julia's ``splitrange``).

    The parts' sizes differ by at most one, the larger ones first. There are ``n_parts``
    parts, or ``n_items`` of size one when there are fewer items than parts: no part is
    empty, and no items means no parts.

    Args:
        n_items: how many items to split; ``>= 0``.
        n_parts: how many parts at most; ``>= 1``.

    Returns:
        The parts as ranges of indices, in order, covering ``range(n_items)`` exactly.

    Raises:
        ValueError: ``n_items < 0`` or ``n_parts < 1``.

    Example:
        >>> splitrange(10, 3)
        [range(0, 4), range(4, 7), range(7, 10)]
    """
    if n_items < 0:
        raise ValueError(f"splitrange: n_items must be >= 0, got {n_items}")
    if n_parts < 1:
        raise ValueError(f"splitrange: n_parts must be >= 1, got {n_parts}")
    each, extras = divmod(n_items, n_parts)
    nchunks = n_parts if each > 0 else extras
    parts: list[range] = []
    lo = 0
    for i in range(nchunks):
        hi = lo + each + (1 if i < extras else 0)
        parts.append(range(lo, hi))
        lo = hi
    return parts


def _as_sequence(c: Iterable[T]) -> Sequence[T]:
    """``c`` itself when it can be sliced (a range, a list, a NumPy array), else a list."""
    if isinstance(c, (range, Sequence)):
        return c
    if (
        hasattr(c, "__len__")
        and hasattr(c, "__getitem__")
        and not isinstance(c, (Mapping, str, bytes))
    ):
        return c  # type: ignore[return-value]  # sliceable array-like (NumPy)
    return list(c)


def _split(c: Iterable[T], n_parts: int) -> list[Sequence[T]]:
    """The parts of ``c`` for ``n_parts`` workers, each a slice of ``c`` (see ``splitrange``)."""
    seq = _as_sequence(c)
    ranges = splitrange(len(seq), n_parts)
    try:
        return [seq[r.start : r.stop] for r in ranges]
    except TypeError:  # a sequence without slices (a deque): slice a copy
        items = list(seq)
        return [items[r.start : r.stop] for r in ranges]


def _run_part(f: Callable[[T], Any], part: Iterable[T]) -> None:
    """One worker's part of ``distributed`` without a reducer."""
    for x in part:
        f(x)


def _reduce_part(f: Callable[[T], R], reducer: Callable[[R, R], R], part: Iterable[T]) -> R:
    """One worker's part of ``distributed`` with a reducer: its results reduced in order."""
    return functools.reduce(reducer, map(f, part))


def _pfor(
    f: Callable[[T], Any], parts: list[Sequence[T]], pids: list[int], sent: threading.Event
) -> None:
    """The body of the Task that ``distributed`` returns: start every part, wait for all."""
    try:
        with sync():
            try:
                for pid, part in zip(pids, parts, strict=False):  # parts may be fewer
                    remotecall(_run_part, pid, f, part)
            finally:
                sent.set()
    except CompositeException as e:
        n = len(e.exceptions)
        raise CompositeException(
            e.exceptions, f"distributed: {n} of {len(parts)} parts failed"
        ) from None


@overload
def distributed(f: Callable[[T], Any], c: Iterable[T], reducer: None = None) -> Task[None]: ...


@overload
def distributed(f: Callable[[T], R], c: Iterable[T], reducer: Callable[[R, R], R]) -> R: ...


def distributed(
    f: Callable[[T], Any], c: Iterable[T], reducer: Callable[[Any, Any], Any] | None = None
) -> Any:
    """Call ``f(x)`` for each ``x`` of ``c``, split over the workers (Julia's ``@distributed``).

    ``c`` is split into ``nworkers()`` contiguous parts as :func:`splitrange` does (sizes
    differing by at most one, the larger first; fewer parts when ``c`` is shorter); the
    ``i``-th worker gets part ``i`` as a slice of ``c`` (a ``range`` stays a ``range``) and
    calls ``f`` on each element in order. A ``range``, a sequence or an array-like is sliced;
    any other iterable is first made a list. With no workers, process 1 does it all.

    With a ``reducer``: each worker reduces its part's results with ``reducer(a, b)`` from
    left to right (``functools.reduce``), this process reduces the parts' results in order,
    and the result is returned once every part is done.

    Without one: returns at once a :class:`Task` covering all parts, registered with the
    enclosing ``sync()`` blocks; ``with sync(): distributed(f, c)`` waits for every part. The
    parts have been sent when it returns, so later calls to the same workers arrive after
    them (and may run alongside them, as any two calls may).
    ``task.wait()`` raises a ``CompositeException`` of the failed parts'
    ``RemoteException``\\ s (so a ``sync()`` block raises it inside its own, as Julia nests
    them).

    Args:
        f: called with one element at a time, on the workers; its results are dropped unless
            there is a reducer.
        c: the collection.
        reducer: a function of two results returning one, e.g. ``operator.add``.

    Returns:
        The reduced result with a reducer; otherwise the Task.

    Raises:
        ValueError: with a reducer, ``c`` is empty (as in Julia: reducing an empty
            collection is not allowed, there is no initial value).
        RemoteException: with a reducer, a part failed: the error of the first failed part,
            in order, raised once every part has finished.

    Example:
        >>> distributed(lambda i: 1, range(100), operator.add)
        100
        >>> with sync():
        ...     distributed(print, range(4))
    """
    pids = current_cluster().registry.worker_ids()
    parts = _split(c, len(pids))
    if reducer is None:
        sent = threading.Event()
        task: Task[None] = register_sync(Task(_pfor, f, parts, pids, sent).start())
        sent.wait()  # bounded by sending, which remotecall does in its caller anyway
        return task
    if not parts:
        raise ValueError(
            "distributed: reducing over an empty collection is not allowed (no initial value)"
        )
    tasks = [
        Task(remotecall_fetch, _reduce_part, pid, f, reducer, part).start()
        for pid, part in zip(pids, parts, strict=False)  # parts may be fewer
    ]
    errors = [_failure(t) for t in tasks]  # wait for every part before raising
    for err in errors:
        if err is not None:
            raise err
    return functools.reduce(reducer, [t.fetch() for t in tasks])
