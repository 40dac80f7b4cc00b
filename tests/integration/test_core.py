"""Remote calls, Futures and errors against real local workers."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from pydistributed import (
    Future,
    RemoteException,
    fetch,
    myid,
    nprocs,
    nworkers,
    procs,
    remote_do,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    remoteref_id,
    workers,
)
from tests.conftest import worker_table
from tests.integration import _helpers as h


def test_issue_example(two_workers: list[int]) -> None:
    assert two_workers == [2, 3] or two_workers == sorted(two_workers)
    w1, w2 = two_workers
    assert remotecall_fetch(lambda: myid(), w1) == w1
    f = remotecall(sum, w2, [1, 2, 3])
    assert fetch(f) == 6
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(math.sqrt, w1, -4)
    text = str(info.value)
    assert text.startswith(f"On worker {w1}:")
    assert "ValueError: math domain error" in text
    # the remote traceback is in str() (API.md), and in captured.traceback_text
    assert "\nTraceback (most recent call last):\n" in text
    assert "Traceback" in info.value.captured.traceback_text
    assert info.value.pid == w1
    assert isinstance(info.value.captured.exc, ValueError)


def test_process_queries(two_workers: list[int]) -> None:
    assert myid() == 1
    assert workers() == two_workers
    assert procs() == [1, *two_workers]
    assert nprocs() == 3 and nworkers() == 2
    assert procs(two_workers[0]) == [1, *two_workers]  # all on this host
    # a worker sees the cluster too
    assert remotecall_fetch(workers, two_workers[0]) == two_workers
    assert remotecall_fetch(procs, two_workers[0]) == [1, *two_workers]


def test_no_workers_means_master_works() -> None:
    if not worker_table():
        assert workers() == [1] and nworkers() == 1 and nprocs() == 1


def test_kwargs_and_module_functions(two_workers: list[int]) -> None:
    w = two_workers[0]
    assert remotecall_fetch(h.add, w, 1, 2, c=3) == 6
    assert fetch(remotecall(h.add, w, 1, b=5)) == 6
    assert remotecall_fetch(h.getpid, w) != remotecall_fetch(h.getpid, two_workers[1])


def test_closures_and_lambdas_ship_by_value(two_workers: list[int]) -> None:
    w = two_workers[0]
    base = 100
    table = {"a": 1}

    def inner(x: int) -> int:
        return x + base + table["a"]

    assert remotecall_fetch(inner, w, 1) == 102
    assert remotecall_fetch(lambda x: [i * x for i in range(3)], w, 2) == [0, 2, 4]


def test_calls_to_self_pass_objects_without_copy() -> None:
    obj = {"big": list(range(10))}
    assert remotecall_fetch(h.identity, 1, obj) is obj
    assert fetch(remotecall(h.identity, 1, obj)) is obj
    fut = remotecall_wait(h.identity, 1, obj)
    assert fut.isready() and fut.fetch() is obj
    with pytest.raises(RemoteException) as info:
        remotecall_fetch(math.sqrt, 1, -1)
    assert str(info.value).startswith("On process 1 (the master):")


def test_future_api(two_workers: list[int]) -> None:
    w = two_workers[0]
    f = remotecall(h.sleep_then, w, 0.3, "done")
    assert f.where == w and f.whence == 1 and isinstance(f.id, int)
    assert remoteref_id(f).whence == 1 and remoteref_id(f).id == f.id
    assert not f.isready()
    with pytest.raises(TimeoutError):
        f.wait(timeout=0.05)
    assert f.wait(timeout=10) is f
    assert f.isready()
    assert f.fetch() == "done" and f.fetch() == "done"  # cached
    # remotecall_wait returns a ready Future
    g = remotecall_wait(h.add, w, 2, 3)
    assert g.isready() and fetch(g) == 5
    # an error is raised by wait and fetch, whoever owns the Future
    bad = remotecall(math.sqrt, w, -1)
    with pytest.raises(RemoteException):
        bad.wait(timeout=10)
    with pytest.raises(RemoteException):
        bad.fetch()
    with pytest.raises(RemoteException):
        bad.fetch()


def test_future_put_is_write_once(two_workers: list[int]) -> None:
    for where in (1, two_workers[0]):
        f = Future(where)
        assert f.where == where and not f.isready()
        f.put(42)
        assert f.isready() and f.fetch() == 42
        with pytest.raises((RuntimeError, RemoteException)):
            f.put(43)


def test_future_filled_by_a_worker(two_workers: list[int]) -> None:
    f = Future()  # lives on the master
    remotecall_fetch(lambda fut: fut.put("from worker"), two_workers[0], f)
    assert f.fetch(timeout=10) == "from worker"


def test_fetch_of_a_plain_value_is_the_value() -> None:
    assert fetch(5) == 5
    obj = object()
    assert fetch(obj) is obj


def test_remote_do_runs_and_returns_nothing(two_workers: list[int]) -> None:
    w = two_workers[0]
    fut = Future()
    assert remote_do(lambda f: f.put(7), w, fut) is None
    assert fut.fetch(timeout=10) == 7


def test_worker_to_worker_calls(two_workers: list[int]) -> None:
    a, b = two_workers
    assert remotecall_fetch(lambda: remotecall_fetch(myid, b), a) == b
    assert remotecall_fetch(lambda: remotecall_fetch(myid, 1), a) == 1
    # a Future made on a, for a call on b, fetched on the master
    f = remotecall_fetch(lambda: remotecall(h.add, b, 40, 2), a)
    assert f.where == b and f.whence == a
    assert f.fetch(timeout=10) == 42


def test_master_worker_topology_has_no_worker_links(add_workers) -> None:  # type: ignore[no-untyped-def]
    a, b = add_workers(2, topology="master_worker")
    assert remotecall_fetch(myid, a) == a
    with pytest.raises(RemoteException, match="topology"):
        remotecall_fetch(lambda: remotecall_fetch(myid, b), a)


def test_blocked_call_does_not_stop_the_next(two_workers: list[int]) -> None:
    w = two_workers[0]
    gate = Future(w)
    blocked = remotecall(lambda g: g.fetch(), w, gate)
    # the worker still answers while that call waits
    assert remotecall_fetch(h.add, w, 1, 1) == 2
    gate.put("open")
    assert blocked.fetch(timeout=10) == "open"


def test_large_numpy_array_round_trip(two_workers: list[int]) -> None:
    arr = np.random.default_rng(0).random(2_000_000)
    w = two_workers[0]
    assert remotecall_fetch(np.sum, w, arr) == pytest.approx(arr.sum())
    back = remotecall_fetch(h.identity, w, arr)
    np.testing.assert_array_equal(back, arr)
    data = bytes(range(256)) * 4096
    assert remotecall_fetch(h.identity, w, data) == data


def test_many_concurrent_callers(two_workers: list[int]) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def caller(k: int) -> None:
        try:
            for i in range(50):
                results.append(remotecall_fetch(h.add, two_workers[i % 2], k, i))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(results) == sorted(k + i for k in range(8) for i in range(50))


def test_bad_process_ids(two_workers: list[int]) -> None:
    with pytest.raises(ValueError):
        remotecall_fetch(h.identity, 999, 1)
    with pytest.raises(TypeError):
        remotecall_fetch(h.identity, "2", 1)
