"""pmap's batches against real workers, on the paths that make a small batched map quick: a
``batch_size="auto"`` map of known length sent all at once (its messages marked as the last),
a function sent by name instead of through the map's function cache, a list batched by
slicing, and the quick path of a batch on the worker (``batchcall.py``). Every option keeps its
meaning there: retries and on_error when a worker dies with every batch of the map on it, errors
of single elements, Ctrl-C, order, imap."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    ProcessExitedException,
    Task,
    imap,
    myid,
    pipeline,
    remotecall_fetch,
)
from pydistributed.cluster import current_cluster
from pydistributed.funccache import _STORED
from pydistributed.mapping import auto_size
from pydistributed.pmap import INTERRUPT_GRACE, pmap
from pydistributed.workerpool import WorkerPool
from tests.conftest import in_thread, wait_until

pytestmark = pytest.mark.timeout(120)

T = 60.0  # the timeout of blocking calls expected to succeed


def _die_on(victim: int, x: int) -> int:
    """Worker ``victim`` dies at the first element it runs; the others double ``x``."""
    if myid() == victim:
        os._exit(1)
    return 2 * x


def test_a_small_auto_map_whose_worker_dies_is_retried_elsewhere(
    add_workers: Callable[..., list[int]],
) -> None:
    pids = add_workers(2)
    victim = pids[0]
    n = 2000  # 8 batches, all sent at once: 4 of them on the victim
    out = Task(
        pmap,
        _die_on,
        WorkerPool(pids),
        [victim] * n,
        list(range(n)),
        batch_size="auto",
        retry_delays=[0],
    ).start()
    assert out.fetch(timeout=T) == [2 * x for x in range(n)]  # none lost, each in its place
    assert current_cluster().registry.is_dead(victim)


def test_a_small_auto_map_whose_worker_dies_with_on_error(
    add_workers: Callable[..., list[int]],
) -> None:
    pids = add_workers(2)
    victim = pids[0]
    n = 2000
    with pytest.raises(ProcessExitedException):
        Task(
            pmap, _die_on, WorkerPool(pids), [victim] * n, range(n), batch_size="auto"
        ).start().fetch(timeout=T)
    more = add_workers(1)
    pool = WorkerPool([pids[1], more[0]])
    out = Task(
        pmap,
        _die_on,
        pool,
        [more[0]] * n,
        list(range(n)),
        batch_size="auto",
        on_error=lambda e: type(e).__name__,
    ).start()
    got = out.fetch(timeout=T)
    lost = [i for i, v in enumerate(got) if v == "ProcessExitedException"]
    # every element of the dead worker's batches got on_error's value, in its place
    assert len(lost) >= auto_size(n, 2), len(lost)
    assert all(got[i] == 2 * i for i in range(n) if i not in lost)
    assert pmap(lambda x: x + 1, WorkerPool([pids[1]]), range(5)) == [1, 2, 3, 4, 5]


def _odd_or_error(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"no {x}")
    return x


def test_errors_in_a_small_batched_map(shared: list[int]) -> None:
    xs = list(range(2000))
    want = [f"no {x}" if x % 7 == 0 else x for x in xs]
    assert pmap(_odd_or_error, xs, batch_size="auto", on_error=str) == want
    with pytest.raises(Exception, match=r"ValueError: no \d+"):  # the first to come back
        pmap(_odd_or_error, xs, batch_size="auto")
    # retries that still fail end in on_error, each element in its place
    out = pmap(_odd_or_error, xs, batch_size="auto", on_error=lambda e: -1, retry_delays=[0, 0])
    assert out == [-1 if x % 7 == 0 else x for x in xs]
    assert sorted(imap(_odd_or_error, xs, batch_size="auto", on_error=str, ordered=False), key=str)
    assert list(imap(_odd_or_error, xs, batch_size=33, on_error=str)) == want


def _inc(x: int) -> int:
    return x + 1


def test_batches_of_a_list_in_order(shared: list[int]) -> None:
    for n in (0, 1, 7, 100, 1001):
        xs = list(range(n))
        want = [x + 1 for x in xs]
        assert pmap(_inc, xs, batch_size="auto") == want
        assert pmap(_inc, xs, batch_size=7) == want
        assert pmap(_inc, tuple(xs), batch_size="auto") == want
        assert list(imap(_inc, xs, batch_size="auto")) == want
        assert sorted(imap(_inc, xs, batch_size=3, ordered=False)) == want
    assert pmap(lambda a, b: a * b, [1, 2, 3], [4, 5], batch_size="auto") == [4, 10]


_WAITERS = 8
_barrier: dict[str, threading.Barrier] = {}
_barrier_lock = threading.Lock()


def _quick_then_waiting(x: int) -> int:
    """Quick for ``x < 300``; the others wait for each other (on this worker, _WAITERS at a
    time): they only get through if they run at once, on threads of their own."""
    if x >= 300:
        with _barrier_lock:
            b = _barrier.setdefault("b", threading.Barrier(_WAITERS))
        b.wait(timeout=30)
    return x


def test_a_map_that_starts_with_waiting_elements(shared: list[int]) -> None:
    # the function ran quick in the map before, so the next map's first batch starts inline,
    # on the worker's word (batchcall._FUNCTIONS); its first element waits for the others: the
    # housekeeping tick hands the elements after it to an asyncmap, and all get through (the
    # barrier would break after 30 s otherwise)
    pool = WorkerPool(shared[:1])
    quick = list(range(300))
    assert pmap(_quick_then_waiting, pool, quick, batch_size="auto") == quick
    ys = list(range(300, 300 + _WAITERS)) + quick
    before = remotecall_fetch(_taken_over, shared[0])
    assert pmap(_quick_then_waiting, pool, ys, batch_size=len(ys)) == ys
    assert remotecall_fetch(_taken_over, shared[0]) > before  # it started inline
    assert pmap(_quick_then_waiting, pool, ys, batch_size="auto") == ys


def _taken_over() -> int:
    from pydistributed import batchcall

    return batchcall.stats["taken over"]


def test_a_later_batch_whose_elements_wait_for_each_other(shared: list[int]) -> None:
    # the map's first batches are quick, so its later ones run inline in chunks; one of them
    # holds _WAITERS elements that wait for each other, the first of them ahead of the rest in
    # its chunk: that used to wait for ever
    pool = WorkerPool(shared[:1])
    xs = list(range(200)) + list(range(300, 300 + _WAITERS)) + list(range(200, 300))
    before = remotecall_fetch(_taken_over, shared[0])
    assert pmap(_quick_then_waiting, pool, xs, batch_size=100) == xs
    assert remotecall_fetch(_taken_over, shared[0]) > before


def test_a_batch_taken_over_keeps_its_order_and_its_errors() -> None:
    # in this process: BatchCall of a function known quick, whose first element waits for the
    # third (the housekeeping tick hands the second and third to an asyncmap)
    from pydistributed.batchcall import BatchCall

    ready = threading.Event()

    def element(x: int) -> int:
        if x == -1:
            assert ready.wait(T)
        elif x == -2:
            ready.set()
        elif x == -3:
            raise ValueError("element -3")
        elif x == -4:
            time.sleep(0.02)
        return x

    assert BatchCall(element, False, False)(list(range(50))) == list(range(50))
    batch = [-1, 7, -2, *range(100)]
    before = _taken_over()
    assert BatchCall(element, False, False)(batch) == batch
    assert _taken_over() > before  # it started inline, on the function's word
    ready.clear()
    with pytest.raises(ValueError, match="element -3"):
        BatchCall(element, False, False)([-1, 7, -2, -3, *range(100)])
    ready.clear()
    # quick elements, then slow ones in the same chunk of 256: handed on after a tick or two,
    # not run one after another (20 x 20 ms)
    slow = [-4] * 20
    before = _taken_over()
    assert BatchCall(element, False, False)([*range(300), *slow, *range(300)]) == [
        *range(300),
        *slow,
        *range(300),
    ]
    assert _taken_over() > before
    ready.clear()
    got = BatchCall(element, False, True)([-1, -3, -2, 5])  # capture: a Failed in its place
    assert got[0] == -1 and got[2:] == [-2, 5]
    assert "element -3" in str(got[1].captured)


def _cached_here(_: Any) -> int:
    """How many functions of function caches this worker holds (while it runs a map)."""
    return len(_STORED.get(current_cluster()))


def test_a_function_importable_by_name_is_not_cached_on_the_workers(shared: list[int]) -> None:
    assert set(pmap(_cached_here, range(40), batch_size="auto")) == {0}
    assert set(pmap(_cached_here, range(40))) == {0}
    # a function sent by value goes through the map's cache (once per worker; it leaves once
    # the worker has its last elements)
    with_value = 0
    got = pmap(lambda x: _cached_here(x) + with_value, WorkerPool(shared[:1]), range(40))
    assert got[0] == 1
    assert [remotecall_fetch(_cached_here, w, None) for w in shared] == [0, 0]


def test_ctrl_c_in_a_batched_map_sent_all_at_once(shared: list[int], tmp_path: Path) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main
    marks = str(tmp_path)
    n = 800
    size = auto_size(n, len(shared))

    def element(x: int) -> int:
        if x % size == 0 and x < 2 * size:  # the first element of each worker's first batch
            open(os.path.join(marks, f"sleep-{x}"), "w").close()
            time.sleep(60)
        return x

    sent: list[float] = []

    def ctrl_c_once_every_worker_sleeps() -> None:
        try:
            wait_until(
                lambda: len(os.listdir(marks)) >= len(shared),
                timeout=T,
                what="every worker to run a long element",
            )
        finally:
            sent.append(time.monotonic())
            signal.pthread_kill(main.ident, signal.SIGINT)  # type: ignore[arg-type]

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c, outcome = in_thread(ctrl_c_once_every_worker_sleeps)
    try:
        with pytest.raises(KeyboardInterrupt):
            pmap(element, list(range(n)), batch_size="auto")
    finally:
        ctrl_c.join(T)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
    elapsed = time.monotonic() - sent[0]
    assert outcome == [None], outcome
    assert elapsed < INTERRUPT_GRACE - 0.5, elapsed  # the interrupted ones came back
    assert [remotecall_fetch(myid, w) for w in shared] == shared
    assert pmap(lambda x: x * 2, list(range(100)), batch_size="auto") == [x * 2 for x in range(100)]


def _length(b: bytes) -> int:
    return len(b)


def test_messages_over_the_size_guard_go_element_by_element(
    add_workers: Callable[..., list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the guard is read when a connection opens: set it for the master and the workers
    monkeypatch.setenv("PYDIST_MAX_MESSAGE_BYTES", "100000")
    pool = WorkerPool(add_workers(2))
    # 8 batches of one element, 4 to a worker's message at once: 120 kB, over the guard
    xs = [bytes(30_000)] * 8
    assert pmap(_length, pool, xs, batch_size="auto") == [30_000] * 8
    # an element over the guard by itself fails alone, in its place
    ys = [bytes(10)] * 7 + [bytes(150_000)]
    out = pmap(_length, pool, ys, batch_size="auto", on_error=lambda e: type(e).__name__)
    assert out == [10] * 7 + ["PicklingError"]


def _slow_on(slow: int, x: int) -> tuple[int, int]:
    """CPU work (about 50 ms, not a sleep: a batch's waiting elements may share threads) on
    worker ``slow``; nothing elsewhere. Returns (who ran it, x). (At 20 ms, 1 run in 40 failed
    on a machine loaded by two busy loops: the round trips measured there put the steal off,
    4 of them, until the slow worker had fewer than two batches left.)"""
    if myid() == slow:
        s = 0
        for i in range(1_000_000):
            s += i
    return myid(), x


def test_batches_dealt_ahead_to_a_slow_worker_are_taken_back_by_an_idle_one(
    shared: list[int],
) -> None:
    """batch_size="auto" deals every batch out at once, 4 per worker; once the quick worker
    is idle it takes back the slow one's batches that have not started (MapCancel, then sent
    again): it runs more than its dealt half, and every result is there, in order."""
    slow, quick = shared
    n = 40  # 8 batches of 5: 20 elements dealt to each worker
    assert auto_size(n, 2) == 5
    given_back = pipeline.stats["given back"]
    out = pmap(_slow_on, [slow] * n, range(n), pool=WorkerPool(shared), batch_size="auto")
    assert [x for _, x in out] == list(range(n))
    ran = [who for who, _ in out]
    assert set(ran) <= {slow, quick}
    assert ran.count(quick) > n // 2, ran  # static dealing would give it exactly 20
    assert pipeline.stats["given back"] > given_back
