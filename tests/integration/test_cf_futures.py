"""A Future is a concurrent.futures.Future: result, exception, done, callbacks, cancel, and
concurrent.futures.wait / as_completed over remote calls, with no thread per watched Future."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import (
    Future,
    ProcessExitedException,
    RemoteException,
    addprocs,
    fetch,
    remotecall,
    remotecall_fetch,
    rmprocs,
    wait,
)
from tests.conftest import end_workers, requests_awaiting, wait_until
from tests.integration._helpers import sleep_then, square

T = 30  # seconds: the bound of every blocking call here


@pytest.fixture(scope="module")
def pids() -> Iterator[list[int]]:
    added = addprocs(2)
    yield added
    end_workers(added)


def fail(msg: str) -> None:
    raise ValueError(msg)


def result_of(f: Future) -> Any:
    return f.result(T)


def test_a_future_is_a_standard_future(pids: list[int]) -> None:
    f = remotecall(square, pids[0], 7)
    assert isinstance(f, cf.Future)
    assert f.result(T) == 49
    assert f.done() and not f.running() and not f.cancelled()
    assert f.exception(T) is None
    assert f.fetch() == 49  # Julia's method still works, from the cache


def test_result_raises_the_calls_own_exception_with_the_remote_one_as_cause(
    pids: list[int],
) -> None:
    f = remotecall(fail, pids[0], "boom")
    with pytest.raises(ValueError, match="boom") as info:
        f.result(T)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteException) and cause.pid == pids[0]
    assert "Traceback" in str(cause) and "in fail" in str(cause)  # the remote traceback
    assert isinstance(f.exception(T), ValueError)
    with pytest.raises(RemoteException, match="On worker"):  # Julia's fetch: unchanged
        f.fetch()
    with pytest.raises(RemoteException):
        wait(f)


def test_timeouts(pids: list[int]) -> None:
    f = remotecall(sleep_then, pids[0], 0.5, "late")
    with pytest.raises(cf.TimeoutError):
        f.result(timeout=0.05)
    with pytest.raises(cf.TimeoutError):
        f.exception(timeout=0.05)
    assert f.running()
    assert f.result(T) == "late"


def test_cancel_is_false_for_a_started_call(pids: list[int]) -> None:
    f = remotecall(sleep_then, pids[0], 0.2, 1)
    assert f.cancel() is False
    assert not f.cancelled()
    assert f.result(T) == 1
    assert f.cancel() is False


def test_as_completed_yields_in_completion_order(pids: list[int]) -> None:
    slow = remotecall(sleep_then, pids[0], 1.0, "slow")
    fast = remotecall(sleep_then, pids[1], 0.0, "fast")
    order = [f.result(T) for f in cf.as_completed([slow, fast], timeout=T)]
    assert order == ["fast", "slow"]


def test_as_completed_over_many_futures_needs_no_thread_each(pids: list[int]) -> None:
    before = threading.active_count()
    futs = [remotecall(sleep_then, pids[i % 2], 0.3, i) for i in range(200)]
    seen = []
    for f in cf.as_completed(futs, timeout=T):
        seen.append(f.result(T))
        assert threading.active_count() < before + 10
    assert sorted(seen) == list(range(200))
    assert wait_until(lambda: requests_awaiting(pids[0]) == 0, what="watches answered")


def test_wait_first_completed_and_all_completed(pids: list[int]) -> None:
    slow = remotecall(sleep_then, pids[0], 1.0, 1)
    fast = remotecall(square, pids[1], 3)
    done, not_done = cf.wait([slow, fast], timeout=T, return_when=cf.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    done, not_done = cf.wait([slow, fast], timeout=T)
    assert done == {slow, fast} and not not_done


def test_wait_first_exception(pids: list[int]) -> None:
    slow = remotecall(sleep_then, pids[0], 2.0, 1)
    bad = remotecall(fail, pids[1], "x")
    done, not_done = cf.wait([slow, bad], timeout=T, return_when=cf.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    slow.result(T)


def test_wait_times_out(pids: list[int]) -> None:
    f = remotecall(sleep_then, pids[0], 0.5, 1)
    done, not_done = cf.wait([f], timeout=0.05)
    assert not done and not_done == {f}
    assert f.result(T) == 1


def test_mixed_with_a_thread_pool_future(pids: list[int]) -> None:
    with cf.ThreadPoolExecutor(1) as tp:
        local = tp.submit(sleep_then, 0.5, "thread")
        remote = remotecall(square, pids[0], 5)
        first = next(cf.as_completed([local, remote], timeout=T))
        assert first is remote
        assert local.result(T) == "thread"


def test_done_callbacks(pids: list[int]) -> None:
    got: list[Any] = []
    event = threading.Event()

    def cb(f: cf.Future[Any]) -> None:
        got.append((f.result(), threading.current_thread().name))
        event.set()

    f = remotecall(sleep_then, pids[0], 0.2, "v")
    f.add_done_callback(cb)
    assert event.wait(T)
    assert got == [("v", "pydist-futures")]  # never on a thread that reads messages
    got.clear()
    f.add_done_callback(cb)  # done already: at once, here
    assert got == [("v", threading.current_thread().name)]


def test_a_callback_may_make_remote_calls(pids: list[int]) -> None:
    out: list[Any] = []
    event = threading.Event()

    def cb(f: cf.Future[Any]) -> None:
        out.append(remotecall_fetch(square, pids[0], f.result()))
        event.set()

    remotecall(square, pids[0], 3).add_done_callback(cb)
    assert event.wait(T) and out == [81]


def test_a_failing_callback_is_logged_not_raised(
    pids: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    def bad(f: cf.Future[Any]) -> None:
        raise RuntimeError("callback failed")

    f = Future()
    f.add_done_callback(bad)
    f.set_result(1)
    assert f.result(0) == 1
    wait_until(lambda: "callback failed" in caplog.text, T, what="the log line")


def test_local_future_set_result_and_set_exception() -> None:
    f = Future()
    assert f.running() and not f.done()
    f.set_result(5)
    assert f.result(0) == 5
    with pytest.raises(cf.InvalidStateError):
        f.set_result(6)
    g = Future()
    g.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        g.result(0)
    with pytest.raises(RemoteException):
        g.fetch()


def test_local_future_wakes_a_waiter_when_put_from_another_thread() -> None:
    f = Future()
    t = threading.Timer(0.1, f.put, ("x",))
    t.start()
    done, _ = cf.wait([f], timeout=T)
    assert done == {f} and f.result(0) == "x"
    t.join(T)


def test_a_future_made_elsewhere_and_put_later(pids: list[int]) -> None:
    f = Future(pids[0])  # lives on the worker, set by a call from the other worker
    later = remotecall(_put_later, pids[1], f, "set there")
    done, _ = cf.wait([f], timeout=T)
    assert done == {f} and f.result(0) == "set there"
    later.result(T)


def _put_later(f: Future, value: Any) -> None:
    time.sleep(0.2)
    f.put(value)


def test_a_worker_waits_on_a_future_of_the_master(pids: list[int]) -> None:
    f = remotecall(sleep_then, pids[0], 0.3, 42)
    assert remotecall_fetch(result_of, pids[1], f) == 42  # pickled to worker 2, watched there
    assert fetch(f) == 42


def test_owner_exit_fails_a_watched_future(pids: list[int]) -> None:
    (extra,) = addprocs(1)
    try:
        f = remotecall(sleep_then, extra, 60, 1)
        done, _ = cf.wait([f], timeout=0.1)
        assert not done
        rmprocs(extra, waitfor=10)
        done, _ = cf.wait([f], timeout=T)
        assert done == {f}
        assert isinstance(f.exception(0), ProcessExitedException)
    finally:
        end_workers([extra])
