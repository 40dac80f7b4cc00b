"""Julia's macros as functions, with real workers: spawnat, spawn, fetchfrom, everywhere,
distributed, and ``sync``/``timedwait`` around them (issue 5).

The helpers that run remotely are defined inside the tests (closures and lambdas travel by
value), except the few module-level ones that a worker imports from this module by name.
"""

from __future__ import annotations

import operator
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pydistributed.channels import Channel
from pydistributed.cluster import current_cluster
from pydistributed.errors import CompositeException, RemoteException
from pydistributed.macros import distributed, everywhere, fetchfrom, nextproc, spawn, spawnat
from pydistributed.processes import myid, procs, workers
from pydistributed.remotecall import remotecall, remotecall_fetch
from pydistributed.remoteref import Future, RemoteChannel
from pydistributed.tasks import Task, async_, sync, timedwait

pytestmark = pytest.mark.timeout(60)

T = 20.0  # the timeout of every blocking call that is expected to succeed

AddWorkers = Callable[..., list[int]]


def _main_attr(name: str) -> Any:
    """A global of ``__main__`` on the process this runs on (``None`` if not set)."""
    return getattr(sys.modules["__main__"], name, None)


@pytest.fixture
def main_names() -> Iterator[list[str]]:
    """Names a test sets in the master's ``__main__`` through everywhere; removed afterwards."""
    names: list[str] = []
    yield names
    main = sys.modules["__main__"].__dict__
    for n in names:
        main.pop(n, None)


@pytest.fixture
def no_workers() -> None:
    if workers() != [1]:
        pytest.skip(f"workers left over by another test: {workers()}")


# -- spawnat, spawn, fetchfrom ---------------------------------------------------------------


def test_spawnat_runs_on_that_worker(two_workers: list[int]) -> None:
    w2, w3 = two_workers
    futs = {p: spawnat(p, myid) for p in (w2, w3)}
    assert all(isinstance(f, Future) for f in futs.values())
    assert {p: f.fetch(timeout=T) for p, f in futs.items()} == {w2: w2, w3: w3}


def test_spawnat_passes_arguments_and_keywords_named_like_its_own(
    two_workers: list[int],
) -> None:
    w = two_workers[0]

    def g(a: int, b: int = 0, *, p: str = "", f: str = "") -> tuple[Any, ...]:
        return myid(), a, b, p, f

    assert spawnat(w, g, 1, b=2, p="P", f="F").fetch(timeout=T) == (w, 1, 2, "P", "F")
    assert fetchfrom(w, g, 5, p="x") == (w, 5, 0, "x", "")


def test_spawnat_any_and_spawn_go_round_robin(add_workers: AddWorkers) -> None:
    pids = add_workers(3)
    for start in (lambda: spawn(myid), lambda: spawnat("any", myid)):
        seen = [start().fetch(timeout=T) for _ in range(3 * len(pids))]
        # any n consecutive calls visit each of the n workers once, in workers() order
        for i in range(0, len(seen), len(pids)):
            assert sorted(seen[i : i + len(pids)]) == pids
        assert seen[: len(pids)] * 3 == seen


def test_round_robin_state_lives_in_the_cluster(two_workers: list[int]) -> None:
    from pydistributed.macros import ROUND_ROBIN

    first = nextproc()
    assert ROUND_ROBIN.peek(current_cluster()) is not None
    assert nextproc() != first
    assert nextproc() == first


def test_spawn_and_fetchfrom_any_without_workers_run_on_process_1(no_workers: None) -> None:
    assert spawn(myid).fetch(timeout=T) == 1
    assert spawnat("any", myid).fetch(timeout=T) == 1
    assert fetchfrom("any", myid) == 1
    assert fetchfrom(1, os.getpid) == os.getpid()


def test_fetchfrom_returns_the_value_and_raises_remote_errors(two_workers: list[int]) -> None:
    w2, w3 = two_workers
    assert fetchfrom(w3, myid) == w3
    assert fetchfrom(w2, pow, 2, 10) == 1024
    with pytest.raises(RemoteException) as info:
        fetchfrom(w3, operator.truediv, 1, 0)
    assert info.value.pid == w3
    assert isinstance(info.value.captured.exc, ZeroDivisionError)
    assert str(info.value).startswith(f"On worker {w3}:")


def test_a_failing_spawnat_raises_at_fetch(two_workers: list[int]) -> None:
    fut = spawnat(two_workers[1], operator.truediv, 1, 0)
    with pytest.raises(RemoteException) as info:
        fut.fetch(timeout=T)
    assert info.value.pid == two_workers[1]


@pytest.mark.parametrize("p", ["all", "", "ANY"])
def test_spawnat_rejects_other_strings(p: str) -> None:
    with pytest.raises(ValueError, match='"any"'):
        spawnat(p, myid)
    with pytest.raises(ValueError, match='"any"'):
        fetchfrom(p, myid)


def test_spawnat_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        spawnat(2.0, myid)  # type: ignore[arg-type]


# -- everywhere ------------------------------------------------------------------------------


def test_everywhere_defines_functions_and_imports_usable_later(
    two_workers: list[int], main_names: list[str]
) -> None:
    main_names += ["_ew_f", "_ew_g", "_ew_statistics"]
    everywhere(
        "import statistics as _ew_statistics\n"
        "def _ew_f(x):\n"
        "    return (_ew_statistics.mean([x, 3 * x]), __import__('pydistributed').myid())\n"
    )
    for p in two_workers:
        assert remotecall_fetch(lambda: __import__("__main__")._ew_f(3), p) == (6, p)
    # the master was included
    assert _main_attr("_ew_f")(1) == (2, 1)
    # a later everywhere sees what an earlier one defined
    everywhere("def _ew_g(x):\n    return _ew_f(x)[0] + 1")
    assert [fetchfrom(p, lambda: __import__("__main__")._ew_g(5)) for p in procs()] == [11] * 3


def test_everywhere_sets_bindings_first(two_workers: list[int], main_names: list[str]) -> None:
    main_names += ["_ew_foo", "_ew_bar", "_ew_data"]
    foo = 21
    everywhere("_ew_bar = _ew_foo * 2", _ew_foo=foo, _ew_data={"k": [1, 2]})
    for p in [1, *two_workers]:
        got = remotecall_fetch(lambda: (_main_attr("_ew_bar"), _main_attr("_ew_data")), p)
        assert got == (42, {"k": [1, 2]})


def test_everywhere_with_a_callable_and_arguments(
    two_workers: list[int], main_names: list[str]
) -> None:
    main_names += ["_ew_seen"]

    def record(a: int, b: int) -> str:
        sys.modules["__main__"]._ew_seen = (myid(), a + b)  # type: ignore[attr-defined]
        return "dropped"

    assert everywhere(record, 2, 3) is None
    for p in [1, *two_workers]:
        assert fetchfrom(p, _main_attr, "_ew_seen") == (p, 5)


def test_everywhere_procs_subset_and_single_id(
    two_workers: list[int], main_names: list[str]
) -> None:
    w2, w3 = two_workers
    main_names += ["_ew_only"]
    everywhere("_ew_only = 'w2'", procs=w2)
    everywhere("_ew_only = 'w3'", procs=[w3])
    assert fetchfrom(w2, _main_attr, "_ew_only") == "w2"
    assert fetchfrom(w3, _main_attr, "_ew_only") == "w3"
    assert _main_attr("_ew_only") is None  # the master was not in procs
    everywhere("_ew_only = 'none'", procs=[])  # nothing to do


def test_everywhere_errors_arrive_as_one_composite_naming_each_process(
    two_workers: list[int],
) -> None:
    w2, w3 = two_workers
    with pytest.raises(CompositeException) as info:
        everywhere("raise KeyError(__import__('pydistributed').myid())")
    excs = info.value.exceptions
    assert [type(e) for e in excs] == [RemoteException] * 3
    assert [e.pid for e in excs] == [1, w2, w3]  # in the order of procs(), the master too
    assert [e.captured.exc.args for e in excs] == [(1,), (w2,), (w3,)]


def test_everywhere_only_the_failing_processes_are_reported(two_workers: list[int]) -> None:
    w3 = two_workers[1]

    def fail_on_w3() -> None:
        if myid() == w3:
            raise RuntimeError("no")

    with pytest.raises(CompositeException) as info:
        everywhere(fail_on_w3)
    assert [(type(e), e.pid) for e in info.value.exceptions] == [(RemoteException, w3)]


def test_everywhere_syntax_error_is_raised_here_before_sending(two_workers: list[int]) -> None:
    with pytest.raises(SyntaxError):
        everywhere("def broken(:\n    pass")


def test_everywhere_rejects_arguments_with_a_string() -> None:
    with pytest.raises(TypeError):
        everywhere("x = 1", 2, procs=[1])
    with pytest.raises(TypeError):
        everywhere("x = 1", procs=["2"])  # type: ignore[list-item]


def test_everywhere_refuses_an_id_that_never_was_a_process_before_anything_runs(
    two_workers: list[int], main_names: list[str]
) -> None:
    main_names.append("_ew_bad_id")
    never = max(two_workers) + 1000
    with pytest.raises(ValueError, match=rf"^everywhere\(procs=...\): no process with id {never}$"):
        everywhere("_ew_bad_id = 1", procs=[*two_workers, never])
    defined = lambda: hasattr(__import__("__main__"), "_ew_bad_id")  # noqa: E731
    assert [remotecall_fetch(defined, w) for w in two_workers] == [False, False]  # nothing ran


def _barrier_part(arrived: RemoteChannel, go: Future) -> None:
    """Announce arrival, then wait for the test to let everyone go."""
    arrived.put(myid())
    go.fetch(timeout=T)


def test_everywhere_runs_all_processes_at_once_the_master_included(
    two_workers: list[int],
) -> None:
    # Each part blocks until every part has started: it can only finish if all run at once.
    arrived = RemoteChannel(lambda: Channel(10))
    go = Future()
    t = Task(everywhere, _barrier_part, arrived, go).start()
    try:
        got = sorted(arrived.take(timeout=T) for _ in range(3))
    finally:
        go.put("go")
    t.wait(timeout=T)
    assert got == [1, *two_workers]


def test_everywhere_registers_nothing_with_sync(two_workers: list[int]) -> None:
    with sync(timeout=T) as s:
        everywhere(lambda: None)
    assert s.objects == ()


# -- distributed ---------------------------------------------------------------------------


def test_distributed_with_a_reducer(add_workers: AddWorkers) -> None:
    add_workers(3)
    assert distributed(lambda i: 1, range(100), operator.add) == 100
    assert distributed(lambda i: i * i, range(1, 11), operator.add) == 385
    assert distributed(lambda x: x, [7], operator.add) == 7  # one part, reducer never called


def test_distributed_splits_contiguously_like_splitrange(add_workers: AddWorkers) -> None:
    pids = add_workers(3)
    got = distributed(lambda i: [(myid(), i)], range(10), operator.add)
    assert [i for _, i in got] == list(range(10))  # reduced in order
    by_worker = {p: [i for q, i in got if q == p] for p in pids}
    assert by_worker == {pids[0]: [0, 1, 2, 3], pids[1]: [4, 5, 6], pids[2]: [7, 8, 9]}
    # fewer items than workers: one item each on the first workers
    got = distributed(lambda i: [myid()], "ab", operator.add)
    assert got == pids[:2]


def test_distributed_reducer_runs_on_the_workers_then_here(two_workers: list[int]) -> None:
    w2, w3 = two_workers

    def tag(a: Any, b: Any) -> tuple[int, Any, Any]:
        return (myid(), a, b)

    # each worker reduces its part from the left; the caller then reduces the parts in order
    assert distributed(lambda x: x, range(4), tag) == (1, (w2, 0, 1), (w3, 2, 3))


_RECEIVED: list[int] = []  # on each worker: the items unpickled there


def _note_item(i: int) -> int:
    _RECEIVED.append(i)
    return i


def _received() -> list[int]:
    """What this process's ``_RECEIVED`` holds (a module function: runs on the worker's copy)."""
    return list(_RECEIVED)


class _Item:
    """An item that records, on the process that unpickles it, that it arrived there."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> tuple[Any, ...]:
        return (_note_item, (self.i,))


def test_distributed_sends_each_worker_only_its_part(two_workers: list[int]) -> None:
    w2, w3 = two_workers
    assert distributed(lambda i: i, [_Item(i) for i in range(5)], operator.add) == 10
    assert fetchfrom(w2, _received) == [0, 1, 2]
    assert fetchfrom(w3, _received) == [3, 4]


def test_distributed_materializes_an_iterator(two_workers: list[int]) -> None:
    assert distributed(lambda x: x, (i for i in range(6)), operator.add) == 15
    assert distributed(lambda k: [k], {"a": 1, "b": 2, "c": 3}, operator.add) == ["a", "b", "c"]


def test_distributed_empty_with_a_reducer_is_an_error_as_in_julia(
    two_workers: list[int],
) -> None:
    with pytest.raises(ValueError, match="empty"):
        distributed(lambda x: x, range(0), operator.add)


def test_distributed_empty_without_a_reducer_is_a_finished_task(two_workers: list[int]) -> None:
    t = distributed(lambda x: x, [])
    t.wait(timeout=T)
    assert t.done() and not t.failed()


def test_distributed_without_workers_runs_on_process_1(no_workers: None) -> None:
    assert distributed(lambda i: {myid()}, range(5), operator.or_) == {1}
    ch = Channel(10)
    with sync(timeout=T):
        distributed(lambda i: ch.put((myid(), i)), range(3))
    assert sorted(ch.take(timeout=T) for _ in range(3)) == [(1, 0), (1, 1), (1, 2)]


def test_distributed_reducer_error_names_the_worker(two_workers: list[int]) -> None:
    w3 = two_workers[1]
    with pytest.raises(RemoteException) as info:
        distributed(lambda i: 1 // (i - 7), range(10), operator.add)
    assert info.value.pid == w3  # 7 is in the second part
    assert isinstance(info.value.captured.exc, ZeroDivisionError)


def test_distributed_returns_a_task_that_sync_waits_for(two_workers: list[int]) -> None:
    results = RemoteChannel(lambda: Channel(100))
    release = Future()

    def work(i: int) -> None:
        release.fetch(timeout=T)
        results.put((myid(), i))

    with sync(timeout=T) as s:
        t = distributed(work, range(6))
        assert isinstance(t, Task)
        assert t in s.objects
        assert not t.done()  # it returned at once: every part is waiting for release
        release.put(True)
    assert t.done() and not t.failed()
    got = sorted(results.take(timeout=T) for _ in range(6))
    w2, w3 = two_workers
    assert got == [(w2, 0), (w2, 1), (w2, 2), (w3, 3), (w3, 4), (w3, 5)]
    assert not results.isready()


def test_distributed_without_reducer_failure_inside_sync(two_workers: list[int]) -> None:
    w3 = two_workers[1]
    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            distributed(lambda i: 1 // (i - 4), range(6))
    # as in Julia, the Task's own CompositeException of the failed parts is a member
    (inner,) = info.value.exceptions
    assert isinstance(inner, CompositeException)
    assert [(type(e), e.pid) for e in inner.exceptions] == [(RemoteException, w3)]


def test_distributed_task_wait_raises_the_failed_parts(two_workers: list[int]) -> None:
    t = distributed(lambda i: 1 // 0, range(4))
    with pytest.raises(CompositeException) as info:
        t.wait(timeout=T)
    assert sorted(e.pid for e in info.value.exceptions) == two_workers


# -- sync end to end -------------------------------------------------------------------------


def test_sync_waits_for_everything_started_inside(two_workers: list[int]) -> None:
    w2, w3 = two_workers
    done = RemoteChannel(lambda: Channel(100))

    def slow(tag: str) -> None:
        time.sleep(0.2)
        done.put(tag)

    with sync(timeout=T) as outer:
        f1 = spawnat(w2, slow, "spawnat")
        f2 = spawn(slow, "spawn")
        f3 = remotecall(slow, w3, "remotecall")
        t1 = async_(slow, "async")
        t2 = distributed(slow, ["distributed-a", "distributed-b"])
        with sync(timeout=T):
            f4 = spawnat(w3, slow, "nested")
        assert f4.isready()  # the inner block waited already
    assert set(outer.objects) >= {f1, f2, f3, t1, t2, f4}
    assert all(f.isready() for f in (f1, f2, f3))
    assert t1.done() and t2.done()
    tags = sorted(done.take(timeout=T) for _ in range(7))
    assert tags == sorted(
        ["spawnat", "spawn", "remotecall", "async", "distributed-a", "distributed-b", "nested"]
    )


def test_sync_with_a_failing_spawnat(two_workers: list[int]) -> None:
    w2, w3 = two_workers
    finished = RemoteChannel(lambda: Channel(10))

    def ok() -> None:
        time.sleep(0.2)
        finished.put(myid())

    with pytest.raises(CompositeException) as info:
        with sync(timeout=T):
            spawnat(w2, ok)
            spawnat(w3, operator.truediv, 1, 0)
            spawnat(w2, lambda: [][1])
    assert [(type(e), e.pid) for e in info.value.exceptions] == [
        (RemoteException, w3),
        (RemoteException, w2),
    ]
    assert isinstance(info.value.exceptions[0].captured.exc, ZeroDivisionError)
    assert isinstance(info.value.exceptions[1].captured.exc, IndexError)
    # the good one was waited for too
    assert finished.isready() and finished.take(timeout=T) == w2


def test_sync_over_spawnat_on_each_worker(add_workers: AddWorkers) -> None:
    pids = add_workers(4)
    with sync(timeout=T):
        futs = [spawnat(p, lambda: (myid(), os.getpid())) for p in workers()]
    results = [f.fetch(timeout=T) for f in futs]
    assert [r[0] for r in results] == pids
    assert len({r[1] for r in results}) == 4 and os.getpid() not in {r[1] for r in results}


# -- timedwait -------------------------------------------------------------------------------


def test_timedwait_for_a_remote_future(two_workers: list[int]) -> None:
    fut = spawnat(two_workers[0], time.sleep, 0.3)
    assert timedwait(fut.isready, T, pollint=0.05) == "ok"
    assert fut.fetch(timeout=T) is None

    gate = RemoteChannel(two_workers[1])
    blocked = spawnat(two_workers[1], lambda: gate.take(timeout=T))
    assert timedwait(blocked.isready, 0.3, pollint=0.05) == "timed_out"
    gate.put("open", timeout=T)
    assert timedwait(blocked.isready, T, pollint=0.05) == "ok"
    assert blocked.fetch(timeout=T) == "open"
