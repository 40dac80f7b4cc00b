"""Worker pools: ``AbstractWorkerPool``, ``WorkerPool``, ``CachingPool``, ``default_worker_pool``,
``remote``.

A pool is a set of worker ids (its *members*) and a first-in, first-out queue of the members
that are free; ``take`` waits for a free member and hands it out, ``put`` gives it back; a
pool never hands out a worker that has exited (``poolstate.py`` has the rules). Every pool is a
``remotecall.WorkerSource``: ``remotecall`` & co., given a pool in place of a pid, take a
worker, call, and put it back (see ``remotecall.py``).

The default pool (``default_worker_pool()``) follows ``addprocs``/``rmprocs`` without hooks,
and with no workers hands out process 1 (the master works) and ``workers`` is ``[1]``. A worker
process's default pool is the master's, reached remotely.

Where a pool lives. A pool's state is kept by its *home*: a ``PoolState`` on the process that
made the pool. A pool sent to another process is pickled as a reference (its home process
and a unique id) and unpickled there with a :class:`_RemoteHome`, which runs every operation
(``take``, ``put``, ``push``, ``len``...) on the home process with ``remotecall_fetch``; the home
process finds the pool in a per-cluster table of weak references. If the home pool has been
garbage collected, operations on the copies raise ``RuntimeError``.

``CachingPool`` ships each function once per worker (``funccache.py``). A ``CachingPool`` sent to
another process acts on its home pool for ``take``/``put``/``clear``, but calls made there are
not cached.
"""

from __future__ import annotations

import abc
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar

from . import timeouts
from .cluster import Cluster, ClusterVar, current_cluster
from .funccache import FunctionCache
from .ids import check_pid
from .poolstate import PoolState
from .remotecall import CallForm, WorkerSource, remotecall_fetch

__all__ = [
    "AbstractWorkerPool",
    "CachingPool",
    "WorkerPool",
    "default_worker_pool",
    "remote",
]

_WORKER = "a worker id"

P = ParamSpec("P")
T = TypeVar("T")

# pool uid -> pool (weakly): how a pool's home process finds it for a copy elsewhere
_POOLS: ClusterVar[weakref.WeakValueDictionary[int, WorkerPool]] = ClusterVar(
    "workerpool.pools", weakref.WeakValueDictionary
)
# the default pool (or, on a worker, its copy of the master's)
_DEFAULT: ClusterVar[WorkerPool] = ClusterVar("workerpool.default")


# -- the abstract pool -----------------------------------------------------------------------


class AbstractWorkerPool(WorkerSource):
    """The base class of worker pools (Julia's ``AbstractWorkerPool``).

    A pool implements :meth:`push`, :meth:`put`, :meth:`take`, :meth:`isready`, ``len()`` and
    the :attr:`workers` property; it then works with ``remotecall``, ``remotecall_fetch``,
    ``remotecall_wait``, ``remote_do``, :func:`remote` and ``pmap`` in place of a pid.
    """

    @abc.abstractmethod
    def push(self, pid: int) -> AbstractWorkerPool:
        """Add worker ``pid`` to the pool (as a free worker); returns the pool."""

    @abc.abstractmethod
    def put(self, pid: int) -> int:
        """Give back worker ``pid``, taken before, so that it can be handed out again."""

    @abc.abstractmethod
    def take(self, timeout: float | None = None) -> int:
        """Wait for a free worker, mark it busy and return its id.

        Raises:
            RuntimeError: the pool has no (live) worker left.
            TimeoutError: no worker became free within ``timeout`` seconds.
        """

    @abc.abstractmethod
    def isready(self) -> bool:
        """Whether :meth:`take` would return at once."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of workers in the pool, busy or free."""

    @property
    @abc.abstractmethod
    def workers(self) -> list[int]:
        """The ids of the workers in the pool, busy or free, ascending."""

    def wait(self, timeout: float | None = None) -> AbstractWorkerPool:
        """Block until a worker is free (without taking it); returns the pool.

        Raises:
            TimeoutError: none became free within ``timeout`` seconds.
        """
        timeout = timeouts.check_timeout(timeout)
        deadline = timeouts.deadline(timeout)
        while not self.isready():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no worker of {self!r} became free within {timeouts.seconds(timeout)} s"
                )
            time.sleep(0.01)
        return self


# -- where a pool's state lives ----------------------------------------------------------------


class _RemoteHome:
    """A pool whose state lives on process ``pid``: every operation runs there."""

    default = False

    def __init__(self, pid: int, uid: int) -> None:
        self.pid = pid
        self.uid = uid

    def describe(self, name: str) -> str:
        return f"<{name} living on process {self.pid}>"

    def _at_home(self, op: Callable[..., Any], *args: Any) -> Any:
        return remotecall_fetch(op, self.pid, self.uid, *args)

    def push(self, pid: int) -> None:
        self._at_home(_push_at_home, pid)

    def put(self, pid: int) -> None:
        self._at_home(_put_at_home, pid)

    def take(self, timeout: float | None) -> int:
        return int(self._at_home(_take_at_home, timeout))

    def isready(self) -> bool:
        return bool(self._at_home(_isready_at_home))

    def wait(self, timeout: float | None) -> None:
        self._at_home(_wait_at_home, timeout)

    def workers(self) -> list[int]:
        return list(self._at_home(_workers_at_home))


# -- the pools -----------------------------------------------------------------------------------


class WorkerPool(AbstractWorkerPool):
    """A pool of workers (Julia's ``WorkerPool``): ``WorkerPool([2, 3])``.

    Args:
        pids: the worker ids, any iterable of ints (``range`` works); all free at first.

    ``remotecall(f, pool, ...)`` and the other call forms take a free worker, call and give it
    back; ``pmap(f, pool, xs)`` maps over the pool's workers. A pool sent to another process
    acts on this one (see the module's docstring).
    """

    _home: PoolState | _RemoteHome
    _uid: int
    _home_pid: int

    def __init__(self, pids: Iterable[int] = ()) -> None:
        name = type(self).__name__
        if not isinstance(pids, Iterable) or isinstance(pids, (str, bytes)):
            raise TypeError(
                f"{name}(pids): pids must be an iterable of worker ids, not "
                f"{type(pids).__name__} ({pids!r})"
            )
        c = current_cluster()
        pids = [c.registry.check_exists(check_pid(p, _WORKER), f"{name}(pids)") for p in pids]
        self._setup(c, PoolState(c), uuid.uuid4().int >> 64, c.myid)
        for pid in pids:  # (checked, all of them before the pool is made)
            self._home.push(pid)

    def _setup(self, c: Cluster, home: PoolState | _RemoteHome, uid: int, home_pid: int) -> None:
        self._home = home
        self._uid = uid
        self._home_pid = home_pid
        _POOLS.get(c)[uid] = self

    def __reduce__(self) -> tuple[Any, ...]:
        # a reference to the home pool
        return (_rebuild_pool, (type(self), self._home_pid, self._uid))

    def __repr__(self) -> str:
        return self._home.describe(type(self).__name__)

    def _lost_all(self) -> bool:
        """Whether the pool had workers and all of them have exited (not an empty pool)."""
        return isinstance(self._home, PoolState) and self._home.had_members and not self.workers

    def push(self, pid: int) -> WorkerPool:
        """Add worker ``pid`` to the pool, free; returns the pool. Adding a member again does
        nothing.

        Raises:
            TypeError: ``pid`` is not an int.
            ValueError: on the master, no process ever had that id (a worker that has exited
                is accepted, and dropped when it would be handed out).
        """
        c = current_cluster()
        self._home.push(c.registry.check_exists(check_pid(pid, _WORKER), "push(pid)"))
        return self

    def put(self, pid: int) -> int:
        """Give back worker ``pid``; returns ``pid``.

        A worker that is not a member, or is already free, is ignored; a worker that has
        exited is dropped from the pool.
        """
        self._home.put(check_pid(pid, _WORKER))
        return pid

    def take(self, timeout: float | None = None) -> int:
        """Wait for a free worker and return its id; free workers are handed out first in,
        first out.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as it takes.

        Raises:
            RuntimeError: the pool has no live worker (``WorkerPool([]).take()`` raises at once
                instead of blocking forever).
            TimeoutError: no worker became free within ``timeout`` seconds.
        """
        return self._home.take(timeouts.check_timeout(timeout))

    def isready(self) -> bool:
        """Whether :meth:`take` would return at once (a live worker is free)."""
        return self._home.isready()

    def wait(self, timeout: float | None = None) -> WorkerPool:
        """Block until a worker is free, without taking it; returns the pool.

        Raises:
            RuntimeError: the pool has no live worker.
            TimeoutError: none became free within ``timeout`` seconds.
        """
        self._home.wait(timeouts.check_timeout(timeout))
        return self

    def __len__(self) -> int:
        """The number of live workers in the pool, busy or free (the default pool without
        workers: 1, the master)."""
        return len(self.workers)

    @property
    def workers(self) -> list[int]:
        """The live workers of the pool, busy or free, ascending (the default pool without
        workers: ``[1]``)."""
        return self._home.workers()


class CachingPool(WorkerPool):
    """A pool that ships each function once per worker and reuses it (Julia's ``CachingPool``).

    Args:
        pids: the worker ids, any iterable of ints.

    Useful for closures that capture large data: ``pmap(lambda i: big.sum() + i,
    CachingPool(workers()), range(100))`` sends ``big`` once to each worker, not 100 times.
    The cache lives as long as the pool; :meth:`clear` drops it on the workers at once, and a
    ``with CachingPool(...) as pool:`` block clears it on exit.

    Attributes:
        cache: the pool's function cache (None for a copy of a pool that lives elsewhere).
    """

    cache: FunctionCache | None

    def __init__(self, pids: Iterable[int] = ()) -> None:
        super().__init__(pids)
        assert isinstance(self._home, PoolState)
        cache = FunctionCache(self._home.cluster)
        self.cache = cache
        weakref.finalize(self, cache.finalizer(), (cache.uid, cache.used))

    def call_on(
        self, pid: int, form: CallForm, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Make the call on ``pid`` with ``f`` shipped there once (see ``funccache.py``)."""
        if self.cache is None:
            return form(pid, f, args, kwargs)
        return self.cache.call(form, pid, f, args, kwargs)

    def clear(self) -> CachingPool:
        """Drop this pool's cached functions on every worker (Julia's ``clear!``); returns the
        pool. Later calls ship the functions again."""
        if self.cache is None:
            remotecall_fetch(_clear_at_home, self._home_pid, self._uid)
        else:
            self.cache.clear()
        return self

    def __enter__(self) -> CachingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def _rebuild_pool(cls: type[WorkerPool], home: int, uid: int) -> WorkerPool:
    """Unpickle a pool: the pool itself on its home process, else a copy that acts on it."""
    c = current_cluster()  # the cluster decoding this message (see scope)
    existing = _POOLS.get(c).get(uid)
    if existing is not None and type(existing) is cls:
        return existing
    pool = cls.__new__(cls)
    pool._setup(c, _RemoteHome(home, uid), uid, home)
    if isinstance(pool, CachingPool):
        pool.cache = None
    return pool


# -- the home side of a copy's operations (run on the home process) ----------------------------


def _home_pool(uid: int) -> WorkerPool:
    c = current_cluster()  # the cluster running this operation (see scope)
    pool = _POOLS.get(c).get(uid)
    if pool is None or not isinstance(pool._home, PoolState):
        raise RuntimeError(f"the worker pool no longer exists on process {c.myid}")
    return pool


def _push_at_home(uid: int, pid: int) -> None:
    _home_pool(uid).push(pid)


def _put_at_home(uid: int, pid: int) -> None:
    _home_pool(uid).put(pid)


def _take_at_home(uid: int, timeout: float | None) -> int:
    return _home_pool(uid).take(timeout)


def _isready_at_home(uid: int) -> bool:
    return _home_pool(uid).isready()


def _wait_at_home(uid: int, timeout: float | None) -> None:
    _home_pool(uid).wait(timeout)


def _workers_at_home(uid: int) -> list[int]:
    return _home_pool(uid).workers


def _clear_at_home(uid: int) -> None:
    pool = _home_pool(uid)
    if isinstance(pool, CachingPool):
        pool.clear()


for _op in (
    _push_at_home,
    _put_at_home,
    _take_at_home,
    _isready_at_home,
    _wait_at_home,
    _workers_at_home,
    _clear_at_home,
):
    _op._pydist_internal = True  # type: ignore[union-attr]  # may block: not on the main thread


# -- the default pool and remote() ------------------------------------------------------------


def _new_default(c: Cluster) -> WorkerPool:
    pool = WorkerPool.__new__(WorkerPool)
    pool._setup(c, PoolState(c, default=True), uuid.uuid4().int >> 64, c.myid)
    return pool


def default_worker_pool() -> WorkerPool:
    """The pool of all workers, used by :func:`remote` and ``pmap`` when no pool is given.

    It follows ``addprocs`` and ``rmprocs``, hands out free workers first in, first out, and
    when there are no workers hands out process 1 (the master works; ``workers`` is ``[1]``).
    On a worker process it is the master's default pool, reached remotely.
    """
    c = current_cluster()
    pool = _DEFAULT.peek(c)
    if pool is not None:
        return pool
    if c.myid == 1:
        return _DEFAULT.setdefault(c, _new_default(c))
    # a worker: a copy of the master's
    return _DEFAULT.setdefault(c, remotecall_fetch(default_worker_pool, 1))


class _RemoteFunction:
    """What :func:`remote` returns: calling it is a ``remotecall_fetch`` through a pool."""

    __slots__ = ("f", "pool")

    def __init__(self, f: Callable[..., Any], pool: AbstractWorkerPool | None) -> None:
        self.f = f
        self.pool = pool

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        pool = self.pool if self.pool is not None else default_worker_pool()
        return remotecall_fetch(self.f, pool, *args, **kwargs)

    def __repr__(self) -> str:
        where = "the default pool" if self.pool is None else repr(self.pool)
        return f"remote({getattr(self.f, '__qualname__', self.f)!r} on {where})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_RemoteFunction, (self.f, self.pool))


def remote(f: Callable[P, T], pool: AbstractWorkerPool | None = None) -> Callable[P, T]:
    """A function that runs ``f`` on a free worker of ``pool`` (the default pool when None),
    with ``remotecall_fetch``, and returns its value.

    ``remote(f)(x)`` is ``remotecall_fetch(f, default_worker_pool(), x)``; the default pool
    is looked up at each call, so it follows ``addprocs``.
    """
    if not callable(f):
        raise TypeError(f"remote(f, pool=None): f must be callable, not {type(f).__name__}")
    if pool is not None and not isinstance(pool, AbstractWorkerPool):
        raise TypeError(f"remote(f, pool): pool must be a worker pool, not {type(pool).__name__}")
    return _RemoteFunction(f, pool)
