"""Worker pools against real workers: WorkerPool, CachingPool, default_worker_pool, remote."""

from __future__ import annotations

import gc
import math
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from pydistributed import (
    Future,
    ProcessExitedException,
    RemoteException,
    myid,
    remote_do,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    rmprocs,
    timedwait,
    workers,
)
from pydistributed.cluster import current_cluster
from pydistributed.funccache import cached_keys
from pydistributed.pmap import pmap
from pydistributed.workerpool import (
    AbstractWorkerPool,
    CachingPool,
    WorkerPool,
    default_worker_pool,
    remote,
)
from tests.conftest import worker_table

pytestmark = pytest.mark.timeout(120)

T = 30.0  # the timeout of blocking calls expected to succeed


def _sleep_then_myid(seconds: float) -> int:
    time.sleep(seconds)
    return myid()


# -- no workers: the master works (these run before `shared` exists) -------------------------


def test_default_pool_without_workers_is_the_master() -> None:
    if worker_table():
        pytest.skip("workers left over by another module")  # never expected: fixtures clean up
    pool = default_worker_pool()
    assert isinstance(pool, WorkerPool) and isinstance(pool, AbstractWorkerPool)
    assert pool is default_worker_pool()
    assert pool.workers == [1] == workers(pool)
    assert len(pool) == 1
    assert pool.isready()
    assert pool.take() == 1 and pool.take() == 1  # never blocks
    pool.put(1)
    assert remotecall_fetch(myid, pool) == 1
    assert remote(lambda x: (x, myid()))(5) == (5, 1)
    assert pmap(lambda x: (x, myid()), range(3)) == [(0, 1), (1, 1), (2, 1)]


def test_empty_pool_raises_instead_of_blocking() -> None:
    pool = WorkerPool([])
    assert len(pool) == 0 and pool.workers == [] and not pool.isready()
    with pytest.raises(RuntimeError, match="No active worker"):
        pool.take()
    with pytest.raises(RuntimeError, match="No active worker"):
        pool.take(timeout=T)
    with pytest.raises(RuntimeError, match="No active worker"):
        remotecall_fetch(myid, pool)


def test_default_pool_follows_addprocs_and_rmprocs(
    add_workers: Callable[..., list[int]],
) -> None:
    pool = default_worker_pool()
    a, b = add_workers(2)
    assert pool.workers == [a, b] and len(pool) == 2
    # first in, first out
    assert pool.take() == a and pool.take() == b
    assert not pool.isready()
    pool.put(b)
    pool.put(a)
    assert [pool.take(), pool.take()] == [b, a]
    pool.put(a)
    pool.put(b)
    (c,) = add_workers(1)
    assert pool.workers == [a, b, c]
    assert [pool.take() for _ in range(3)] == [a, b, c]
    for pid in (a, b, c):
        pool.put(pid)
    rmprocs(b, waitfor=T)
    assert pool.workers == [a, c]
    assert sorted(remotecall_fetch(myid, pool) for _ in range(4)) == [a, a, c, c]


def test_default_pool_wakes_a_blocked_taker_when_a_worker_joins(
    add_workers: Callable[..., list[int]],
) -> None:
    pool = default_worker_pool()
    (a,) = add_workers(1)
    assert pool.take() == a
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(pool.take(timeout=T)))
    t.start()
    t.join(0.2)  # does not end: blocked, the only worker is busy
    assert t.is_alive() and not got
    (b,) = add_workers(1)
    t.join(T)
    assert got == [b]
    pool.put(a)
    pool.put(b)


# -- WorkerPool ------------------------------------------------------------------------------


def test_take_put_push_len_isready(shared: list[int]) -> None:
    a, b = shared
    pool = WorkerPool(range(a, b + 1))
    assert pool.workers == [a, b] == workers(pool) and len(pool) == 2
    assert pool.isready()
    assert pool.take() == a and pool.take() == b
    assert not pool.isready()
    with pytest.raises(TimeoutError):
        pool.take(timeout=0.05)
    with pytest.raises(TimeoutError):
        pool.wait(timeout=0.05)
    pool.put(a)
    assert pool.isready() and pool.wait(timeout=T) is pool
    pool.put(a)  # already free: ignored, not handed out twice
    pool.put(99)  # not a member: ignored
    assert pool.take() == a
    assert not pool.isready()
    pool.put(a)
    pool.put(b)
    assert pool.push(a) is pool and len(pool) == 2  # a member already
    assert [pool.take(), pool.take()] == [a, b]
    pool.put(b)
    pool.put(a)
    with pytest.raises(TypeError):
        WorkerPool(["2"])  # type: ignore[list-item]
    assert "WorkerPool" in repr(pool)


def test_push_adds_a_free_worker(shared: list[int]) -> None:
    a, b = shared
    pool = WorkerPool([a])
    assert pool.take() == a
    pool.push(b)
    assert pool.workers == [a, b]
    assert pool.take(timeout=T) == b


def test_remotecall_fetch_wait_and_remote_do_through_a_pool(shared: list[int]) -> None:
    a, b = shared
    pool = WorkerPool([a, b])
    assert remotecall_fetch(myid, pool) == a
    assert remotecall_fetch(myid, pool) == b  # a went back to the end of the queue
    assert remotecall_fetch(lambda x, *, y: x + y, pool, 1, y=2) == 3
    fut = remotecall_wait(_sleep_then_myid, pool, 0.1)
    assert isinstance(fut, Future) and fut.isready()
    assert fut.fetch() in (a, b)
    assert len(pool) == 2 and pool.isready()
    assert remote_do(print, pool, "") is None
    assert pool.wait(timeout=T) is pool
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(lambda: 1 / 0, pool)
    assert isinstance(info.value.captured.exc, ZeroDivisionError)
    assert sorted([pool.take(), pool.take()]) == [a, b]  # an error gave the worker back too
    pool.put(a)
    pool.put(b)


def test_remotecall_keeps_the_worker_until_the_future_is_done(shared: list[int]) -> None:
    a, _ = shared
    pool = WorkerPool([a])
    fut = remotecall(_sleep_then_myid, pool, 0.5)
    assert isinstance(fut, Future) and fut.where == a
    assert not pool.isready()  # busy while the call runs
    assert fut.fetch(timeout=T) == a
    assert timedwait(pool.isready, T, pollint=0.01) == "ok"
    # an error also gives it back
    bad = remotecall(lambda: 1 / 0, pool)
    with pytest.raises(RemoteException):
        bad.fetch(timeout=T)
    assert timedwait(pool.isready, T, pollint=0.01) == "ok"


def test_calls_through_a_pool_spread_over_its_workers(shared: list[int]) -> None:
    pool = WorkerPool(shared)
    futs = [remotecall(_sleep_then_myid, pool, 0.3) for _ in range(4)]
    # the third and fourth calls waited for a free worker: each worker ran two
    assert sorted(f.fetch(timeout=T) for f in futs) == sorted(shared * 2)


def test_remote(shared: list[int]) -> None:
    a, b = shared
    r = remote(lambda x, y=0: (x + y, myid()))
    assert r(1, y=2)[0] == 3 and r(1)[1] in shared
    only_b = remote(myid, WorkerPool([b]))
    assert [only_b() for _ in range(3)] == [b, b, b]
    with pytest.raises(TypeError):
        remote(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        remote(myid, [a])  # type: ignore[arg-type]


def test_a_pool_sent_to_a_worker_acts_on_its_home_pool(shared: list[int]) -> None:
    a, b = shared
    pool = WorkerPool([b])
    # used on worker a: the call goes to b, taken from (and given back to) the pool here
    assert remotecall_fetch(lambda p: remotecall_fetch(myid, p), a, pool) == b
    assert remotecall_fetch(lambda p: (len(p), p.workers, p.isready()), a, pool) == (1, [b], True)
    # a take on the worker takes from the home pool
    assert remotecall_fetch(lambda p: p.take(), a, pool) == b
    assert not pool.isready()
    remotecall_fetch(lambda p: p.put(b), a, pool)
    assert pool.isready()
    # and the copy, sent back home, is the pool itself
    assert remotecall_fetch(lambda p: p, a, pool) is pool
    # the default pool of a worker is the master's
    assert remotecall_fetch(lambda: default_worker_pool().workers, a) == [a, b]


def test_a_pool_sent_away_after_its_home_pool_is_gone(shared: list[int]) -> None:
    a, b = shared
    pool = WorkerPool([b])
    keep = remotecall(lambda p: p, a, pool)  # a Future on a holding the copy
    keep.wait(timeout=T)
    del pool
    gc.collect()
    with pytest.raises(RemoteException, match="no longer exists"):
        remotecall_fetch(lambda fut: fut.fetch().take(timeout=1), a, keep)


def test_a_dead_worker_is_skipped(add_workers: Callable[..., list[int]]) -> None:
    a, b, c = add_workers(3)
    pool = WorkerPool([a, b, c])
    busy = pool.take()
    assert busy == a
    rmprocs(b, waitfor=T)
    assert pool.workers == [a, c] and len(pool) == 2
    assert pool.take() == c  # b is skipped
    # a worker that dies while busy is dropped when it comes back
    ospid = remotecall_fetch(os.getpid, c)
    os.kill(ospid, 9)
    assert timedwait(lambda: current_cluster().registry.is_dead(c), T, pollint=0.01) == "ok"
    pool.put(c)
    assert pool.workers == [a]
    pool.put(busy)
    assert remotecall_fetch(myid, pool) == a
    rmprocs(a, waitfor=T)
    with pytest.raises(RuntimeError, match="No active worker"):
        pool.take()


def test_a_blocked_taker_wakes_when_the_last_busy_worker_dies(
    add_workers: Callable[..., list[int]],
) -> None:
    (a,) = add_workers(1)
    pool = WorkerPool([a])
    fut = remotecall(lambda: os._exit(3), pool)  # the worker dies while the pool waits on it
    with pytest.raises(RuntimeError, match="No active worker"):
        pool.take(timeout=T)
    with pytest.raises(ProcessExitedException):
        fut.fetch(timeout=T)


# -- CachingPool ------------------------------------------------------------------------------


def _bytes_sent(pids: list[int]) -> dict[int, int]:
    c = current_cluster()
    return {p: c.connections.get(p).writer.bytes_sent for p in pids}


def test_caching_pool_ships_a_big_closure_once_per_worker(shared: list[int]) -> None:
    big = np.ones(100_000_000 // 8)  # 100 MB
    pool = CachingPool(shared)
    before = _bytes_sent(shared)
    out = pmap(lambda i: float(big[i]) + i, pool, range(100))
    assert out == [1.0 + i for i in range(100)]
    sent = _bytes_sent(shared)
    per_worker = {p: sent[p] - before[p] for p in shared}
    # each worker got the array once (~100 MB), not once per element (100 x 100 MB)
    assert all(100e6 <= n < 150e6 for n in per_worker.values()), per_worker

    # calls through the pool reuse it too (the same function object: a new lambda is another)
    def total() -> float:
        return float(big.sum())

    assert [remotecall_fetch(total, pool) for _ in range(2)] == [12.5e6] * 2  # ships it
    sent = _bytes_sent(shared)
    assert [remotecall_fetch(total, pool) for _ in range(6)] == [12.5e6] * 6  # reuses it
    assert sum(_bytes_sent(shared).values()) - sum(sent.values()) < 5e6
    # clear() drops it on the workers; the next call ships it again
    assert [len(remotecall_fetch(cached_keys, p, pool.cache.uid)) for p in shared] == [2, 2]
    assert pool.clear() is pool
    assert [remotecall_fetch(cached_keys, p, pool.cache.uid) for p in shared] == [[], []]
    before = _bytes_sent(shared)
    assert remotecall_fetch(lambda: float(big[0]), pool) == 1.0
    assert sum(_bytes_sent(shared).values()) - sum(before.values()) > 100e6
    pool.clear()


def test_caching_pool_reuses_a_function_and_keeps_its_state(shared: list[int]) -> None:
    a, _ = shared
    counter = [0]

    def count() -> int:
        counter[0] += 1  # the worker's copy of the closure: it keeps counting there
        return counter[0]

    with CachingPool([a]) as pool:
        assert [remotecall_fetch(count, pool) for _ in range(3)] == [1, 2, 3]
        assert remotecall_fetch(count, WorkerPool([a])) == 1  # not cached: a fresh copy
        fut = remotecall(count, pool)
        assert fut.fetch(timeout=T) == 4
        assert remotecall_wait(count, pool).fetch() == 5
        uid = pool.cache.uid
        assert len(remotecall_fetch(cached_keys, a, uid)) == 1
    # leaving the block cleared it
    assert remotecall_fetch(cached_keys, a, uid) == []
    assert counter == [0]  # the master's closure never ran


def test_a_collected_caching_pool_drops_its_cache(shared: list[int]) -> None:
    a, _ = shared
    pool = CachingPool([a])
    assert remotecall_fetch(lambda: 42, pool) == 42
    uid = pool.cache.uid
    assert remotecall_fetch(cached_keys, a, uid) != []
    del pool
    gc.collect()
    CachingPool([a])  # the next CachingPool operation sends the drops
    assert remotecall_fetch(cached_keys, a, uid) == []


def test_caching_pool_sent_to_a_worker(shared: list[int]) -> None:
    a, b = shared
    pool = CachingPool([b])
    assert remotecall_fetch(lambda p: (type(p).__name__, remotecall_fetch(myid, p)), a, pool) == (
        "CachingPool",
        b,
    )
    remotecall_fetch(lambda p: p.clear(), a, pool)
    assert pool.isready()


class _RoundRobin(AbstractWorkerPool):
    """A pool of one's own: every worker is always free, handed out in turn."""

    def __init__(self, pids: list[int]) -> None:
        self._pids = list(pids)
        self._next = 0
        self._lock = threading.Lock()
        self.taken: list[int] = []

    def push(self, pid: int) -> _RoundRobin:
        self._pids.append(pid)
        return self

    def put(self, pid: int) -> int:
        return pid

    def take(self, timeout: float | None = None) -> int:
        with self._lock:
            pid = self._pids[self._next % len(self._pids)]
            self._next += 1
            self.taken.append(pid)
            return pid

    def isready(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self._pids)

    @property
    def workers(self) -> list[int]:
        return sorted(self._pids)


def test_a_pool_of_ones_own(shared: list[int]) -> None:
    a, b = shared
    pool = _RoundRobin([a, b])
    assert [remotecall_fetch(myid, pool) for _ in range(4)] == [a, b, a, b]
    assert remotecall(myid, pool).fetch(timeout=T) == a
    assert workers(pool) == [a, b] and pool.wait(timeout=T) is pool
    out = pmap(lambda x: (x, myid()), pool, range(6))
    assert [x for x, _ in out] == list(range(6)) and {w for _, w in out} == {a, b}
    assert remote(myid, pool)() in (a, b)
    with pytest.raises(TypeError):
        AbstractWorkerPool()  # type: ignore[abstract]


@pytest.mark.parametrize(
    ("bad", "error"), [("1", TypeError), (True, TypeError), (math.nan, ValueError)]
)
def test_take_and_wait_refuse_a_bad_timeout(
    shared: list[int], bad: object, error: type[Exception]
) -> None:
    pool = WorkerPool(shared)
    for call in (lambda: pool.take(bad), lambda: pool.wait(bad)):  # type: ignore[arg-type]
        with pytest.raises(error, match=r"^timeout must be a number of seconds"):
            call()
    assert sorted([pool.take(timeout=T), pool.take(timeout=T)]) == sorted(shared)  # none taken
    with pytest.raises(TimeoutError, match=r"became free within 0\.05 s$"):
        pool.take(timeout=0.0499999)
