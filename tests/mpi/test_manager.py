"""``addprocs(MPIManager(np))`` against the real Open MPI: workers started as the ranks of one
``mpiexec`` job, removed with it, dead with it, and one clear error for each missing piece."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pydistributed import (
    ProcessExitedException,
    addprocs,
    myid,
    pmap,
    remotecall,
    remotecall_fetch,
    rmprocs,
    workers,
)
from pydistributed.errors import LaunchError
from pydistributed.managers import MPIManager

from ..conftest import end_workers, wait_until, worker_ospid
from .conftest import MPI_ENV, SRC, subprocess_env, wait_gone


def _rank() -> int:
    from mpi4py import MPI

    return int(MPI.COMM_WORLD.Get_rank())


def test_bad_arguments_are_refused() -> None:
    for np in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="positive int"):
            MPIManager(np)  # type: ignore[arg-type]
    m = MPIManager(3, mpiexec="/opt/mpi/bin/mpiexec", mpiflags="--bind-to none")
    assert m.mpiflags == ["--bind-to", "none"]
    assert repr(m) == (
        "MPIManager(np=3, mpiexec='/opt/mpi/bin/mpiexec', mpiflags=['--bind-to', 'none'])"
    )


def test_no_mpiexec_on_path_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no mpiexec there
    before = workers()
    with pytest.raises(FileNotFoundError, match=r"'mpiexec' was not found on PATH") as e:
        addprocs(MPIManager(2), env=MPI_ENV)
    assert "apt-get install openmpi-bin" in str(e.value)
    assert "mpiexec='/path/to/mpiexec'" in str(e.value)
    with pytest.raises(FileNotFoundError, match="'/nonexistent/mpiexec' was not found"):
        addprocs(MPIManager(2, mpiexec="/nonexistent/mpiexec"), env=MPI_ENV)
    assert workers() == before


@pytest.mark.usefixtures("mpi")
def test_calls_and_pmap_on_mpi_workers_and_rmprocs_ends_the_job(started: list[int]) -> None:
    m = MPIManager(2)
    t0 = time.monotonic()
    pids = addprocs(m, env=MPI_ENV)
    try:
        assert time.monotonic() - t0 < 60
        job = m.jobs[0]
        started.append(job.proc.pid)
        ospids = [worker_ospid(p) for p in pids]
        started.extend(ospids)
        assert len(pids) == 2 and workers() == pids
        # rank r of the job is the r-th new worker, in its own process under mpiexec
        assert [remotecall_fetch(_rank, p) for p in pids] == [0, 1]
        assert [remotecall_fetch(myid, p) for p in pids] == pids
        assert [remotecall_fetch(os.getpid, p) for p in pids] == ospids
        assert all(remotecall_fetch(os.getppid, p) == job.proc.pid for p in pids)
        assert pmap(lambda x: x + 1, range(100)) == list(range(1, 101))
        assert sorted(set(pmap(lambda _: myid(), range(40)))) == pids
        rmprocs(pids, waitfor=30)
        assert workers() == [1]
        # the job ends with its last worker: mpiexec and every rank, by pid
        assert wait_gone([job.proc.pid, *ospids]) == []
        assert job.proc.wait(timeout=10) == 0  # every rank called MPI_Finalize
    finally:
        end_workers(pids)


@pytest.mark.usefixtures("mpi")
def test_a_killed_rank_ends_the_job_and_its_workers_leave(started: list[int]) -> None:
    m = MPIManager(2)
    pids = addprocs(m, env=MPI_ENV)
    try:
        job = m.jobs[0]
        ospids = [worker_ospid(p) for p in pids]
        started.extend([job.proc.pid, *ospids])
        pending = remotecall(time.sleep, pids[1], 120)
        os.kill(ospids[0], signal.SIGKILL)
        # Open MPI aborts the whole job when a rank dies: both workers leave
        with pytest.raises(ProcessExitedException):
            pending.fetch(timeout=60)
        wait_until(lambda: workers() == [1], timeout=30, what="both workers to leave")
        with pytest.raises(ProcessExitedException):
            remotecall_fetch(myid, pids[0])
        assert wait_gone([job.proc.pid, *ospids]) == []
        assert job.proc.wait(timeout=10) != 0
    finally:
        end_workers(pids)


@pytest.mark.usefixtures("mpi")
def test_ranks_without_mpi4py_give_one_clear_error(started: list[int], no_mpi4py: str) -> None:
    m = MPIManager(2)
    before = workers()
    with pytest.raises(LaunchError) as e:
        addprocs(m, env={**MPI_ENV, "PYTHONPATH": no_mpi4py})
    started.append(m.jobs[0].proc.pid)
    message = str(e.value)
    assert message.startswith(f"mpiexec (pid {m.jobs[0].proc.pid}) exited with code 1")
    assert "pip install 'pydistributed[mpi]'" in message
    assert "0 of its 2 ranks reported an address" in message
    assert workers() == before
    assert wait_gone([m.jobs[0].proc.pid]) == []


MASTER = textwrap.dedent(
    """
    import json, os, sys, time
    from pydistributed import addprocs, remotecall_fetch
    from pydistributed.managers import MPIManager
    from pydistributed.cluster import current_cluster

    m = MPIManager(2)
    pids = addprocs(m, env=json.loads(sys.argv[1]))
    ospids = [i.ospid for i in current_cluster().registry.infos()]
    remotecall_fetch(print, pids[0], "hello from a rank")
    remotecall_fetch(lambda: print("to stderr", file=sys.stderr), pids[1])
    time.sleep(0.5)  # the relay prints the lines
    print("PIDS " + json.dumps([m.jobs[0].proc.pid, *ospids]), flush=True)
    if sys.argv[2] == "hang":
        time.sleep(300)
    """
)


@pytest.mark.usefixtures("mpi")
@pytest.mark.parametrize("end", ["exit", "killed"])
def test_the_job_ends_with_the_master(tmp_path: Path, started: list[int], end: str) -> None:
    script = tmp_path / "master.py"
    script.write_text(MASTER)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(MPI_ENV), "hang" if end == "killed" else ""],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(PYTHONPATH=SRC),
        start_new_session=True,
    )
    started.append(proc.pid)
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 120
        lines = []
        while not line.startswith("PIDS ") and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert line.startswith("PIDS "), (lines, proc.stderr.read() if proc.poll() else "")
        pids = json.loads(line[5:])
        started.extend(pids)
        assert len(pids) == 3
        assert any(x.startswith("From worker 2:\thello from a rank") for x in lines)
        if end == "killed":
            proc.kill()
            proc.communicate(timeout=30)
        else:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert "From worker 3:\tto stderr" in err
        # mpiexec (on SIGTERM from the kernel, or by itself) and every rank
        assert wait_gone(pids, timeout=30) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)  # reaps it and closes the pipes
