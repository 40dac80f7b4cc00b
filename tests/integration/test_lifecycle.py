"""Worker life cycle: death, master exit, interrupt, rmprocs, ids, output relay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    Channel,
    Future,
    InterruptException,
    ProcessExitedException,
    RemoteChannel,
    RemoteException,
    addprocs,
    fetch,
    interrupt,
    myid,
    remotecall,
    remotecall_fetch,
    rmprocs,
    workers,
)
from tests.conftest import in_thread, is_alive, readline, wait_spinning, wait_until
from tests.conftest import worker_ospid as _ospid
from tests.integration import _helpers as h


def test_killed_worker_fails_pending_calls_fast(two_workers: list[int]) -> None:
    a, b = two_workers
    started = RemoteChannel(lambda: Channel(2))
    fut = remotecall(h.signal_then, a, started, h.sleep_then, 30, "never")
    t, blocked_out = in_thread(
        lambda: remotecall_fetch(h.signal_then, a, started, h.sleep_then, 30)
    )
    for _ in range(2):  # both calls run on a now
        started.take(timeout=10)
    start = time.monotonic()
    os.kill(_ospid(a), signal.SIGKILL)
    with pytest.raises(ProcessExitedException):
        fut.fetch(timeout=10)
    t.join(10)
    assert blocked_out and isinstance(blocked_out[0], ProcessExitedException), blocked_out
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
    try:
        line = readline(proc.stdout, 60)
    except BaseException:
        _end_master(proc)
        raise
    ospids = [int(x) for x in line.split()]
    assert len(ospids) == 2, line
    return proc, ospids


def _end_master(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def _wait_gone(ospids: list[int], within: float) -> None:
    try:
        wait_until(
            lambda: not any(is_alive(p) for p in ospids),
            timeout=within,
            interval=0.05,
            what=f"the workers (os pids {ospids}) to exit",
        )
    except AssertionError as e:
        raise AssertionError(f"{e}; alive: {[p for p in ospids if is_alive(p)]}") from None


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
        "from pydistributed import Future, remotecall\n"
        "started = Future()\n"
        "remotecall(h.signal_then, pids[0], started, h.hold_gil, 10**12)\n"
        "started.wait(timeout=30)\n",
    ],
    ids=["idle", "stuck-in-c"],
)
def test_killed_master_leaves_no_orphans(setup: str) -> None:
    # the master sleeps (bounded) until it is killed
    proc, ospids = _run_master(setup + "print('ready', flush=True)\ntime.sleep(60)")
    try:
        assert proc.stdout is not None
        assert readline(proc.stdout, 30).strip() == "ready"
        proc.kill()
        proc.wait(10)
        _wait_gone(ospids, 5.0)
    finally:
        _kill_all(ospids)
        _end_master(proc)


def test_master_exiting_normally_ends_workers() -> None:
    proc, ospids = _run_master("pass")
    try:
        assert proc.wait(20) == 0
        _wait_gone(ospids, 5.0)
    finally:
        _kill_all(ospids)
        _end_master(proc)


def _wait_file(path: str) -> None:
    """Wait for the file a call creates as it starts (``h.touch_then``)."""
    wait_until(lambda: os.path.exists(path), interval=0.002, what=f"the call to start ({path})")


@pytest.mark.parametrize("work", ["sleep", "busy"])
def test_interrupt_running_call(two_workers: list[int], work: str, tmp_path: Path) -> None:
    w = two_workers[0]
    running = str(tmp_path / "running")
    work_fn = h.sleep_then if work == "sleep" else h.busy_loop
    fut = remotecall(h.touch_then, w, running, work_fn, 30)
    _wait_file(running)  # the call runs
    start = time.monotonic()
    interrupt(w)
    with pytest.raises(RemoteException) as info:
        fut.fetch(timeout=10)
    assert time.monotonic() - start < 2.0
    assert isinstance(info.value.captured.exc, InterruptException)
    assert "InterruptException" in str(info.value)
    assert remotecall_fetch(h.add, w, 2, 3) == 5


@pytest.mark.parametrize("op", ["take", "put"])
def test_interrupt_reaches_a_call_blocked_on_another_workers_channel(
    two_workers: list[int], op: str, tmp_path: Path
) -> None:
    # the channel lives on the other worker: the interrupted operation is cancelled there
    # (nothing taken, nothing left), and the call fails with InterruptException like any other
    w, owner = two_workers
    rc = RemoteChannel(lambda: Channel(0), owner)
    running = str(tmp_path / "running")
    work = (lambda c: c.take(timeout=30)) if op == "take" else (lambda c: c.put("lost?", 30))
    fut = remotecall(h.touch_then, w, running, work, rc)
    _wait_file(running)
    interrupt(w)
    with pytest.raises(RemoteException) as info:
        fut.fetch(timeout=10)
    assert isinstance(info.value.captured.exc, InterruptException), info.value
    # the channel is as it was: the next put meets the next take
    taker = remotecall(lambda c: c.take(timeout=30), owner, rc)
    rc.put(8, timeout=30)
    assert fetch(taker, timeout=30) == 8


def test_interrupt_idle_worker_is_ignored(two_workers: list[int]) -> None:
    interrupt()  # all workers, all idle
    interrupt(two_workers[0])
    # an interrupt travels on the connection the calls below take, ahead of them: each
    # worker has handled it (and ignored it, idle) before it reads the call
    assert [remotecall_fetch(myid, w) for w in two_workers] == two_workers


def test_interrupt_call_on_a_pool_thread(two_workers: list[int], tmp_path: Path) -> None:
    w = two_workers[0]
    gate = Future(w)
    waiting, looping = str(tmp_path / "waiting"), str(tmp_path / "looping")
    # occupies a thread, waits
    first = remotecall(h.touch_then, w, waiting, lambda g: g.fetch(timeout=30), gate)
    _wait_file(waiting)
    busy = remotecall(h.touch_then, w, looping, h.busy_loop, 30)  # on a pool thread
    _wait_file(looping)
    interrupt(w)
    with pytest.raises(RemoteException) as info:
        busy.fetch(timeout=10)
    assert isinstance(info.value.captured.exc, InterruptException)
    gate.put(1)
    # the call waiting on the main thread was interrupted too; wait raises its failure
    with pytest.raises(RemoteException) as first_info:
        first.wait(timeout=10)
    assert isinstance(first_info.value.captured.exc, InterruptException)
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


def test_rmprocs_escalates_to_kill(add_workers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (w,) = add_workers(1)
    ospid = _ospid(w)
    running = str(tmp_path / "running")
    remotecall(h.touch_then, w, running, h.hold_gil, 10**11)  # its reader thread cannot run
    _wait_file(running)
    start = time.monotonic()
    rmprocs([w], waitfor=6)
    assert time.monotonic() - start < 6
    assert w not in workers() and not is_alive(ospid)


def test_rmprocs_timeout(add_workers, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (w,) = add_workers(1)
    running = str(tmp_path / "running")
    ospid = _ospid(w)
    remotecall(h.touch_then, w, running, h.hold_gil, 10**11)
    _wait_file(running)
    wait_spinning(ospid)  # inside the C call for sure
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


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (["A=1"], r"^addprocs: env must be a mapping .* not list \(\['A=1'\]\)$"),
        ({"A": 1}, r"^addprocs: env\['A'\] must be a str, not int \(1\)"),
        ({1: "a"}, r"^addprocs: env's names must be str, not int \(1\)$"),
    ],
)
def test_a_bad_env_is_refused_before_a_worker_starts(env: Any, says: str) -> None:
    before = workers()
    with pytest.raises(TypeError, match=says):
        addprocs(1, env=env)
    with pytest.raises(TypeError, match=says):
        addprocs(["pydist-test.invalid"], env=env)
    assert workers() == before


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (None, TypeError), (2.0, TypeError)])
def test_max_parallel_that_says_no_number_is_refused_before_ssh_runs(
    tmp_path: Path, value: Any, error: type[Exception]
) -> None:
    # a stand-in for ssh that only leaves a mark: whether addprocs got as far as running it
    ssh = tmp_path / "ssh"
    ssh.write_text(f"#!/bin/sh\ntouch {tmp_path / 'ran'}\nexit 255\n")
    ssh.chmod(0o755)
    with pytest.raises(error, match=rf"^addprocs: max_parallel must be an int >= 1, not {value}$"):
        addprocs(["pydist-test.invalid"], max_parallel=value, ssh=str(ssh))
    from pydistributed.managers import SSHManager

    with pytest.raises(error, match="max_parallel must be an int >= 1"):
        addprocs(SSHManager(["pydist-test.invalid"]), max_parallel=value, ssh=str(ssh))
    assert not (tmp_path / "ran").exists()


def test_worker_output_is_relayed(
    two_workers: list[int], capfd: pytest.CaptureFixture[str]
) -> None:
    w = two_workers[0]
    remotecall_fetch(h.say, w, "hello out")
    remotecall_fetch(h.say, w, "hello err", "stderr")
    out = err = ""

    def relayed() -> bool:
        nonlocal out, err
        o, e = capfd.readouterr()
        out, err = out + o, err + e
        return f"From worker {w}:\thello out" in out and f"From worker {w}:\thello err" in err

    wait_until(relayed, timeout=5, interval=0.05, what="the worker's output to be relayed")
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


def test_back_to_back_calls_run_on_the_main_thread(two_workers: list[int], tmp_path: Path) -> None:
    """The answer of one call must not beat the main thread back to idle (interruptible)."""
    w = two_workers[0]
    assert all(remotecall_fetch(_on_main, w) for _ in range(300))
    for i in range(5):
        remotecall_fetch(_on_main, w)
        running = str(tmp_path / f"running-{i}")
        fut = remotecall(h.touch_then, w, running, h.sleep_then, 10)
        _wait_file(running)
        start = time.monotonic()
        interrupt(w)
        with pytest.raises(RemoteException):
            fut.fetch(timeout=10)
        assert time.monotonic() - start < 2.0


def test_nested_self_call_keeps_the_worker_concurrent(two_workers: list[int]) -> None:
    w = two_workers[0]
    gate = Future(w)
    started = Future()

    def nested_then_wait(g: Future) -> object:
        remotecall_fetch(myid, myid())  # a call to itself, on the main thread
        started.put(True)
        return g.fetch(timeout=30)

    first = remotecall(nested_then_wait, w, gate)
    started.wait(timeout=10)
    assert remotecall_fetch(h.add, w, 2, 2) == 4  # not queued behind the blocked call
    gate.put("go")
    assert first.fetch(timeout=10) == "go"
