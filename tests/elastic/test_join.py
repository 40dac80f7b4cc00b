"""Workers started by hand with ``python -m pydistributed.worker --join HOST:PORT`` join the
master's ElasticManager and are workers like any other."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pydistributed import (
    ProcessExitedException,
    addprocs,
    default_worker_pool,
    myid,
    pmap,
    remotecall,
    remotecall_fetch,
    rmprocs,
    wait_for_workers,
    workers,
)
from pydistributed.managers import ElasticManager
from pydistributed.managers import wait_for_workers as wait_for_workers_m
from tests.conftest import wait_spinning, wait_until
from tests.elastic.conftest import Joiner, address

pytestmark = pytest.mark.timeout(120)


def _other() -> int:
    return myid()


def _hold_the_gil(path: str) -> int:
    open(path, "w").close()
    return sum(range(10**14))  # C code that never lets go of the GIL


@pytest.mark.parametrize("how", ["env", "file", "stdin"])
def test_join_with_the_cookie(elastic: ElasticManager, joiner: Joiner, how: str) -> None:
    proc = joiner.start(address(elastic), how=how)
    ids = wait_for_workers(1, 60)
    assert len(ids) == 1 and ids == workers() and ids == elastic.active
    (pid,) = ids
    assert remotecall_fetch(myid, pid) == pid
    assert remotecall_fetch(os.getpid, pid) == proc.pid
    assert pid in default_worker_pool().workers
    rmprocs(pid, waitfor=20)  # an Exit message: no local process handle to kill
    assert proc.wait(timeout=20) == 0
    assert workers() == [1] and elastic.active == [] and pid in elastic.terminated


def test_wait_for_workers_is_the_same_in_both_places() -> None:
    assert wait_for_workers is wait_for_workers_m
    assert wait_for_workers(0, 0) == workers()


def test_wait_for_workers_times_out_naming_the_count(
    elastic: ElasticManager, joiner: Joiner
) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"0 of 1 workers joined within 0\.3 s"):
        wait_for_workers(1, 0.3)
    assert time.monotonic() - t0 < 10
    joiner.start(address(elastic))
    wait_for_workers(1, 60)
    with pytest.raises(TimeoutError, match=r"1 of 2 workers joined within 0\.2 s"):
        wait_for_workers(2, 0.2)


def test_wait_for_workers_bad_arguments() -> None:
    with pytest.raises(TypeError):
        wait_for_workers("2", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be >= 0"):
        wait_for_workers(-1, 1)


def test_wait_counts_every_worker(elastic: ElasticManager, joiner: Joiner) -> None:
    """n counts all workers, those of addprocs too (as Julia's nworkers())."""
    local = addprocs(1)
    try:
        joiner.start(address(elastic))
        ids = wait_for_workers(2, 60)
        assert len(ids) == 2 and local[0] in ids
        assert elastic.active == [p for p in ids if p not in local]
    finally:
        rmprocs(local, waitfor=20)


def test_calls_pmap_and_worker_to_worker(elastic: ElasticManager, joiner: Joiner) -> None:
    for how in ("env", "file"):
        joiner.start(address(elastic), how=how)
    a, b = wait_for_workers(2, 60)
    assert sorted(pmap(lambda x: x * x, range(20))) == [x * x for x in range(20)]
    used = set(pmap(lambda _: myid(), range(40)))
    assert used <= {a, b}
    # worker to worker, both ways (all_to_all, lazy: the first call opens the connection)
    assert remotecall_fetch(lambda p: remotecall_fetch(_other, p), a, b) == b
    assert remotecall_fetch(lambda p: remotecall_fetch(_other, p), b, a) == a


def test_a_killed_worker_leaves(elastic: ElasticManager, joiner: Joiner) -> None:
    proc = joiner.start(address(elastic))
    (pid,) = wait_for_workers(1, 60)
    pending = remotecall(time.sleep, pid, 60)
    wait_until(lambda: remotecall_fetch(lambda: 1, pid) == 1, 30, what="the worker answers")
    os.kill(proc.pid, signal.SIGKILL)
    with pytest.raises(ProcessExitedException):
        pending.result(timeout=30)
    wait_until(lambda: pid not in workers(), 30, what="the worker to leave workers()")
    assert pid not in elastic.active and pid in elastic.terminated
    with pytest.raises(ProcessExitedException):
        remotecall_fetch(myid, pid)


def test_addprocs_with_it_is_refused(elastic: ElasticManager) -> None:
    with pytest.raises(TypeError, match="admits workers as they join"):
        addprocs(elastic)
    assert workers() == [1]


def test_join_command_and_close(joiner: Joiner) -> None:
    import socket

    em = ElasticManager("127.0.0.1", 0)
    cmd = em.join_command()
    assert cmd.endswith(f"-m pydistributed.worker --join 127.0.0.1:{em.port}")
    assert em.port > 0 and "listening" in repr(em)
    em.close()
    em.close()  # idempotent
    assert "closed" in repr(em)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", em.port), timeout=5).close()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="port"):
        ElasticManager("127.0.0.1", 70000)
    with pytest.raises(ValueError, match="topology"):
        ElasticManager("127.0.0.1", 0, topology="ring")


def test_rmprocs_of_a_worker_stuck_holding_the_gil(elastic: ElasticManager, joiner: Joiner) -> None:
    """No local process to kill: rmprocs closes the connection, and the worker's watchdog
    (serve.py) kills it, though no thread of its own can run."""
    proc = joiner.start(address(elastic))
    (pid,) = wait_for_workers(1, 60)
    started = joiner.tmp / "started"
    remotecall(_hold_the_gil, pid, str(started))
    wait_until(started.exists, 30, what="the call to start")
    wait_spinning(proc.pid)  # inside the C call for sure (an Exit read before ends it normally)
    rmprocs(pid, waitfor=2)  # exit message, interrupt, then its connection closed
    assert pid not in workers()
    assert proc.wait(timeout=30) == -signal.SIGKILL
