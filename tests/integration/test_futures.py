"""Futures from any process: put, fetch, wait, isready, caching, and their owner's death."""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

import pytest

from pydistributed import (
    Future,
    ProcessExitedException,
    RemoteException,
    async_,
    fetch,
    isready,
    put,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    remoteref_id,
    sync,
    timedwait,
    wait,
)
from tests.conftest import in_thread, requests_awaiting, wait_until
from tests.conftest import worker_ospid as ospid
from tests.integration import _helpers

# -- what the workers run ---------------------------------------------------------------


def fetch_it(f: Future, timeout: float | None = None) -> Any:
    return f.fetch(timeout)


def put_it(f: Future, value: Any) -> str:
    try:
        f.put(value)
    except RuntimeError:
        return "refused"
    return "set"


def wait_it(f: Future) -> bool:
    f.wait()
    return True


def make_future_here() -> Future:
    return Future()


def fetched_then_owner(f: Future) -> tuple[bool, Any]:
    """Whether ``f`` arrived with its value cached, and the value."""
    return f.isready(), f.fetch()


# -- helpers ----------------------------------------------------------------------------


# -- tests ------------------------------------------------------------------------------


def test_local_future() -> None:
    f = Future()
    assert f.where == 1 and f.whence == 1 and remoteref_id(f).id == f.id
    assert not f.isready() and not isready(f)
    with pytest.raises(TimeoutError):
        f.fetch(timeout=0.05)
    with pytest.raises(TimeoutError):
        wait(f, timeout=0.05)
    obj = {"a": [1, 2]}
    assert put(f, obj) is f
    assert f.isready() and f.fetch() is obj  # a local put stores the object itself
    assert wait(f) is f and fetch(f, timeout=1) is obj
    with pytest.raises(RuntimeError, match="only once"):
        f.put(2)


def test_remote_future_put_and_fetch_from_anywhere(two_workers: list[int]) -> None:
    a, b = two_workers
    f = Future(a)
    assert f.where == a and f.whence == 1
    assert not f.isready()
    with pytest.raises(TimeoutError):
        f.fetch(timeout=0.1)
    with pytest.raises(TimeoutError):
        f.wait(timeout=0.1)
    waiting = remotecall(fetch_it, b, f)  # another worker waits for it
    assert remotecall_fetch(put_it, b, f, [1, 2, 3]) == "set"  # and another one sets it
    assert waiting.fetch(timeout=10) == [1, 2, 3]
    assert f.wait(timeout=10) is f and f.isready()
    assert f.fetch(timeout=10) == [1, 2, 3]
    assert remotecall_fetch(put_it, b, f, "again") == "refused"
    with pytest.raises(RuntimeError):
        f.put("again")  # cached here: refused without asking


def test_only_one_put_wins(two_workers: list[int]) -> None:
    a, b = two_workers
    for _ in range(5):
        f = Future(a)
        results = [remotecall(put_it, w, f, w) for w in (a, b, a, b)]
        outcomes = sorted(fetch(r) for r in results)
        assert outcomes == ["refused", "refused", "refused", "set"]
        assert f.fetch(timeout=10) in (a, b)


def test_future_made_on_a_worker_for_the_master(two_workers: list[int]) -> None:
    f = remotecall_fetch(make_future_here, two_workers[0])
    assert f.where == two_workers[0] and f.whence == two_workers[0]
    f.put("from the master")
    assert remotecall_fetch(fetch_it, two_workers[1], f) == "from the master"
    g = remotecall_fetch(lambda: Future(1), two_workers[0])
    assert g.where == 1 and g.whence == two_workers[0]
    remotecall_fetch(put_it, two_workers[1], g, 5)
    assert g.fetch(timeout=10) == 5


def test_fetch_caches_so_the_owner_is_no_longer_needed(two_workers: list[int]) -> None:
    a, b = two_workers
    f = remotecall(lambda: "value", a)
    assert f.fetch(timeout=10) == "value"
    os.kill(ospid(a), signal.SIGKILL)
    assert f.fetch() == "value" and f.isready() and f.wait() is f
    # it travels with its value
    assert remotecall_fetch(fetched_then_owner, b, f) == (True, "value")


def test_failed_call_raises_at_fetch_on_every_process(two_workers: list[int]) -> None:
    a, b = two_workers
    f = remotecall(math.sqrt, a, -1)
    with pytest.raises(RemoteException):
        f.wait(timeout=10)  # as Julia's wait(f): the call's error
    with pytest.raises(RemoteException) as info:
        f.fetch()
    assert info.value.pid == a and isinstance(info.value.captured.exc, ValueError)
    with pytest.raises(RemoteException) as info2:
        remotecall_fetch(fetch_it, b, f)  # raised on b, which reports it
    assert "math domain error" in str(info2.value)
    local = remotecall(math.sqrt, 1, -1)
    with pytest.raises(RemoteException, match=r"On process 1 \(the master\)"):
        local.fetch(timeout=10)


def test_generic_functions_on_tasks_and_plain_values() -> None:
    t = async_(lambda: 7)
    assert fetch(t, 10) == 7 and wait(t) is t and isready(t)
    assert fetch(7) == 7


def test_blocked_future_operations_fail_fast_when_the_owner_dies(two_workers: list[int]) -> None:
    doomed, other = two_workers
    f = Future(doomed)
    g = remotecall(time.sleep, doomed, 60)
    here, there = requests_awaiting(doomed), remotecall_fetch(requests_awaiting, other, doomed)
    blocked = [
        in_thread(lambda: f.fetch()),
        in_thread(lambda: f.wait()),
        in_thread(lambda: f.fetch(timeout=30)),
        in_thread(lambda: g.fetch()),
        in_thread(lambda: wait(g)),
        in_thread(lambda: remotecall_fetch(fetch_it, other, f)),
        in_thread(lambda: remotecall_fetch(wait_it, other, f)),
    ]
    wait_until(  # all of them are waiting now
        lambda: (
            requests_awaiting(doomed) >= here + 5
            and remotecall_fetch(requests_awaiting, other, doomed) >= there + 2
        ),
        what="seven operations to wait on the doomed owner",
    )
    assert all(not out for _, out in blocked)
    start = time.monotonic()
    os.kill(ospid(doomed), signal.SIGKILL)
    for t, _ in blocked:
        t.join(5)
    elapsed = time.monotonic() - start
    outcomes = [out[0] if out else None for _, out in blocked]
    for e in outcomes[:5]:
        assert isinstance(e, ProcessExitedException) and e.worker_id == doomed, outcomes
    for e in outcomes[5:]:  # raised on the other worker, which reports it
        assert isinstance(e, RemoteException), outcomes
        assert isinstance(e.captured.exc, ProcessExitedException), outcomes
    assert elapsed < 2.0, elapsed
    # and at once afterwards
    for op in (f.fetch, f.wait, f.isready, lambda: f.put(1), lambda: Future(doomed).fetch()):
        with pytest.raises(ProcessExitedException):
            op()


# -- Julia's wait_ref: wait and remotecall_wait raise the call's error -----------------------


@pytest.mark.parametrize("where", ["worker", "master"])
def test_wait_and_remotecall_wait_raise_the_calls_error(two_workers: list[int], where: str) -> None:
    pid = two_workers[0] if where == "worker" else 1
    with pytest.raises(RemoteException) as info:
        remotecall_wait(math.sqrt, pid, -1)
    assert info.value.pid == pid and isinstance(info.value.captured.exc, ValueError)
    fut = remotecall(math.sqrt, pid, -1)
    with pytest.raises(RemoteException):
        wait(fut, timeout=10)
    with pytest.raises(RemoteException):
        fut.wait(timeout=10)
    ok = remotecall_wait(math.sqrt, pid, 4)
    assert ok.wait() is ok and ok.fetch() == 2.0


def test_sync_raises_the_error_of_a_remotecall_wait(two_workers: list[int]) -> None:
    w = two_workers[0]
    with pytest.raises(RemoteException):
        with sync():
            remotecall_wait(math.sqrt, w, -1)


def test_a_failed_remotecall_wait_leaves_nothing_stored(two_workers: list[int]) -> None:
    import gc

    w = two_workers[0]
    before = remotecall_fetch(_stored, w)
    for _ in range(5):
        with pytest.raises(RemoteException):
            remotecall_wait(math.sqrt, w, -1)
    gc.collect()
    assert timedwait(lambda: remotecall_fetch(_stored, w) <= before, 10, pollint=0.02) == "ok"


def test_a_future_fetched_by_its_owner_frees_its_storage() -> None:
    from pydistributed.cluster import current_cluster

    refs = current_cluster().refs
    fut = remotecall(math.sqrt, 1, 16)  # owned by this process
    key = remoteref_id(fut)
    assert fut.fetch(timeout=10) == 4.0
    assert timedwait(lambda: refs.lookup(key) is None, 10, pollint=0.01) == "ok"
    assert fut.fetch() == 4.0  # the handle keeps the value


def _stored() -> int:
    from pydistributed.cluster import current_cluster

    return len(current_cluster().refs)


# -- bad timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        ("1", TypeError),
        (True, TypeError),
        ([1], TypeError),
        (math.nan, ValueError),
    ],
)
def test_a_bad_timeout_is_refused_in_the_caller(
    two_workers: list[int], timeout: Any, error: type[Exception]
) -> None:
    w = two_workers[0]
    f = remotecall(_helpers.sleep_then, w, 0.2, "done")
    unset = Future(w)
    for call in (
        lambda: f.fetch(timeout),
        lambda: fetch(f, timeout=timeout),
        lambda: f.wait(timeout),
        lambda: wait(f, timeout=timeout),
        lambda: unset.fetch(timeout),
        lambda: unset.wait(timeout),
    ):
        with pytest.raises(error, match=r"^timeout must be a number of seconds"):
            call()
    assert requests_awaiting(w) == 0  # nothing was asked of the owner
    assert f.fetch(timeout=10) == "done" and wait(f, timeout=0) is f
    with pytest.raises(TimeoutError, match=r"not set within 0\.123 s$"):
        unset.fetch(timeout=0.1234567)
