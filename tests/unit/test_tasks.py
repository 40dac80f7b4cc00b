"""Unit tests of pydistributed.tasks: Task, async_, sync, register_sync, timedwait."""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import Any

import pytest

from pydistributed.errors import CompositeException
from pydistributed.tasks import Task, async_, register_sync, sync, timedwait

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup

pytestmark = pytest.mark.timeout(30)

T = 10.0  # the timeout of every blocking call that is expected to succeed


def _raise(exc: BaseException) -> None:
    raise exc


def _blocked(event: threading.Event) -> str:
    """A task body that runs until the test sets ``event``."""
    assert event.wait(T), "test never released the task"
    return "released"


class FakeFuture:
    """A registered object that is not a Task: what remote Futures look like to sync()."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.waits = 0

    def _sync_wait(self, timeout: float | None = None) -> BaseException | None:
        self.waits += 1
        return self.error


# -- Task ------------------------------------------------------------------------------------


def test_task_is_not_started_until_start() -> None:
    ran = threading.Event()
    t = Task(ran.set)
    assert not t.started() and not t.done() and not t.failed()
    assert "runnable" in repr(t)
    with pytest.raises(TimeoutError):
        t.wait(timeout=0.05)
    assert not ran.is_set()
    assert t.start() is t
    t.wait(timeout=T)
    assert ran.is_set() and t.started() and t.done() and not t.failed()


def test_task_fetch_returns_result_with_args_and_kwargs() -> None:
    def f(a: int, b: int, *, fn: str) -> tuple[int, int, str]:
        return a, b, fn

    t = Task(f, 1, 2, fn="kw named fn").start()
    assert t.fetch(timeout=T) == (1, 2, "kw named fn")
    assert t.exception() is None
    assert "(done)" in repr(t)


def test_task_start_twice_raises() -> None:
    t = Task(lambda: None).start()
    with pytest.raises(RuntimeError, match="already started"):
        t.start()
    t.wait(timeout=T)


def test_task_runs_on_a_named_daemon_thread() -> None:
    t = Task(threading.current_thread).start()
    thread = t.fetch(timeout=T)
    assert "pydist-task" in thread.name
    assert thread.daemon
    assert thread is not threading.current_thread()


def test_task_failure_raises_the_same_exception_object() -> None:
    err = ValueError("boom")
    t = Task(_raise, err).start()
    with pytest.raises(ValueError) as info:
        t.wait(timeout=T)
    assert info.value is err
    with pytest.raises(ValueError) as info:
        t.fetch(timeout=T)
    assert info.value is err
    assert t.done() and t.failed()
    assert t.exception() is err
    assert "(failed)" in repr(t)


def test_task_wait_timeout_leaves_the_task_running() -> None:
    release = threading.Event()
    t = Task(_blocked, release).start()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        t.fetch(timeout=0.1)
    assert time.monotonic() - start >= 0.09
    assert not t.done()
    assert t.exception() is None  # never blocks, None while running
    release.set()
    assert t.fetch(timeout=T) == "released"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_task_captures_base_exceptions(
    exc_type: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    hooked: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)
    err = exc_type("stop")
    t = Task(_raise, err).start()
    with pytest.raises(exc_type) as info:
        t.wait(timeout=T)
    assert info.value is err
    assert t.failed() and t.exception() is err
    assert hooked == []  # captured by the task, not left to the thread machinery


def test_task_cannot_wait_for_itself() -> None:
    box: list[Task[Any]] = []
    started = threading.Event()

    def body() -> None:
        assert started.wait(T)
        box[0].wait(timeout=T)

    t = Task(body)
    box.append(t)
    t.start()
    started.set()
    with pytest.raises(RuntimeError, match="cannot wait for itself"):
        t.wait(timeout=T)


# -- async_ ----------------------------------------------------------------------------------


def test_async_tasks_run_concurrently() -> None:
    # Each task can pass the barrier only while the other one is running too.
    barrier = threading.Barrier(2, timeout=T)
    a = async_(barrier.wait)
    b = async_(barrier.wait)
    assert a.started() and b.started()
    assert sorted([a.fetch(timeout=T), b.fetch(timeout=T)]) == [0, 1]


def test_async_outside_sync_returns_a_started_task() -> None:
    t = async_(lambda x, y=0: x + y, 1, y=2)
    assert t.fetch(timeout=T) == 3


# -- sync ------------------------------------------------------------------------------------


def test_sync_waits_for_everything_started_in_it() -> None:
    finished: list[int] = []

    def work(i: int) -> None:
        time.sleep(0.05 * (3 - i))
        finished.append(i)

    with sync(timeout=T) as s:
        tasks = [async_(work, i) for i in range(3)]
        assert finished == []
    assert isinstance(s, sync)
    assert s.objects == tuple(tasks)
    assert sorted(finished) == [0, 1, 2]
    assert all(t.done() for t in tasks)


def test_sync_with_nothing_started() -> None:
    with sync() as s:
        pass
    assert s.objects == ()


def test_nested_sync() -> None:
    release_outer = threading.Event()
    with sync(timeout=T) as outer:
        slow = async_(_blocked, release_outer)
        with sync(timeout=T) as inner:
            fast = async_(time.sleep, 0.05)
        # The inner block waited for its own task only.
        assert fast.done()
        assert not slow.done()
        release_outer.set()
    assert slow.done()
    assert inner.objects == (fast,)
    assert outer.objects == (slow, fast)


def test_sync_collects_errors_in_registration_order() -> None:
    first, second = ValueError("first"), KeyError("second")
    gate = threading.Event()

    def fail_late(e: BaseException) -> None:
        assert gate.wait(T)
        raise e

    def fail_early(e: BaseException) -> None:
        gate.set()  # fails before the task registered first does
        raise e

    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            async_(fail_late, first)
            async_(lambda: None)
            async_(fail_early, second)
    assert isinstance(info.value, ExceptionGroup)
    assert list(info.value.exceptions) == [first, second]
    assert info.value.exceptions[0] is first and info.value.exceptions[1] is second


def test_sync_wraps_a_task_base_exception() -> None:
    ki = KeyboardInterrupt()
    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            async_(_raise, ki)
    (member,) = info.value.exceptions
    assert member.__cause__ is ki


def test_sync_body_exception_without_task_errors_is_reraised_unchanged() -> None:
    body_err = RuntimeError("body")
    release = threading.Event()
    with pytest.raises(RuntimeError) as info:
        with sync(timeout=T):
            t = async_(_blocked, release)
            threading.Timer(0.05, release.set).start()
            raise body_err
    assert info.value is body_err
    assert t.done()  # waited for, although the body raised


def test_sync_body_exception_and_task_errors() -> None:
    body_err, task_err = RuntimeError("body"), ValueError("task")
    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            async_(_raise, task_err)
            raise body_err
    assert list(info.value.exceptions) == [body_err, task_err]


def test_sync_body_reraising_a_task_error_is_not_reported_twice() -> None:
    err = ValueError("task")
    with pytest.raises(ValueError) as info:
        with sync(timeout=T):
            t = async_(_raise, err)
            t.wait(timeout=T)
    assert info.value is err


def test_nested_sync_error_passes_through_outer_unchanged() -> None:
    err = ValueError("inner")
    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            with sync(timeout=T):
                async_(_raise, err)
    assert list(info.value.exceptions) == [err]
    assert info.value.__cause__ is None


def test_nested_sync_error_is_flattened_with_new_outer_errors() -> None:
    outer_err, inner_err = KeyError("outer"), ValueError("inner")
    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            async_(_raise, outer_err)
            with sync(timeout=T):
                async_(_raise, inner_err)
    # The body's exception (the inner CompositeException) first, then the new failures.
    assert list(info.value.exceptions) == [inner_err, outer_err]
    assert not any(isinstance(e, CompositeException) for e in info.value.exceptions)


def test_nested_sync_dedup_of_wrapped_base_exception() -> None:
    ki, other = KeyboardInterrupt(), ValueError("outer")
    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            async_(_raise, other)
            with sync(timeout=T):
                async_(_raise, ki)
    members = info.value.exceptions
    assert len(members) == 2
    assert members[0].__cause__ is ki
    assert members[1] is other


def test_sync_body_keyboard_interrupt_is_not_turned_into_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ki, task_err = KeyboardInterrupt(), ValueError("task")
    with caplog.at_level(logging.WARNING, logger="pydistributed.tasks"):
        with pytest.raises(KeyboardInterrupt) as info:
            with sync(timeout=T):
                t = async_(_raise, task_err)
                raise ki
    assert info.value is ki
    assert t.done()
    assert "task failure" in caplog.text


def test_sync_does_not_collect_other_threads_work() -> None:
    release = threading.Event()
    box: dict[str, Any] = {}

    def other_thread() -> None:
        box["task"] = async_(_blocked, release)
        box["registered"] = register_sync(FakeFuture(ValueError("not mine")))

    with sync(timeout=T) as s:
        th = threading.Thread(target=other_thread)
        th.start()
        th.join(T)
        assert not th.is_alive()
    # The block exited although the other thread's task is still blocked.
    assert s.objects == ()
    assert not box["task"].done()
    assert box["registered"].waits == 0
    release.set()
    box["task"].wait(timeout=T)


def test_sync_in_another_thread_does_not_collect_ours() -> None:
    release = threading.Event()
    entered, exited = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def other_thread() -> None:
        with sync(timeout=T) as s:
            entered.set()
            time.sleep(0.1)
        box["objects"] = s.objects
        exited.set()

    th = threading.Thread(target=other_thread)
    th.start()
    assert entered.wait(T)
    mine = async_(_blocked, release)
    assert exited.wait(T)
    th.join(T)
    assert box["objects"] == ()
    release.set()
    mine.wait(timeout=T)


def test_register_sync_outside_a_block_is_a_no_op() -> None:
    fut = FakeFuture(ValueError("never waited"))
    assert register_sync(fut) is fut
    assert fut.waits == 0
    with sync() as s:
        pass
    assert s.objects == ()


def test_register_sync_rejects_objects_without_the_hook() -> None:
    with pytest.raises(TypeError, match="_sync_wait"):
        register_sync(object())  # type: ignore[type-var]


def test_sync_waits_for_registered_futures_once_each() -> None:
    err = ValueError("remote")
    good, bad = FakeFuture(), FakeFuture(err)
    with pytest.raises(CompositeException) as info:
        with sync():
            register_sync(good)
            register_sync(bad)
            register_sync(bad)
    assert list(info.value.exceptions) == [err]
    assert good.waits == 1 and bad.waits == 1


def test_same_error_from_two_objects_is_reported_once() -> None:
    err = ValueError("shared")
    with pytest.raises(CompositeException) as info:
        with sync():
            register_sync(FakeFuture(err))
            register_sync(FakeFuture(err))
    assert list(info.value.exceptions) == [err]


def test_sync_timeout() -> None:
    release = threading.Event()
    err = ValueError("done early")
    block = sync(timeout=0.1)
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="1 of 2 still running") as info:
        with block:
            t = async_(_blocked, release)
            async_(_raise, err)
    assert 0.09 <= time.monotonic() - start < T
    assert isinstance(info.value.__cause__, CompositeException)
    assert list(info.value.__cause__.exceptions) == [err]
    assert not t.done()
    # The block left the stack although its wait raised.
    register_sync(FakeFuture())
    assert len(block.objects) == 2
    release.set()
    t.wait(timeout=T)


def test_sync_block_cannot_be_entered_twice_at_once_but_can_be_reused() -> None:
    block = sync()
    with block:
        with pytest.raises(RuntimeError, match="already active"):
            with block:
                pass
    with block:
        t = async_(lambda: 1)
    assert block.objects == (t,)


# -- timedwait -------------------------------------------------------------------------------


def test_timedwait_ok_at_once_calls_testcb_once() -> None:
    calls: list[float] = []

    def cb() -> bool:
        calls.append(time.monotonic())
        return True

    assert timedwait(cb, 5.0) == "ok"
    assert len(calls) == 1


def test_timedwait_ok_after_polling() -> None:
    done = threading.Event()
    threading.Timer(0.1, done.set).start()
    start = time.monotonic()
    assert timedwait(done.is_set, T, pollint=0.01) == "ok"
    assert time.monotonic() - start < T


def test_timedwait_timed_out() -> None:
    calls = 0

    def cb() -> bool:
        nonlocal calls
        calls += 1
        return False

    start = time.monotonic()
    assert timedwait(cb, 0.2, pollint=0.05) == "timed_out"
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 2.0
    assert calls >= 3


def test_timedwait_negative_secs_tests_once() -> None:
    calls = 0

    def cb() -> bool:
        nonlocal calls
        calls += 1
        return False

    assert timedwait(cb, -1.0) == "timed_out"
    assert calls == 1


def test_timedwait_pollint_zero_is_accepted() -> None:
    assert timedwait(lambda: False, 0.02, pollint=0) == "timed_out"


@pytest.mark.parametrize("pollint", [-0.1, math.nan])
def test_timedwait_rejects_bad_pollint(pollint: float) -> None:
    with pytest.raises(ValueError, match="pollint"):
        timedwait(lambda: True, 1.0, pollint=pollint)


def test_timedwait_rejects_nan_secs() -> None:
    with pytest.raises(ValueError, match="secs"):
        timedwait(lambda: True, math.nan)


def test_timedwait_propagates_testcb_errors() -> None:
    err = ZeroDivisionError()
    with pytest.raises(ZeroDivisionError) as info:
        timedwait(lambda: _raise(err), 1.0)
    assert info.value is err


@pytest.mark.parametrize("bad", ["1", True, None, [1]])
def test_timedwait_refuses_what_is_not_a_number_naming_it(bad: Any) -> None:
    called: list[int] = []
    with pytest.raises(TypeError, match=r"^timedwait: secs must be a number of seconds"):
        timedwait(lambda: called.append(1), bad)
    with pytest.raises(TypeError, match=r"^timedwait: pollint must be a number of seconds"):
        timedwait(lambda: called.append(1), 1.0, pollint=bad)
    assert called == []  # refused before testcb ran


@pytest.mark.parametrize(
    ("bad", "error"), [("1", TypeError), (False, TypeError), (math.nan, ValueError)]
)
def test_task_wait_and_sync_refuse_a_bad_timeout(bad: Any, error: type[Exception]) -> None:
    release = threading.Event()
    t = Task(_blocked, release).start()
    try:
        for call in (lambda: t.wait(bad), lambda: t.fetch(bad), lambda: sync(bad)):
            with pytest.raises(error, match=r"^timeout must be a number of seconds"):
                call()
    finally:
        release.set()
    assert t.fetch(timeout=T) == "released"
    with pytest.raises(TimeoutError, match=r"still running after 0\.05 s$"), sync(0.0500001):
        async_(time.sleep, 0.5)
