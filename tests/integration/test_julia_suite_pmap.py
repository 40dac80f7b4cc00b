"""Julia's own Distributed test suite, ported: pmap and worker pools (test/distributed_exec.jl,
from "pmap tests" to "CachingPool tests", and the pool tests further down).

Each test names the Julia testset, comment or issue it ports.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import (
    CachingPool,
    RemoteChannel,
    RemoteException,
    WorkerPool,
    async_,
    default_worker_pool,
    fetch,
    isready,
    myid,
    nworkers,
    pmap,
    put,
    remotecall,
    remotecall_fetch,
    spawnat,
    take,
    timedwait,
    wait,
    workers,
)
from tests.conftest import end_workers

pytestmark = pytest.mark.timeout(120)

T = 20.0  # the timeout of every blocking call that is expected to succeed


@pytest.fixture(scope="module")
def four() -> Iterator[list[int]]:
    """``addprocs_with_testenv(4)``: the four workers the Julia suite runs on."""
    from pydistributed import addprocs

    pids = addprocs(4)
    yield pids
    end_workers(pids)


# -- "Test all combinations of pmap keyword args." -------------------------------------------


def _on_error(e: BaseException) -> bool:
    # e -> (e.msg == "foobar" ? true : rethrow())
    if str(e) == "foobar":
        return True
    raise e


def _retry_check(s: Any, e: BaseException) -> tuple[Any, bool]:
    # (s,e) -> (s,endswith(e.msg,"foobar"))
    return (s, str(e).endswith("foobar"))


def _fail_on_even_pid(x: int) -> tuple[int, int]:
    if myid() % 2 == 0:
        raise RuntimeError("notfoobar")
    return (x * 2, myid())


def _fail_on_even_x(x: int) -> tuple[int, int]:
    if x % 2 == 0:
        raise RuntimeError("foobar")
    return (x * 2, myid())


def _double(x: int) -> tuple[int, int]:
    return (x * 2, myid())


PMAP_ARGS: list[tuple[str, list[Any]]] = [
    ("distributed", ["default", False]),
    ("batch_size", ["default", 2]),
    ("on_error", ["default", _on_error]),
    ("retry_delays", ["default", [0.001] * 1000]),
    ("retry_check", ["default", _retry_check]),
]
COMBOS = list(itertools.product(*(values for _, values in PMAP_ARGS)))


def _combo_id(combo: tuple[Any, ...]) -> str:
    return (
        "-".join(
            f"{name}"
            for (name, values), v in zip(PMAP_ARGS, combo, strict=True)
            if v is not values[0]
        )
        or "defaults"
    )


@pytest.mark.parametrize("combo", COMBOS, ids=[_combo_id(c) for c in COMBOS])
def test_pmap_kwarg_combinations(four: list[int], combo: tuple[Any, ...]) -> None:
    # walk_args(1)
    kw = {
        name: v
        for (name, _), v in zip(PMAP_ARGS, combo, strict=True)
        if not (isinstance(v, str) and v == "default")
    }
    data = range(1, 101)
    testw = [1] if kw.get("distributed") is False else workers()
    if "retry_delays" in kw:
        res = pmap(_fail_on_even_pid, data, **kw)
        assert [x[0] for x in res] == list(range(2, 201, 2))
        pids = [x[1] for x in res]
        for p in testw:
            if p % 2:
                assert p in pids
            else:
                assert p not in pids
    elif "on_error" not in kw:
        res = pmap(_double, data, **kw)
        assert [x[0] for x in res] == list(range(2, 201, 2))
        pids = [x[1] for x in res]
        for p in testw:
            assert p in pids
    else:
        res = pmap(_fail_on_even_x, data, **kw)
        for idx, x in enumerate(data):
            if x % 2 == 0:
                assert res[idx] is True
            else:
                assert res[idx][0] == x * 2
                assert res[idx][1] in testw


# -- generic_map_tests(pmap_fallback), run_map_equivalence_tests(pmap) -------------------------


def test_generic_map_fallback_pool(four: list[int]) -> None:
    # "empty_pool = WorkerPool([myid()]); generic_map_tests(pmap_fallback)": a subset of Base's
    # generic_map_tests (test/generic_map_tests.jl lies outside Distributed.jl)
    pool = WorkerPool([myid()])

    def mapf(f: Any, *c: Any) -> list[Any]:
        return pmap(f, pool, *c)

    assert mapf(lambda x: x + 1, []) == []
    assert mapf(lambda x: x * 2, [1, 2, 3]) == [2, 4, 6]
    assert mapf(lambda x, y: x + y, [1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    assert mapf(lambda x, y: x + y, [1, 2, 3], [10, 20]) == [11, 22]  # zip: the shortest
    assert mapf(lambda x: x, (i for i in range(5))) == [0, 1, 2, 3, 4]


def test_map_equivalence(four: list[int]) -> None:
    # run_map_equivalence_tests(pmap); "pmap(uppercase, "Hello World!")"
    def f(x: Any) -> Any:
        return (x, x)

    for c in ([1, 2, 3], (4, 5, 6), range(7), "abc", {3: "a", 4: "b"}, b"xyz", [[1], [2]]):
        assert pmap(f, c) == list(map(f, c))
    assert pmap(str.upper, "Hello World!") == list(map(str.upper, "Hello World!"))


def test_pmap_throws_error(four: list[int]) -> None:
    # "Simple test for pmap throws error"
    def g(x: int) -> int:
        if x == 50:
            raise RuntimeError("foobar")
        return x

    with pytest.raises(RemoteException) as info:
        pmap(g, range(1, 101))
    assert str(info.value.captured.exc) == "foobar"


def test_pmap_generator(four: list[int]) -> None:
    # "Test pmap with a generator type iterator"
    gen = ((time.sleep(0.0001), x)[1] for x in range(1, 101))
    assert pmap(lambda x: x, gen) == list(range(1, 101))


def test_pmap_specified_pids(four: list[int]) -> None:
    # "specify pids for pmap"
    got = pmap(lambda x: (time.sleep(0.1), myid())[1], WorkerPool(workers()[:2]), range(1, 11))
    assert sorted(set(got)) == sorted(workers()[:2])


def test_default_pool_cycles_through_all_workers(four: list[int]) -> None:
    # "Test that the default worker pool cycles through all workers"
    pmap(lambda _: myid(), range(nworkers()))  # priming run
    assert nworkers() == len(set(pmap(lambda _: myid(), range(100))))
    # "Test same behaviour when executed on a worker"
    got = remotecall_fetch(lambda: pmap(lambda _: myid(), range(100)), four[0])
    assert nworkers() == len(set(got))


def test_custom_worker_pools(four: list[int]) -> None:
    # "Same tests with custom worker pools."
    wp = WorkerPool(workers())
    assert nworkers() == len(set(pmap(lambda _: myid(), wp, range(100))))
    got = remotecall_fetch(lambda wp: pmap(lambda _: myid(), wp, range(100)), four[0], wp)
    assert nworkers() == len(set(got))
    wp = WorkerPool(four[:2])  # Julia: WorkerPool(2:3), the first two workers
    assert sorted(set(pmap(lambda _: myid(), wp, range(100)))) == sorted(four[:2])
    assert fetch(remotecall(myid, wp), timeout=T) in wp.workers
    with pytest.raises(RemoteException):
        fetch(remotecall(_error, wp), timeout=T)


def _error() -> None:
    raise RuntimeError("error")  # Julia: remotecall(error, wp)


def test_wait_on_worker_pool(four: list[int]) -> None:
    # "wait on worker pool": local call to _wait, then remote call to _wait
    wp = WorkerPool([four[0]])
    w = take(wp, timeout=T)  # type: ignore[call-overload]
    assert not isready(wp)
    t = async_(wp.wait, T)
    assert not t.done()
    put(wp, w)  # type: ignore[call-overload]
    assert timedwait(t.done, 10) == "ok"

    take(wp, timeout=T)  # type: ignore[call-overload]
    assert not isready(wp)
    f = spawnat(w, lambda: wp.wait(timeout=T) and None)
    assert not isready(f)
    put(wp, w)  # type: ignore[call-overload]
    assert timedwait(lambda: isready(f), 10) == "ok"
    wait(f, timeout=T)


def test_caching_pool(four: list[int]) -> None:
    # "CachingPool tests"
    wp = CachingPool(workers())
    assert pmap(lambda x: x, wp, range(1, 101)) == list(range(1, 101))
    assert fetch(remotecall(myid, wp), timeout=T) in wp.workers
    with pytest.raises(RemoteException):
        fetch(remotecall(_error, wp), timeout=T)
    wp.clear()  # Julia then checks length(wp.map_obj2ref) == 0: internal
    assert pmap(lambda x: x + 1, wp, range(3)) == [1, 2, 3]  # still usable after clear


@pytest.mark.parametrize("pool_type", [WorkerPool, CachingPool])
def test_remotecall_on_pool_holds_worker(four: list[int], pool_type: type[WorkerPool]) -> None:
    # "Test the behaviour of remotecall(f, ::AbstractWorkerPool), this should keep the worker
    # out of the pool until the underlying remotecall has finished."
    wrkr1 = four[0]
    remotechan: RemoteChannel[Any] = RemoteChannel(wrkr1)
    pool = pool_type([wrkr1])
    put_future = remotecall(lambda: wait(remotechan, timeout=T) and None, pool)
    assert not isready(pool)
    put(remotechan, 1, timeout=T)
    wait(put_future, timeout=T)
    assert timedwait(lambda: isready(pool), 10) == "ok"


def test_issue_35937_nested_task_error(four: list[int]) -> None:
    # "issue #35937": pmap(1) do _ wait(@async error(42)) end
    def body(_: int) -> None:
        def fail() -> None:
            raise RuntimeError("42")

        wait(async_(fail), timeout=T)

    with pytest.raises(RemoteException) as info:
        pmap(body, [1])
    text = str(info.value)
    assert "RuntimeError" in text
    assert "42" in text


def test_default_pool_is_a_pool(four: list[int]) -> None:
    # "default_worker_pool! tests": the setter is not in API.md; the default pool serves pmap
    wp = default_worker_pool()
    assert sorted(wp.workers) == sorted(workers())
    assert pmap(lambda x: x, wp, range(1, 101)) == list(range(1, 101))
