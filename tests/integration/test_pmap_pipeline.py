"""The pipelined pmap against real workers: several elements in flight per worker, run there one
after another in arrival order; dead workers with elements in flight; on_error in place; imap
in order and as they come; Ctrl-C with elements queued; progress."""

from __future__ import annotations

import itertools
import os
import pickle
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    ProcessExitedException,
    RemoteException,
    Task,
    imap,
    myid,
    pipeline,
    remotecall_fetch,
)
from pydistributed.cluster import current_cluster
from pydistributed.pmap import INTERRUPT_GRACE, pmap
from pydistributed.workerpool import WorkerPool
from tests.conftest import in_thread, wait_until

pytestmark = pytest.mark.timeout(120)

T = 60.0  # the timeout of blocking calls expected to succeed


def _observed(x: int) -> tuple[int, int, int, float, float, int]:
    """Runs on a worker: ``(x, worker, thread, start, end, queued)``; ``queued``: how many
    elements of pipelined maps had arrived there and were waiting, when this one started."""
    serial = current_cluster().dispatch.serial
    queued = sum(len(q.items) for q in list(serial._queues.values()))
    t0 = time.perf_counter()
    s = 0
    for i in range(200):  # a little work, so that the elements have a length
        s += i
    return x, myid(), threading.get_ident(), t0, time.perf_counter(), queued


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    n = best = 0
    for _, d in events:
        n += d
        best = max(best, n)
    return best


def test_elements_in_flight_run_one_after_another_in_arrival_order(shared: list[int]) -> None:
    n = 20_000
    given_back = pipeline.stats["given back"]
    out = Task(pmap, _observed, range(n)).start().fetch(timeout=T)
    given_back = pipeline.stats["given back"] - given_back
    assert [r[0] for r in out] == list(range(n))  # the results in input order
    by_worker: dict[int, list[tuple[int, int, int, float, float, int]]] = {}
    for r in out:
        by_worker.setdefault(r[1], []).append(r)
    assert set(by_worker) == set(shared)
    for runs in by_worker.values():
        if len(runs) >= 2000:
            # several elements were there at once: some waited behind the one running...
            assert max(r[5] for r in runs) > 1, max(r[5] for r in runs)
        # ...yet they ran one at a time, in the order they arrived: input order per worker,
        # except that elements an idle worker took back from another (pipeline._steal_for, a
        # stall of the busy one at the map's end) arrive after its own, in input order again
        assert _max_overlap([(r[3], r[4]) for r in runs]) == 1
        started = [r[0] for r in sorted(runs, key=lambda r: r[3])]
        rising_runs = 1 + sum(1 for a, b in itertools.pairwise(started) if b < a)
        assert rising_runs <= 1 + given_back, (rising_runs, given_back)


def test_slow_elements_go_one_at_a_time(shared: list[int]) -> None:
    def slow(x: int) -> tuple[int, int]:
        serial = current_cluster().dispatch.serial
        queued = sum(len(q.items) for q in list(serial._queues.values()))
        time.sleep(0.05)
        return x, queued

    out = pmap(slow, range(12))
    assert [x for x, _ in out] == list(range(12))
    # the window stays at one when an element takes many round trips: none waits on a worker
    # while another worker could run it (after the first element of each worker)
    assert sum(q for _, q in out) <= 1, out


def _die_after(victim: int, n: int, log: str) -> Callable[[int], int]:
    """``f(x)``: logs ``x`` in ``log/<worker>``; worker ``victim`` dies at its ``n``-th element,
    once several are in flight there (an element takes about a round trip: a window of a few)."""

    def f(x: int) -> int:
        me = myid()
        f.count = getattr(f, "count", 0) + 1  # type: ignore[attr-defined]
        if me == victim and f.count >= n:  # type: ignore[attr-defined]
            os._exit(1)
        with open(os.path.join(log, str(me)), "a") as fh:
            fh.write(f"{x}\n")
        time.sleep(0.0003)
        return x * 2

    return f


def _runs(log: Path) -> tuple[Counter[int], dict[int, set[int]]]:
    counts: Counter[int] = Counter()
    where: dict[int, set[int]] = {}
    for p in log.iterdir():
        for line in p.read_text().split():
            counts[int(line)] += 1
            where.setdefault(int(p.name), set()).add(int(line))
    return counts, where


def test_a_worker_dying_with_elements_in_flight_with_retries(
    add_workers: Callable[..., list[int]], tmp_path: Path
) -> None:
    pids = add_workers(2)
    victim = pids[0]
    f = _die_after(victim, 100, str(tmp_path))
    out = Task(pmap, f, WorkerPool(pids), range(2000), retry_delays=[0]).start().fetch(timeout=T)
    assert out == [x * 2 for x in range(2000)]  # none lost
    assert current_cluster().registry.is_dead(victim)
    counts, where = _runs(tmp_path)
    assert set(counts) == set(range(2000))
    # an element ran twice only if it was retried: its first run was on the victim
    twice = {x for x, n in counts.items() if n > 1}
    assert all(counts[x] == 2 for x in twice)
    assert twice <= where.get(victim, set())


def test_a_worker_dying_with_elements_in_flight_without_retries(
    add_workers: Callable[..., list[int]], tmp_path: Path
) -> None:
    pids = add_workers(3)
    pool = WorkerPool(pids)
    f = _die_after(pids[0], 100, str(tmp_path))
    with pytest.raises(ProcessExitedException):
        Task(pmap, f, pool, range(2000)).start().fetch(timeout=T)
    # with on_error: every element in flight on the dead worker gets on_error's value, in place
    g = _die_after(pids[1], 100, str(tmp_path))
    out = Task(pmap, g, pool, range(2000), on_error=lambda e: type(e).__name__).start()
    got = out.fetch(timeout=T)
    lost = [i for i, v in enumerate(got) if v == "ProcessExitedException"]
    assert len(lost) > 1, lost  # several were in flight there
    assert all(got[i] == i * 2 for i in range(2000) if i not in lost)
    assert pmap(lambda x: x + 1, pool, range(5)) == [1, 2, 3, 4, 5]  # the survivor carries on


def _odd_or_error(x: int) -> int:
    if x % 7 == 0:
        raise ValueError(f"no {x}")
    return x


def test_on_error_values_in_place_and_retries_of_quick_elements(shared: list[int]) -> None:
    out = pmap(_odd_or_error, range(2000), on_error=lambda e: str(e))
    assert out == [f"no {x}" if x % 7 == 0 else x for x in range(2000)]
    # without on_error the first error to come back stops the map: an element's own error
    # (which one depends on which worker answers first: 0 and 7 go to different workers)
    with pytest.raises(RemoteException, match=r"ValueError: no \d+") as raised:
        pmap(_odd_or_error, range(2000))
    found = re.search(r"ValueError: no (\d+)", str(raised.value))
    assert found is not None
    failed = int(found.group(1))
    assert failed % 7 == 0 and 0 <= failed < 2000
    # retries that still fail end in on_error, each element in its place
    out = pmap(_odd_or_error, range(500), on_error=lambda e: -1, retry_delays=[0, 0])
    assert out == [-1 if x % 7 == 0 else x for x in range(500)]
    # batches with failures: each failed element on its own, in its place
    out = pmap(_odd_or_error, range(500), batch_size=50, on_error=lambda e: -1)
    assert out == [-1 if x % 7 == 0 else x for x in range(500)]


def test_an_argument_that_cannot_be_pickled(shared: list[int]) -> None:
    args: list[Any] = list(range(100))
    args[37] = threading.Lock()
    with pytest.raises(pickle.PicklingError, match="argument 1"):
        pmap(lambda x: 1, args)
    out = pmap(lambda x: 1, args, on_error=lambda e: type(e).__name__)
    assert out == [1] * 37 + ["PicklingError"] + [1] * 62


def test_order_with_elements_of_different_lengths(shared: list[int]) -> None:
    def f(x: int) -> int:
        if x % 97 == 0:
            time.sleep(0.02)
        return -x

    assert pmap(f, range(1000)) == [-x for x in range(1000)]
    assert list(imap(f, range(1000))) == [-x for x in range(1000)]
    assert sorted(imap(f, range(1000), ordered=False)) == sorted(-x for x in range(1000))


def test_imap_unordered_yields_in_completion_order(shared: list[int]) -> None:
    def f(x: int) -> int:
        if x == 0:
            time.sleep(1.0)
        return x

    got = list(imap(f, range(40), ordered=False))
    assert sorted(got) == list(range(40))
    assert got[-1] == 0  # the slow first element came last
    assert list(imap(f, range(40))) == list(range(40))  # in order: it waits for the first
    # several iterables, a pool, batches
    assert sorted(imap(lambda a, b: a * b, range(10), range(10), ordered=False)) == [
        x * x for x in range(10)
    ]
    pool = WorkerPool(shared)
    assert list(imap(lambda x: x + 1, pool, range(10), batch_size=3)) == list(range(1, 11))


def test_imap_reads_ahead_a_bounded_amount_and_stops_when_closed(shared: list[int]) -> None:
    consumed: list[int] = []

    def gen() -> Iterator[int]:
        for i in range(100_000):
            consumed.append(i)
            yield i

    it = imap(lambda x: x, gen(), ordered=False)
    assert consumed == []  # nothing runs before the first next()
    first = [next(it) for _ in range(10)]
    assert len(first) == 10
    assert len(consumed) < 5000, len(consumed)  # windows, not the whole input
    it.close()  # type: ignore[attr-defined]
    n = len(consumed)
    # the workers are free again, and nothing more is read
    assert [remotecall_fetch(myid, w) for w in shared] == shared
    assert pmap(lambda x: x, range(10)) == list(range(10))
    assert len(consumed) == n


def test_imap_checks_its_arguments_at_once(shared: list[int]) -> None:
    with pytest.raises(ValueError):
        imap(lambda x: x, range(3), batch_size=0)
    with pytest.raises(TypeError):
        imap(3, range(3))  # type: ignore[arg-type]


def test_progress_counts_every_element(
    shared: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert pmap(lambda x: x, range(3000), progress=True) == list(range(3000))
    assert "3000/3000" in capsys.readouterr().err
    assert sorted(imap(lambda x: x, range(700), ordered=False, progress=True)) == list(range(700))
    assert "700/700" in capsys.readouterr().err
    out = pmap(_odd_or_error, range(300), on_error=lambda e: 0, progress=True, batch_size=7)
    assert len(out) == 300
    assert "300/300" in capsys.readouterr().err


def test_ctrl_c_drops_the_queued_elements_and_interrupts_the_running(
    shared: list[int], tmp_path: Path
) -> None:
    main = threading.main_thread()
    assert threading.current_thread() is main
    marks = str(tmp_path)

    def element(x: int) -> int:
        if x % 200 == 100:  # each worker soon runs one of these, with others queued behind
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
            pmap(element, range(100_000))
    finally:
        ctrl_c.join(T)
        if handler is not None:
            signal.signal(signal.SIGINT, handler)
    elapsed = time.monotonic() - sent[0]
    assert outcome == [None], outcome
    assert elapsed < INTERRUPT_GRACE - 0.5, elapsed  # the interrupted ones came back
    # the workers are free and serve at once (nothing queued there runs any more)
    assert [remotecall_fetch(myid, w) for w in shared] == shared
    assert pmap(lambda x: x * 2, range(100)) == [x * 2 for x in range(100)]


def test_a_pool_shared_by_two_maps_at_once(shared: list[int]) -> None:
    pool = WorkerPool(shared)

    def slowish(x: int) -> int:
        time.sleep(0.002)
        return myid()

    a = Task(pmap, slowish, pool, range(600)).start()
    b = Task(pmap, slowish, pool, range(600)).start()
    ra, rb = a.fetch(timeout=T), b.fetch(timeout=T)
    assert len(ra) == len(rb) == 600
    # workers go back to the pool now and then, so each map gets its turn on both
    assert set(ra) | set(rb) == set(shared)
