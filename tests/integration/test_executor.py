"""Executor, modelled on CPython's Lib/test/test_concurrent_futures (executor.py, test_wait.py,
test_as_completed.py, test_shutdown.py), run against real workers."""

from __future__ import annotations

import concurrent.futures as cf
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import (
    CachingPool,
    Executor,
    Future,
    ProcessExitedException,
    RemoteException,
    WorkerPool,
    addprocs,
)
from tests.conftest import end_workers, wait_until, worker_ospid

T = 30


@pytest.fixture(scope="module")
def pids() -> Iterator[list[int]]:
    added = addprocs(2)
    yield added
    end_workers(added)


@pytest.fixture
def executor(pids: list[int]) -> Iterator[Executor]:
    ex = Executor(WorkerPool(pids))
    yield ex
    ex.shutdown(wait=True)


def mul(x: int, y: int) -> int:
    return x * y


def capture(*args: Any, **kwargs: Any) -> Any:
    return args, kwargs


def sleep_and_raise(t: float) -> None:
    time.sleep(t)
    raise Exception("this is an exception")


class MyObject:
    def my_method(self) -> None:
        pass


def make_dummy_object(_: Any) -> MyObject:
    return MyObject()


# -- executor.py -------------------------------------------------------------------------------


def test_submit(executor: Executor) -> None:
    future = executor.submit(pow, 2, 8)
    assert isinstance(future, Future) and isinstance(future, cf.Future)
    assert future.result(T) == 256


def test_submit_keyword(executor: Executor) -> None:
    assert executor.submit(mul, 2, y=8).result(T) == 16
    assert executor.submit(capture, 1, self=2, fn=3).result(T) == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        executor.submit(fn=capture, arg=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        executor.submit(arg=1)  # type: ignore[call-arg]


def test_map(executor: Executor) -> None:
    expected = list(map(pow, range(10), range(10)))
    assert list(executor.map(pow, range(10), range(10))) == expected
    assert list(executor.map(pow, range(10), range(10), chunksize=3)) == expected


def test_map_exception(executor: Executor) -> None:
    i = executor.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError) as info:
        next(i)
    assert isinstance(info.value.__cause__, RemoteException)


def test_map_timeout(executor: Executor) -> None:
    results = []
    with pytest.raises(cf.TimeoutError):
        for r in executor.map(time.sleep, [0, 0, 3], timeout=1):
            results.append(r)
    assert results == [None, None]


def test_map_chunks_shorter_than_chunksize(executor: Executor) -> None:
    assert list(executor.map(abs, range(-5, 5), chunksize=4)) == [abs(x) for x in range(-5, 5)]
    assert list(executor.map(abs, [], chunksize=4)) == []


def test_shutdown_race_issue12456(executor: Executor, pids: list[int]) -> None:
    executor.map(str, [2] * (len(pids) + 1))
    executor.shutdown()


def test_no_stale_references(executor: Executor) -> None:
    my_object = MyObject()
    collected: list[bool] = []
    ref = weakref.ref(my_object, lambda _: collected.append(True))
    executor.submit(my_object.my_method).result(T)
    del my_object
    assert ref() is None or not collected  # sent pickled: nothing here keeps it


def test_max_workers_negative() -> None:
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            Executor(max_workers=number)


def test_free_reference(executor: Executor) -> None:
    # the reading thread that delivered the value drops its references a moment after the
    # consumer wakes: allow it that moment (CPython's test asserts at once)
    for obj in executor.map(make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        wait_until(lambda: wr() is None, 5, 0.001, "the result to be freed")  # noqa: B023


def test_lambdas_and_closures(executor: Executor) -> None:
    k = 3
    assert list(executor.map(lambda x: x * k, range(5))) == [0, 3, 6, 9, 12]
    assert executor.submit(lambda: k + 1).result(T) == 4


def test_written_for_process_pool_executor_runs_unchanged(pids: list[int]) -> None:
    def run(ex_type: Any) -> list[int]:
        with ex_type(2) as ex:
            futs = [ex.submit(mul, i, 2) for i in range(5)]
            done = [f.result(T) for f in cf.as_completed(futs, timeout=T)]
            return sorted(done) + list(ex.map(abs, [-1, -2], chunksize=2))

    assert run(Executor) == run(cf.ProcessPoolExecutor)


def test_runs_on_the_pools_workers(pids: list[int]) -> None:
    import os

    with Executor(WorkerPool([pids[1]])) as ex:
        assert ex.submit(os.getpid).result(T) == worker_ospid(pids[1])
    with Executor(CachingPool(pids)) as ex:
        assert sorted(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]


def test_max_workers_limits_tasks_in_flight(pids: list[int]) -> None:
    with Executor(max_workers=1) as ex:
        t = time.monotonic()
        futs = [ex.submit(time.sleep, 0.2) for _ in range(3)]
        cf.wait(futs, timeout=T)
        assert time.monotonic() - t >= 0.55


def test_executor_positional_int_is_max_workers(pids: list[int]) -> None:
    with Executor(1) as ex:
        assert ex._max_workers == 1
        assert ex.submit(abs, -3).result(T) == 3


# -- test_wait.py ------------------------------------------------------------------------------


def test_wait_20369(executor: Executor) -> None:
    future = executor.submit(time.sleep, 0.5)
    done, not_done = cf.wait([future, future], timeout=T, return_when=cf.ALL_COMPLETED)
    assert done == {future} and not_done == set()


def test_wait_first_completed(executor: Executor) -> None:
    future1 = executor.submit(mul, 21, 2)
    future2 = executor.submit(time.sleep, 1.5)
    done, not_done = cf.wait([future1, future2], timeout=T, return_when=cf.FIRST_COMPLETED)
    assert done == {future1} and not_done == {future2}


def test_wait_first_exception(executor: Executor) -> None:
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(sleep_and_raise, 0.5)
    future3 = Executor(max_workers=1).submit(time.sleep, 3)
    finished, pending = cf.wait(
        [future1, future2, future3], timeout=T, return_when=cf.FIRST_EXCEPTION
    )
    assert finished == {future1, future2} and pending == {future3}


def test_wait_all_completed(executor: Executor) -> None:
    future1 = executor.submit(divmod, 2, 0)
    future2 = executor.submit(mul, 2, 21)
    finished, pending = cf.wait([future1, future2], timeout=T, return_when=cf.ALL_COMPLETED)
    assert finished == {future1, future2} and pending == set()


def test_wait_timeout(executor: Executor) -> None:
    future = executor.submit(time.sleep, 0.5)
    finished, pending = cf.wait([future], timeout=0.05, return_when=cf.ALL_COMPLETED)
    assert finished == set() and pending == {future}


# -- test_as_completed.py --------------------------------------------------------------------


def test_as_completed_no_timeout(executor: Executor) -> None:
    future1 = executor.submit(mul, 2, 21)
    future2 = executor.submit(mul, 7, 6)
    assert set(cf.as_completed([future1, future2], timeout=T)) == {future1, future2}


def test_as_completed_future_times_out(executor: Executor) -> None:
    future = executor.submit(time.sleep, 1)
    completed = set()
    with pytest.raises(cf.TimeoutError):
        for f in cf.as_completed({future}, 0.1):
            completed.add(f)
    assert completed == set()


def test_as_completed_duplicate_futures(executor: Executor) -> None:
    future1 = executor.submit(time.sleep, 0.2)
    assert len(list(cf.as_completed([future1, future1, future1], timeout=T))) == 1


# -- test_shutdown.py ------------------------------------------------------------------------


def test_run_after_shutdown(executor: Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures"):
        executor.submit(pow, 2, 5)


def test_hang_issue12364(executor: Executor) -> None:
    fs = [executor.submit(time.sleep, 0.01) for _ in range(50)]
    executor.shutdown()
    for f in fs:
        f.result(T)


def test_cancel_futures(pids: list[int]) -> None:
    ex = Executor(max_workers=1)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    time.sleep(0.15)  # one or two have started
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    assert others
    for f in others:
        assert f.done() and f.exception(T) is None
    with pytest.raises(cf.CancelledError):
        cancelled[0].result(T)
    with pytest.raises(cf.CancelledError):
        cancelled[0].fetch()


def test_cancel_before_the_task_is_sent(pids: list[int]) -> None:
    with Executor(max_workers=1) as ex:
        first = ex.submit(time.sleep, 0.3)
        second = ex.submit(abs, -1)
        assert second.cancel() and second.cancelled() and second.done()
        assert not second.running()
        assert first.cancel() is False or first.cancelled()
    assert second.cancel()  # again: still True


def test_hang_gh94440(pids: list[int]) -> None:
    executor = Executor(max_workers=1)
    executor.submit(int).result(T)
    executor.submit(int).cancel()
    executor.shutdown(wait=True)


def test_context_manager_shutdown(pids: list[int]) -> None:
    with Executor(max_workers=2) as e:
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
        executor = e
    with pytest.raises(RuntimeError):
        executor.submit(abs, 1)


def test_shutdown_no_wait(pids: list[int]) -> None:
    ex = Executor()
    fs = [ex.submit(time.sleep, 0.1) for _ in range(4)]
    ex.shutdown(wait=False)
    for f in fs:
        assert f.result(T) is None


# -- pydistributed's own -----------------------------------------------------------------------


def test_unpicklable_argument_fails_that_task_only(executor: Executor) -> None:
    import threading

    bad = executor.submit(id, threading.Lock())
    with pytest.raises(Exception, match="pickle"):
        bad.result(T)
    assert executor.submit(abs, -2).result(T) == 2


def test_a_worker_dying_fails_its_task_and_the_rest_go_on(pids: list[int]) -> None:
    (extra,) = addprocs(1)
    try:
        with Executor(WorkerPool([extra, pids[0]])) as ex:
            import os

            doomed = ex.submit(os._exit, 1)
            with pytest.raises(ProcessExitedException):
                doomed.result(T)
            assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
    finally:
        end_workers([extra])


def test_futures_of_the_executor_can_be_sent_to_a_worker(
    executor: Executor, pids: list[int]
) -> None:
    from pydistributed import remotecall_fetch

    f = executor.submit(time.sleep, 0.2)
    assert remotecall_fetch(_result, pids[0], f) is None


def _result(f: Future) -> Any:
    return f.result(T)
