"""``mpiexec -n N python -m pydistributed.mpi SCRIPT ARGS`` against the real Open MPI: rank 0
runs the script as process 1, the other ranks are its workers, mpiexec returns the script's
exit status, and every rank is gone at the end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from .conftest import run_mpiexec, wait_gone

pytestmark = pytest.mark.usefixtures("mpi")

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from mpi4py import MPI
    from pydistributed import myid, nprocs, pmap, remotecall_fetch, workers

    def rank_and_pid():
        return MPI.COMM_WORLD.Get_rank(), myid(), os.getpid()

    ranks = {w: remotecall_fetch(rank_and_pid, w) for w in workers()}
    report = {
        "argv": sys.argv,
        "name": __name__,
        "myid": myid(),
        "rank": MPI.COMM_WORLD.Get_rank(),
        "nprocs": nprocs(),
        "workers": workers(),
        "ranks": {str(w): list(r) for w, r in ranks.items()},
        "pmap": pmap(lambda x: x * x, range(20)),
        "where": sorted(set(pmap(lambda _: myid(), range(40)))),
        "pid": os.getpid(),
    }
    # one write per line: mpiexec merges the ranks' output as it comes, and a line written in
    # pieces (print, unbuffered) can take another rank's text in between
    def say(line):
        sys.stdout.write(line + "\\n")
        sys.stdout.flush()

    say("REPORT " + json.dumps(report))
    remotecall_fetch(say, workers()[0], "a line from a worker")
    sys.exit(int(sys.argv[2]))
    """
)


def _report(stdout: str) -> dict:  # type: ignore[type-arg]
    line = next(x for x in stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT ") :])  # type: ignore[no-any-return]


@pytest.mark.parametrize("code", [0, 3])
def test_rank_zero_runs_the_script_and_the_others_are_its_workers(
    tmp_path: Path, started: list[int], code: int
) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    done = run_mpiexec(3, ["-m", "pydistributed.mpi", str(script), "an arg", str(code)], started)
    assert done.returncode == code, done.stderr
    r = _report(done.stdout)
    assert r["argv"] == [str(script), "an arg", str(code)]
    assert r["name"] == "__main__"
    assert (r["myid"], r["rank"], r["nprocs"], r["workers"]) == (1, 0, 3, [2, 3])
    # rank r is worker r + 1, in its own process
    assert {w: v[:2] for w, v in r["ranks"].items()} == {"2": [1, 2], "3": [2, 3]}
    assert len({r["pid"], *(v[2] for v in r["ranks"].values())}) == 3
    assert r["pmap"] == [x * x for x in range(20)]
    assert r["where"] == [2, 3]
    # a worker rank's stdout is mpiexec's, as the rank wrote it
    assert "a line from a worker" in done.stdout
    # mpiexec returned: every rank has ended
    assert wait_gone([r["pid"], *(v[2] for v in r["ranks"].values())], timeout=5) == []


def test_an_uncaught_exception_prints_its_traceback_and_gives_status_1(
    tmp_path: Path, started: list[int]
) -> None:
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            """
            from pydistributed import workers
            print("workers", workers(), flush=True)

            def inner():
                raise ValueError("boom from the script")

            inner()
            """
        )
    )
    done = run_mpiexec(2, ["-m", "pydistributed.mpi", str(script)], started)
    assert done.returncode == 1, done.stderr
    assert "workers [2]" in done.stdout
    err = done.stderr
    assert "Traceback (most recent call last):" in err
    assert f'File "{script}", line 6, in inner' in err
    assert "ValueError: boom from the script" in err
    assert "pydistributed/mpi.py" not in err  # the traceback starts at the script, as python's


def test_a_script_with_one_rank_has_no_workers(tmp_path: Path, started: list[int]) -> None:
    script = tmp_path / "alone.py"
    script.write_text("from pydistributed import workers\nprint('workers', workers())\n")
    done = run_mpiexec(1, ["-m", "pydistributed.mpi", str(script)], started)
    assert done.returncode == 0, done.stderr
    assert "workers [1]" in done.stdout


def test_a_missing_script_is_named(tmp_path: Path, started: list[int]) -> None:
    missing = tmp_path / "nowhere.py"
    done = run_mpiexec(2, ["-m", "pydistributed.mpi", str(missing)], started)
    assert done.returncode == 2
    assert f"can't open file '{missing}'" in done.stderr


def test_without_mpi4py_every_rank_says_how_to_install_it(
    tmp_path: Path, started: list[int], no_mpi4py: str
) -> None:
    script = tmp_path / "job.py"
    script.write_text("print('never runs')\n")
    done = run_mpiexec(
        2,
        ["-m", "pydistributed.mpi", str(script)],
        started,
        PYTHONPATH=f"{no_mpi4py}:{_pythonpath()}",
    )
    assert done.returncode == 1
    assert "never runs" not in done.stdout
    assert "pip install 'pydistributed[mpi]'" in done.stderr
    assert "mpi4py" in done.stderr


def _pythonpath() -> str:
    from .conftest import subprocess_env

    return subprocess_env()["PYTHONPATH"]


@pytest.mark.parametrize("who", ["rank 0", "a worker rank"])
def test_a_rank_that_dies_ends_the_whole_job(tmp_path: Path, started: list[int], who: str) -> None:
    script = tmp_path / "dies.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            from pydistributed import remote_do, remotecall_fetch, workers

            pids = [os.getpid()] + [remotecall_fetch(os.getpid, w) for w in workers()]
            print("PIDS", *pids, flush=True)
            if {who!r} == "rank 0":
                os.kill(os.getpid(), signal.SIGKILL)
            remote_do(os.kill, workers()[0], pids[1], signal.SIGKILL)
            time.sleep(60)  # Open MPI ends this rank too
            print("not reached", flush=True)
            """
        )
    )
    done = run_mpiexec(3, ["-m", "pydistributed.mpi", str(script)], started, timeout=60)
    assert done.returncode != 0
    assert "not reached" not in done.stdout
    line = next(x for x in done.stdout.splitlines() if x.startswith("PIDS "))
    pids = [int(p) for p in line.split()[1:]]
    started.extend(pids)
    assert len(pids) == 3
    assert "exited on signal 9 (Killed)" in done.stderr
    assert wait_gone(pids, timeout=5) == []
