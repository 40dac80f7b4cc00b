"""Worker life cycle: death, master exit, interrupt, rmprocs, ids, output relay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pydistributed import (
    Future,
    InterruptException,
    ProcessExitedException,
    RemoteException,
    addprocs,
    interrupt,
    myid,
    remotecall,
    remotecall_fetch,
    rmprocs,
    workers,
)
from tests.conftest import is_alive
from tests.conftest import worker_ospid as _ospid
from tests.integration import _helpers as h


def test_killed_worker_fails_pending_calls_fast(two_workers: list[int]) -> None:
    a, b = two_workers
    fut = remotecall(h.sleep_then, a, 30, "never")
    blocked_exc: list[BaseException] = []

    import threading

    def blocked() -> None:
        try:
            remotecall_fetch(h.sleep_then, a, 30)
        except BaseException as e:
            blocked_exc.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.3)
    start = time.monotonic()
    os.kill(_ospid(a), signal.SIGKILL)
    with pytest.raises(ProcessExitedException):
        fut.fetch(timeout=10)
    t.join(10)
    assert isinstance(blocked_exc[0], ProcessExitedException)
    assert time.monotonic() - start < 2.0
    assert a not in workers() and b in workers()
    start = time.monotonic()
    with pytest.raises(ProcessExitedException):
        remotecall_fetch(myid, a)
    assert time.monotonic() - start < 0.5
    assert remotecall_fetch(myid, b) == b


MASTER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = {path!r}
    from pydistributed import addprocs, remotecall_fetch
    from pydistributed.cluster import current_cluster
    pids = addprocs(2)
    for p in pids:
        remotecall_fetch(sum, p, [1])
    print(" ".join(str(current_cluster().registry.get(p).ospid) for p in pids), flush=True)
    {tail}
    """
)


def _run_master(tail: str) -> tuple[subprocess.Popen[str], list[int]]:
    script = MASTER_SCRIPT.format(path=sys.path, tail=tail)
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    ospids = [int(x) for x in line.split()]
    assert len(ospids) == 2, line
    return proc, ospids


def _wait_gone(ospids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        left = [p for p in ospids if is_alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in ospids if is_alive(p)]


def _kill_all(ospids: list[int]) -> None:
    for p in ospids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize(
    "setup",
    [
        "",
        # a worker holding the GIL in C cannot see its connection close: the kernel ends it
        "from tests.integration import _helpers as h\n"
        "from pydistributed import remotecall\n"
        "remotecall(h.hold_gil, pids[0], 10**12)\n"
        "time.sleep(0.5)\n",
    ],
    ids=["idle", "stuck-in-c"],
)
def test_killed_master_leaves_no_orphans(setup: str) -> None:
    proc, ospids = _run_master(setup + "print('ready', flush=True)\ntime.sleep(60)")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.kill()
        proc.wait(10)
        assert _wait_gone(ospids, 5.0) == []
    finally:
        _kill_all(ospids)
        proc.kill()
        proc.wait(10)


def test_master_exiting_normally_ends_workers() -> None:
    proc, ospids = _run_master("pass")
    try:
        assert proc.wait(20) == 0
        assert _wait_gone(ospids, 5.0) == []
    finally:
        _kill_all(ospids)


@pytest.mark.parametrize("work", ["sleep", "busy"])
def test_interrupt_running_call(two_workers: list[int], work: str) -> None:
    w = two_workers[0]
    fut = remotecall(h.sleep_then, w, 30) if work == "sleep" else remotecall(h.busy_loop, w, 30)
    time.sleep(0.5)
    start = time.monotonic()
    interrupt(w)
    with pytest.raises(RemoteException) as info:
        fut.fetch(timeout=10)
    assert time.monotonic() - start < 2.0
    assert isinstance(info.value.captured.exc, InterruptException)
    assert "InterruptException" in str(info.value)
    assert remotecall_fetch(h.add, w, 2, 3) == 5


def test_interrupt_idle_worker_is_ignored(two_workers: list[int]) -> None:
    interrupt()  # all workers, all idle
    interrupt(two_workers[0])
    time.sleep(0.2)
    assert [remotecall_fetch(myid, w) for w in two_workers] == two_workers


def test_interrupt_call_on_a_pool_thread(two_workers: list[int]) -> None:
    w = two_workers[0]
    gate = Future(w)
    first = remotecall(lambda g: g.fetch(), w, gate)  # occupies a thread, waits
    time.sleep(0.2)
    busy = remotecall(h.busy_loop, w, 30)
    time.sleep(0.3)
    interrupt(w)
    with pytest.raises(RemoteException) as info:
        busy.fetch(timeout=10)
    assert isinstance(info.value.captured.exc, InterruptException)
    gate.put(1)
    first.wait(timeout=10)
    assert remotecall_fetch(h.add, w, 1, 1) == 2


def test_rmprocs_busy_worker(add_workers) -> None:  # type: ignore[no-untyped-def]
    (w,) = add_workers(1)
    ospid = _ospid(w)
    remotecall(h.sleep_then, w, 30)
    start = time.monotonic()
    assert rmprocs(w, waitfor=5) is None
    assert time.monotonic() - start < 5
    assert w not in workers()
    assert not is_alive(ospid)


def test_rmprocs_escalates_to_kill(add_workers) -> None:  # type: ignore[no-untyped-def]
    (w,) = add_workers(1)
    ospid = _ospid(w)
    remotecall(h.hold_gil, w, 10**11)  # the worker's reader thread cannot run
    time.sleep(0.3)
    start = time.monotonic()
    rmprocs([w], waitfor=6)
    assert time.monotonic() - start < 6
    assert w not in workers() and not is_alive(ospid)


def test_rmprocs_timeout(add_workers) -> None:  # type: ignore[no-untyped-def]
    (w,) = add_workers(1)
    remotecall(h.hold_gil, w, 10**11)
    time.sleep(0.3)
    ospid = _ospid(w)
    with pytest.raises(TimeoutError, match="killed"):
        rmprocs(w, waitfor=0.01)
    assert w not in workers() and not is_alive(ospid)  # killed all the same


def test_rmprocs_waitfor_zero_returns_a_task(add_workers) -> None:  # type: ignore[no-untyped-def]
    pids = add_workers(2)
    task = rmprocs(*pids, waitfor=0)
    assert task is not None
    task.wait(timeout=20)
    assert all(p not in workers() for p in pids)


def test_ids_are_never_reused(add_workers) -> None:  # type: ignore[no-untyped-def]
    (a,) = add_workers(1)
    rmprocs(a, waitfor=10)
    (b,) = add_workers(1)
    assert b > a
    assert add_workers(2) == [b + 1, b + 2]


def test_only_master_adds_and_removes(two_workers: list[int]) -> None:
    w = two_workers[0]
    for fn in (lambda: addprocs(1), lambda: rmprocs(2)):
        with pytest.raises(RemoteException, match="Only process 1 can add and remove workers"):
            remotecall_fetch(fn, w)


def test_unknown_keyword_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bogus"):
        addprocs(1, bogus=True)


def test_worker_output_is_relayed(
    two_workers: list[int], capfd: pytest.CaptureFixture[str]
) -> None:
    w = two_workers[0]
    remotecall_fetch(h.say, w, "hello out")
    remotecall_fetch(h.say, w, "hello err", "stderr")
    deadline = time.monotonic() + 5
    out = err = ""
    while time.monotonic() < deadline:
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        if f"From worker {w}:\thello out" in out and f"From worker {w}:\thello err" in err:
            break
        time.sleep(0.05)
    assert f"From worker {w}:\thello out" in out
    assert f"From worker {w}:\thello err" in err


def test_addprocs_options(add_workers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (w,) = add_workers(1, dir=str(tmp_path), env={"PYDIST_TEST_VAR": "42"})
    assert remotecall_fetch(os.getcwd, w) == str(tmp_path)
    getenv = lambda k: os.environ.get(k)  # noqa: E731  (os.environ.get would ship our environ)
    assert remotecall_fetch(getenv, w, "PYDIST_TEST_VAR") == "42"
    assert remotecall_fetch(getenv, w, "OPENBLAS_NUM_THREADS") == "1"
    (v,) = add_workers(1, enable_threaded_blas=True, exeflags=["-X", "utf8"])
    assert remotecall_fetch(lambda: sys.flags.utf8_mode, v) == 1
    assert remotecall_fetch(getenv, v, "OPENBLAS_NUM_THREADS") == os.environ.get(
        "OPENBLAS_NUM_THREADS"
    )


def test_addprocs_default_is_one_per_cpu(add_workers) -> None:  # type: ignore[no-untyped-def]
    if (os.cpu_count() or 1) > 8:
        pytest.skip("more than 8 CPUs: this test starts at most 8 workers")
    from pydistributed import addprocs as _addprocs

    before = set(workers())
    pids = _addprocs()
    try:
        assert len(pids) == (os.cpu_count() or 1)
    finally:
        rmprocs(pids, waitfor=10)
    assert set(workers()) == before or workers() == [1]


def _on_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def test_back_to_back_calls_run_on_the_main_thread(two_workers: list[int]) -> None:
    """The answer of one call must not beat the main thread back to idle (interruptible)."""
    w = two_workers[0]
    assert all(remotecall_fetch(_on_main, w) for _ in range(300))
    for _ in range(5):
        remotecall_fetch(_on_main, w)
        fut = remotecall(h.sleep_then, w, 10)
        time.sleep(0.05)
        start = time.monotonic()
        interrupt(w)
        with pytest.raises(RemoteException):
            fut.fetch(timeout=10)
        assert time.monotonic() - start < 2.0


def test_nested_self_call_keeps_the_worker_concurrent(two_workers: list[int]) -> None:
    w = two_workers[0]
    gate = Future(w)

    def nested_then_wait(g: Future) -> object:
        remotecall_fetch(myid, myid())  # a call to itself, on the main thread
        return g.fetch()

    first = remotecall(nested_then_wait, w, gate)
    time.sleep(0.2)
    assert remotecall_fetch(h.add, w, 2, 2) == 4  # not queued behind the blocked call
    gate.put("go")
    assert first.fetch(timeout=10) == "go"
