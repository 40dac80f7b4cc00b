"""Ids that name no worker are refused or warned about, never passed over in silence."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pydistributed import (
    CachingPool,
    Future,
    ProcessExitedException,
    WorkerPool,
    channel_from_id,
    clear,
    interrupt,
    myid,
    pmap,
    remotecall_fetch,
    rmprocs,
    workers,
)


def test_rmprocs_warns_about_process_1_and_removes_nothing() -> None:
    with pytest.warns(UserWarning, match="process 1 not removed"):
        assert rmprocs(1) is None


def test_rmprocs_warns_about_an_unknown_id(add_workers: Any) -> None:
    (w,) = add_workers(1)
    # (an id no session reaches: ids are never reused, and a long run uses hundreds)
    with pytest.warns(UserWarning, match="worker 999999 not removed: there is no such process"):
        rmprocs(999_999, w)
    assert w not in workers()  # the known one went all the same
    with pytest.warns(UserWarning, match=f"worker {w} not removed: it has exited"):
        rmprocs(w)


def test_rmprocs_and_interrupt_refuse_what_is_not_an_id() -> None:
    with pytest.raises(TypeError, match="worker id"):
        rmprocs("x")
    with pytest.raises(TypeError, match="worker id"):
        interrupt(2.5)


@pytest.mark.parametrize(
    ("bad", "error"), [("x", TypeError), (True, TypeError), (math.nan, ValueError)]
)
def test_rmprocs_refuses_a_bad_waitfor_and_removes_nothing(
    add_workers: Any, bad: Any, error: type[Exception]
) -> None:
    (w,) = add_workers(1)
    with pytest.raises(error, match=r"^rmprocs: waitfor must be a number of seconds"):
        rmprocs(w, waitfor=bad)
    assert w in workers() and remotecall_fetch(myid, w) == w


def test_interrupt_refuses_an_unknown_worker(add_workers: Any) -> None:
    (w,) = add_workers(1)
    with pytest.raises(ValueError, match="no process with id 999999"):
        interrupt(w, 999_999)
    interrupt(1)  # the master is not a worker: nothing to do, as in Julia
    assert remotecall_fetch(myid, w) == w
    rmprocs(w, waitfor=30)
    with pytest.raises(ProcessExitedException):
        interrupt(w)


def test_pmap_over_a_pool_of_no_live_worker_raises_like_take(add_workers: Any) -> None:
    (w,) = add_workers(1)
    pool = WorkerPool([w])
    rmprocs(w, waitfor=30)  # a worker that has exited: dropped when it would be handed out
    with pytest.raises(RuntimeError, match="No active worker"):
        pmap(lambda x: x, pool, range(3))
    with pytest.raises(RuntimeError, match="No active worker"):
        remotecall_fetch(myid, pool)
    assert pmap(lambda x: x + 1, pool, range(3), distributed=False) == [1, 2, 3]
    assert pmap(lambda x: myid(), WorkerPool([]), range(2)) == [1, 1]  # empty: here, as Julia


def test_an_id_that_never_was_a_process_is_refused_at_construction(add_workers: Any) -> None:
    (w,) = add_workers(1)
    never = w + 1000
    with pytest.raises(ValueError, match=rf"^Future\(pid\): no process with id {never}$"):
        Future(never)
    with pytest.raises(ValueError, match=rf"^WorkerPool\(pids\): no process with id {never}$"):
        WorkerPool([w, never])
    with pytest.raises(ValueError, match=rf"^CachingPool\(pids\): no process with id {never}$"):
        CachingPool([never])
    pool = WorkerPool([w])
    with pytest.raises(ValueError, match=rf"^push\(pid\): no process with id {never}$"):
        pool.push(never)
    assert pool.workers == [w] and remotecall_fetch(myid, pool) == w
    with pytest.raises(
        TypeError, match=r"^WorkerPool\(pids\): pids must be an iterable .* not NoneType"
    ):
        WorkerPool(None)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^channel_from_id\(rrid\): rrid must be an RRID.* not int \(5\)$"
    ):
        channel_from_id(5)  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^clear\(\) takes a name, a list of names or a CachingPool, not int"
    ):
        clear(5)
