"""Worker pools: ``AbstractWorkerPool``, ``WorkerPool``, ``CachingPool``, ``default_worker_pool``,
``remote``.

A pool is a set of worker ids (its *members*) and a first-in, first-out queue of the members
that are free. ``take`` waits for a free member and hands it out, ``put`` gives it back, and
``remotecall`` & co., given a pool in place of a pid, take a worker, call, and put it back::

    remotecall_fetch(f, pool, x)
      pid = pool.take()        waits while every member is busy; skips (and drops) dead members;
                               raises RuntimeError when no member is left
      remotecall_fetch(f, pid, x)
      pool.put(pid)            at once for remotecall_fetch/remotecall_wait/remote_do; for
                               remotecall, when its Future is done (a local Task waits on it)

Dead members. A pool never hands out a worker that has exited: ``take`` drops a dead member
it finds (``len``, ``workers`` and ``isready`` prune them too), and ``put`` of a dead worker
drops it instead of queueing it.

The default pool (``default_worker_pool()``) follows ``addprocs``/``rmprocs`` without hooks:
whenever it is used it compares the cluster's worker table with what it last saw (a cheap
fingerprint, the sizes of the worker table and of the set of exited workers, which changes on
every join and every exit because ids are never reused) and adds the new workers at the end of
its queue. With no workers it hands out process 1 (the master works), without limit, and
``workers`` is ``[1]``. A worker process's default pool is the master's, reached remotely.

A pool sent to another process acts on its home pool: it is pickled as a reference (its home
process and a unique id) and every operation (``take``, ``put``, ``push``, ``len``...) on the
copy is a ``remotecall_fetch`` to the home process, which looks the pool up in a per-process
registry of weak references (``Cluster.extensions``). If the home pool has been garbage
collected, operations on the copies raise ``RuntimeError``.

``CachingPool`` ships each function once per worker: the first call to a worker carries the
function (and whatever its closure captures), stored there on arrival in a per-process cache
(``Cluster.extensions``, keyed by the pool and the function); later calls carry only the key.
Storing and looking up happen while the message is decoded, on the connection's reader thread,
so a later call can never overtake the call that ships the function. ``clear()`` drops the
pool's functions on every worker; a pool that is garbage collected without ``clear()`` has its
workers' caches dropped at the next ``CachingPool`` operation in this process (a finalizer
may only queue work, never do I/O). A ``CachingPool`` sent to another process acts on its home
pool for ``take``/``put``/``clear``, but calls made there are not cached.
"""

from __future__ import annotations

import abc
import collections
import math
import pickle
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .cluster import Cluster, current_cluster
from .errors import ProcessExitedException
from .remotecall import remote_do, remotecall, remotecall_fetch, remotecall_wait
from .remoteref import Future
from .tasks import Task

__all__ = [
    "AbstractWorkerPool",
    "CachingPool",
    "WorkerPool",
    "default_worker_pool",
    "remote",
]

_CALLS: dict[str, Callable[..., Any]] = {
    "remotecall": remotecall,
    "remotecall_fetch": remotecall_fetch,
    "remotecall_wait": remotecall_wait,
    "remote_do": remote_do,
}

# Keys of Cluster.extensions used here: this process's state for the layers above the runtime.
_EXT_REGISTRY = "pydistributed.workerpool.registry"  # pool uid -> pool (weak)
_EXT_DEFAULT = "pydistributed.workerpool.default"  # the default pool (or its remote copy)
_EXT_CACHE = "pydistributed.workerpool.cache"  # (cache uid, token) -> function, on workers
_EXT_DROPS = "pydistributed.workerpool.drops"  # caches of collected pools, to drop remotely

_POLL = 0.1  # how often a blocked take() looks again at the cluster (new or dead workers)


def _ext(c: Cluster, key: str, make: Callable[[], Any]) -> Any:
    value = c.extensions.get(key)
    if value is None:
        value = c.extensions.setdefault(key, make())
    return value


def _registry(c: Cluster) -> weakref.WeakValueDictionary[int, AbstractWorkerPool]:
    return _ext(c, _EXT_REGISTRY, weakref.WeakValueDictionary)  # type: ignore[no-any-return]


def _check_pid(pid: Any) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"a worker id is an int, not {type(pid).__name__}")
    return pid


def _deadline(timeout: float | None) -> float | None:
    if timeout is None or timeout == math.inf:
        return None
    return time.monotonic() + max(0.0, float(timeout))


# -- the abstract pool -----------------------------------------------------------------------


class AbstractWorkerPool(abc.ABC):
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
        deadline = _deadline(timeout)
        while not self.isready():
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no worker of {self!r} became free within {timeout} s")
            time.sleep(0.01)
        return self

    # -- calls through the pool (remotecall.py dispatches here) ----------------------------

    def _call_on(
        self, kind: str, pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Make the call ``kind`` of ``f`` on worker ``pid`` (taken from this pool)."""
        return _CALLS[kind](f, pid, *args, **kwargs)

    def _pool_call(self, kind: str, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``remotecall*``/``remote_do`` with this pool in place of a pid (Julia's
        ``remotecall_pool``): take a worker, call, give it back."""
        if kind not in _CALLS:
            raise ValueError(f"unknown kind of call {kind!r}")
        pid = self.take()
        if kind != "remotecall":
            try:
                return self._call_on(kind, pid, f, args, kwargs)
            finally:
                self.put(pid)
        try:
            fut = self._call_on(kind, pid, f, args, kwargs)
        except BaseException:
            self.put(pid)
            raise
        # The worker stays busy until the call is done: a local task waits, then gives it back.
        Task(_put_back_when_done, self, pid, fut).start()
        return fut


def _put_back_when_done(pool: AbstractWorkerPool, pid: int, fut: Future) -> None:
    try:
        fut.wait()
    except BaseException:  # only the waiting matters here; the caller sees the error
        pass
    finally:
        pool.put(pid)


# -- pools kept on this process, or reached on their home process ----------------------------


class _LocalPool(AbstractWorkerPool):
    """The pool machinery shared by WorkerPool and CachingPool.

    An instance either *is* the pool (``_home`` is this process) or stands for a pool living
    on another process, every operation then forwarded there (``_remote``).
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        c = current_cluster()
        self._cluster = c
        self._uid = uuid.uuid4().int >> 64
        self._home = c.myid
        self._remote = False
        self._default = False
        self._cond = threading.Condition(threading.Lock())
        self._members: set[int] = set()
        self._free: collections.deque[int] = collections.deque()
        self._queued: set[int] = set()
        self._synced: set[int] = set()
        self._fingerprint: tuple[int, int] = (-1, -1)
        _registry(c)[self._uid] = self
        for pid in pids:
            self.push(pid)

    # -- pickling: a reference to the home pool --------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_pool, (type(self), self._home, self._uid))

    def __repr__(self) -> str:
        name = type(self).__name__
        if self._remote:
            return f"<{name} living on process {self._home}>"
        with self._cond:
            members = sorted(self._members)
            free = list(self._free)
        tag = ", default" if self._default else ""
        return f"<{name} workers={members} free={free}{tag}>"

    def _forward(self, op: str, *args: Any) -> Any:
        if self._home == current_cluster().myid:
            return _pool_op(self._uid, op, args)
        return remotecall_fetch(_pool_op, self._home, self._uid, op, args)

    # -- membership ------------------------------------------------------------------------

    def _alive(self, pid: int) -> bool:
        c = self._cluster
        if pid in c.dead:
            return False
        return pid == c.myid or pid == 1 or pid in c.workers

    def _refresh(self) -> None:
        """Lock held. The default pool: take in the cluster's new workers, in id order."""
        if not self._default:
            return
        c = self._cluster
        fingerprint = (len(c.workers), len(c.dead))
        if fingerprint == self._fingerprint:
            return
        self._fingerprint = fingerprint
        for pid in sorted(p for p in list(c.workers) if p != c.myid and p != 1):
            if pid not in self._synced and pid not in c.dead:
                self._synced.add(pid)
                self._add(pid)
        self._prune()

    def _prune(self) -> None:
        """Lock held. Forget members that have exited."""
        dead = [p for p in self._members if not self._alive(p)]
        for pid in dead:
            self._members.discard(pid)
        if dead:
            self._free = collections.deque(p for p in self._free if p in self._members)
            self._queued.intersection_update(self._members)

    def _add(self, pid: int) -> None:
        """Lock held."""
        self._members.add(pid)
        if pid not in self._queued:
            self._queued.add(pid)
            self._free.append(pid)
            self._cond.notify()

    def _master_works(self) -> bool:
        """Lock held. The default pool without workers hands out this process (the master)."""
        return self._default and not self._members

    # -- the pool operations ---------------------------------------------------------------

    def push(self, pid: int) -> _LocalPool:
        """Add worker ``pid`` to the pool, free; returns the pool. Adding a member again does
        nothing."""
        _check_pid(pid)
        if self._remote:
            self._forward("push", pid)
            return self
        with self._cond:
            self._add(pid)
        return self

    def put(self, pid: int) -> int:
        """Give back worker ``pid``; returns ``pid``.

        A worker that is not a member, or is already free, is ignored; a worker that has
        exited is dropped from the pool.
        """
        _check_pid(pid)
        if self._remote:
            self._forward("put", pid)
            return pid
        with self._cond:
            if pid in self._members and pid not in self._queued:
                if self._alive(pid):
                    self._queued.add(pid)
                    self._free.append(pid)
                    self._cond.notify()
                else:
                    self._members.discard(pid)
                    self._cond.notify_all()  # a taker may now find the pool empty
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
        if self._remote:
            return int(self._forward("take", timeout))
        deadline = _deadline(timeout)
        with self._cond:
            while True:
                self._refresh()
                while self._free:
                    pid = self._free.popleft()
                    self._queued.discard(pid)
                    if self._alive(pid):
                        return pid
                    self._members.discard(pid)
                self._prune()
                if self._master_works():
                    return self._cluster.myid
                self._wait_for_a_free_worker(deadline, timeout)

    def _wait_for_a_free_worker(self, deadline: float | None, timeout: float | None) -> None:
        """Under ``self._cond``: wait a little for a worker to come free.

        Raises:
            RuntimeError: the pool has no live worker, so none will ever come free.
            TimeoutError: the deadline has passed.
        """
        if not self._members:
            raise RuntimeError("No active worker available in pool")
        wait = _POLL
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no worker of the pool became free within {timeout} s")
            wait = min(wait, remaining)
        self._cond.wait(wait)

    def isready(self) -> bool:
        """Whether :meth:`take` would return at once (a live worker is free)."""
        if self._remote:
            return bool(self._forward("isready"))
        with self._cond:
            self._refresh()
            if self._master_works():
                return True
            return any(self._alive(p) for p in self._free)

    def wait(self, timeout: float | None = None) -> _LocalPool:
        """Block until a worker is free, without taking it; returns the pool.

        Raises:
            RuntimeError: the pool has no live worker.
            TimeoutError: none became free within ``timeout`` seconds.
        """
        if self._remote:
            self._forward("wait", timeout)
            return self
        deadline = _deadline(timeout)
        with self._cond:
            while True:
                self._refresh()
                self._prune()
                if self._master_works() or any(self._alive(p) for p in self._free):
                    return self
                self._wait_for_a_free_worker(deadline, timeout)

    def __len__(self) -> int:
        """The number of live workers in the pool, busy or free (the default pool without
        workers: 1, the master)."""
        if self._remote:
            return int(self._forward("len"))
        return len(self.workers)

    @property
    def workers(self) -> list[int]:
        """The live workers of the pool, busy or free, ascending (the default pool without
        workers: ``[1]``)."""
        if self._remote:
            return list(self._forward("workers"))
        with self._cond:
            self._refresh()
            self._prune()
            if self._master_works():
                return [self._cluster.myid]
            return sorted(self._members)


class WorkerPool(_LocalPool):
    """A pool of workers (Julia's ``WorkerPool``): ``WorkerPool([2, 3])``.

    Args:
        pids: the worker ids, any iterable of ints (``range`` works); all free at first.

    ``remotecall(f, pool, ...)`` and the other call forms take a free worker, call and give it
    back; ``pmap(f, pool, xs)`` maps over the pool's workers. A pool sent to another process
    acts on this one (see the module's docstring).
    """


class CachingPool(_LocalPool):
    """A pool that ships each function once per worker and reuses it (Julia's ``CachingPool``).

    Args:
        pids: the worker ids, any iterable of ints.

    Useful for closures that capture large data: ``pmap(lambda i: big.sum() + i,
    CachingPool(workers()), range(100))`` sends ``big`` once to each worker, not 100 times.
    The cache lives as long as the pool; :meth:`clear` drops it on the workers at once, and a
    ``with CachingPool(...) as pool:`` block clears it on exit.
    """

    def __init__(self, pids: Iterable[int] = ()) -> None:
        super().__init__(pids)
        self._cache = _FunctionCache(self._cluster)
        weakref.finalize(self, self._cache.finalizer(), (self._cache.uid, self._cache.used))

    def _call_on(
        self, kind: str, pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._remote:
            return super()._call_on(kind, pid, f, args, kwargs)
        return self._cache.call(kind, pid, f, args, kwargs)

    def clear(self) -> CachingPool:
        """Drop this pool's cached functions on every worker (Julia's ``clear!``); returns the
        pool. Later calls ship the functions again."""
        if self._remote:
            self._forward("clear")
            return self
        self._cache.clear()
        return self

    def __enter__(self) -> CachingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()


def _rebuild_pool(cls: type[_LocalPool], home: int, uid: int) -> _LocalPool:
    """Unpickle a pool: the pool itself on its home process, else a stand-in for it."""
    c = current_cluster()
    registry = _registry(c)
    existing = registry.get(uid)
    if existing is not None and type(existing) is cls:
        return existing  # type: ignore[return-value]
    pool = cls.__new__(cls)
    pool._cluster = c
    pool._uid = uid
    pool._home = home
    pool._remote = True
    pool._default = False
    pool._cond = threading.Condition(threading.Lock())
    pool._members = set()
    pool._free = collections.deque()
    pool._queued = set()
    pool._synced = set()
    pool._fingerprint = (-1, -1)
    if isinstance(pool, CachingPool):
        pool._cache = _FunctionCache(c)
    if home != c.myid:
        registry[uid] = pool
    return pool


def _pool_op(uid: int, op: str, args: tuple[Any, ...]) -> Any:
    """Run on a pool's home process: the operation ``op`` of the pool ``uid``."""
    c = current_cluster()
    pool = _registry(c).get(uid)
    if pool is None or not isinstance(pool, _LocalPool) or pool._remote:
        raise RuntimeError(f"the worker pool no longer exists on process {c.myid}")
    if op == "workers":
        return pool.workers
    if op == "len":
        return len(pool)
    if op == "clear" and isinstance(pool, CachingPool):
        pool.clear()
        return None
    if op in ("push", "put", "take", "isready", "wait"):
        result = getattr(pool, op)(*args)
        return None if op in ("push", "wait") else result
    raise ValueError(f"unknown pool operation {op!r}")


_pool_op._pydist_internal = True  # type: ignore[attr-defined]  # may block: not on the main thread


# -- the default pool and remote() ------------------------------------------------------------


def default_worker_pool() -> WorkerPool:
    """The pool of all workers, used by :func:`remote` and ``pmap`` when no pool is given.

    It follows ``addprocs`` and ``rmprocs``, hands out free workers first in, first out, and
    when there are no workers hands out process 1 (the master works; ``workers`` is ``[1]``).
    On a worker process it is the master's default pool, reached remotely.
    """
    c = current_cluster()
    pool = c.extensions.get(_EXT_DEFAULT)
    if pool is not None:
        return pool  # type: ignore[no-any-return]
    if c.myid == 1:
        fresh = WorkerPool()
        fresh._default = True
        pool = c.extensions.setdefault(_EXT_DEFAULT, fresh)
    else:
        pool = c.extensions.setdefault(_EXT_DEFAULT, remotecall_fetch(default_worker_pool, 1))
    return pool  # type: ignore[no-any-return]


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


def remote(f: Callable[..., Any], pool: AbstractWorkerPool | None = None) -> Callable[..., Any]:
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


# -- the function cache ------------------------------------------------------------------------


class _Ship:
    """A function on its first trip to a worker: unpickled, it is stored in the cache there."""

    __slots__ = ("f", "key")

    def __init__(self, key: tuple[int, int], f: Any) -> None:
        self.key = key
        self.f = f

    def __reduce__(self) -> tuple[Any, ...]:
        return (_store_cached, (self.key, self.f))


class _Ref:
    """A function already on the worker: unpickled, it is looked up in the cache there."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_lookup_cached, (self.key,))


def _worker_cache(c: Cluster) -> dict[tuple[int, int], Any]:
    return _ext(c, _EXT_CACHE, dict)  # type: ignore[no-any-return]


def _store_cached(key: tuple[int, int], f: Any) -> Any:
    """Unpickling a shipped function (on the reader thread, in message order): keep it."""
    _worker_cache(current_cluster())[key] = f
    return f


def _lookup_cached(key: tuple[int, int]) -> Any:
    """Unpickling a cache reference (on the reader thread, in message order): find it."""
    c = current_cluster()
    f = _worker_cache(c).get(key)
    if f is None:
        return _Missing(c.myid, key)
    return f


class _Missing:
    """Stands for a function that is not in a worker's cache (cleared while calls were on the
    way): calling it raises an error that says so."""

    def __init__(self, pid: int, key: tuple[int, int]) -> None:
        self.pid = pid
        self.key = key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"the function {self.key} is not in the cache of process {self.pid}: the pool's "
            "cache was cleared while calls were on the way, or the function failed to "
            "unpickle there on its first call"
        )


def _drop_cached(uid: int) -> None:
    """Unpickling a :class:`_Drop` (on a worker's reader thread): drop every function that the
    cache ``uid`` stored here. Done while decoding, so that no call sent after the drop can
    still find them, however the calls then run."""
    cache = _worker_cache(current_cluster())
    for key in [k for k in list(cache) if k[0] == uid]:
        cache.pop(key, None)


class _Drop:
    """Sent to a worker by ``clear()``: unpickled there, it drops the cache ``uid``."""

    __slots__ = ("uid",)

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_drop_cached, (self.uid,))


def _ignore(_: Any) -> None:
    """The call that carries a :class:`_Drop`: the work was done while decoding it."""


_ignore._pydist_internal = True  # type: ignore[attr-defined]


def _cached_keys(uid: int) -> list[tuple[int, int]]:
    """Run on a worker: the keys the cache ``uid`` holds here (for tests and debugging)."""
    return sorted(k for k in list(_worker_cache(current_cluster())) if k[0] == uid)


_cached_keys._pydist_internal = True  # type: ignore[attr-defined]


class _FunctionCache:
    """The calling side of a function cache: which function went to which worker.

    ``call(kind, pid, f, ...)`` sends ``f`` itself the first time it goes to ``pid`` and a
    reference afterwards. A function is marked as shipped only once its message has been sent,
    so that a reference never goes out ahead of the function; two threads may then both ship
    it, which is harmless. Functions are held (by identity) until :meth:`clear`.
    """

    def __init__(self, c: Cluster) -> None:
        self.cluster = c
        self.uid = uuid.uuid4().int >> 64
        self._lock = threading.Lock()
        self._tokens: dict[int, tuple[Any, int]] = {}
        self._shipped: set[tuple[int, int]] = set()
        self.used: set[int] = set()
        self._next = 1
        _drain_drops(c)

    def finalizer(self) -> Callable[[tuple[int, set[int]]], None]:
        """A callable for ``weakref.finalize``: it only appends to a deque (no I/O, no lock)."""
        drops: collections.deque[tuple[int, set[int]]] = _ext(
            self.cluster, _EXT_DROPS, collections.deque
        )
        return drops.append

    def _token(self, f: Any) -> int:
        entry = self._tokens.get(id(f))
        if entry is not None and entry[0] is f:
            return entry[1]
        with self._lock:
            entry = self._tokens.get(id(f))
            if entry is not None and entry[0] is f:
                return entry[1]
            token = self._next
            self._next += 1
            self._tokens[id(f)] = (f, token)
            return token

    def call(
        self, kind: str, pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Make the call ``kind`` of ``f`` on ``pid``, shipping ``f`` there only the first time."""
        call = _CALLS[kind]
        if pid == self.cluster.myid:
            return call(f, pid, *args, **kwargs)
        token = self._token(f)
        key = (self.uid, token)
        if (pid, token) in self._shipped:
            return call(_Ref(key), pid, *args, **kwargs)
        try:
            result = call(_Ship(key, f), pid, *args, **kwargs)
        except (pickle.PicklingError, ProcessExitedException):
            raise  # nothing went out, or the worker is gone
        except Exception:
            self._mark(pid, token)  # an error from there: the message did go out
            raise
        # (On KeyboardInterrupt the function may or may not have gone out: it is not marked,
        # and simply shipped again next time.)
        self._mark(pid, token)
        return result

    def _mark(self, pid: int, token: int) -> None:
        with self._lock:
            self._shipped.add((pid, token))
            self.used.add(pid)

    def clear(self) -> None:
        """Forget every function; drop them on every worker they went to."""
        with self._lock:
            used = sorted(self.used)
            self.used.clear()
            self._shipped.clear()
            self._tokens.clear()
        _send_drops(self.cluster, self.uid, used)
        _drain_drops(self.cluster)


def _send_drops(c: Cluster, uid: int, pids: Iterable[int]) -> None:
    for pid in pids:
        if pid == c.myid or pid in c.dead:
            continue
        try:
            # one way, no round trip: the drop happens as the worker decodes the message, in
            # order with the calls this process sends it
            remote_do(_ignore, pid, _Drop(uid))
        except (ProcessExitedException, ValueError):
            pass


def _drain_drops(c: Cluster) -> None:
    """Drop, on the workers, the caches of CachingPools garbage collected without clear()."""
    drops: collections.deque[tuple[int, set[int]]] | None = c.extensions.get(_EXT_DROPS)
    while drops:
        try:
            uid, used = drops.popleft()
        except IndexError:
            break
        _send_drops(c, uid, sorted(used))
