"""SlurmManager against a real one-node Slurm (tests/slurm/conftest.py).

The node declares 2 CPUs: a job of 3 tasks without ``--overcommit`` waits in the queue for
ever, which is how the tests make a job that stays pending.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from pydistributed import (
    ProcessExitedException,
    addprocs,
    pmap,
    remotecall,
    remotecall_fetch,
    rmprocs,
    workers,
)
from pydistributed.cluster import current_cluster
from pydistributed.managers import SlurmManager
from pydistributed.managers.slurm import SlurmLaunchError, SlurmTimeoutError
from tests.conftest import wait_until, worker_ospid
from tests.slurm.slurmd import SlurmCluster, free_port


def _env(pid: int, name: str) -> str | None:
    """Variable ``name`` of worker ``pid``'s environment."""
    value = remotecall_fetch(lambda k: os.environ.get(k), pid, name)
    return None if value is None else str(value)


def _job_of(pid: int) -> str:
    return str(_env(pid, "SLURM_JOB_ID"))


def test_two_workers_answer_calls_and_pmap(clean: SlurmCluster) -> None:
    pids = addprocs(SlurmManager(2, timeout=60))
    assert len(pids) == 2 and set(pids) <= set(workers())
    jobs = {_job_of(p) for p in pids}
    assert len(jobs) == 1 and jobs != {"None"}  # one job, both tasks of it
    tasks = sorted(str(_env(p, "SLURM_PROCID")) for p in pids)
    assert tasks == ["0", "1"]
    assert pmap(lambda x: x * x, range(50)) == [x * x for x in range(50)]
    assert sorted(pmap(lambda _: os.getpid(), range(20), batch_size=1)) != []
    assert clean.jobs() != []  # the job runs while its workers are there
    rmprocs(pids, waitfor=20)
    assert workers() == [1]
    assert clean.wait_no_jobs(20) == []  # rmprocs of all of them ended the job


def test_the_cookie_is_on_no_command_line_and_in_no_environment(clean: SlurmCluster) -> None:
    manager = SlurmManager(1, timeout=60)
    addprocs(manager)
    cookie = current_cluster().cookie.encode()
    srun = manager.jobs[0].proc.pid
    ospid = worker_ospid(workers()[-1])
    for pid in (srun, ospid):
        assert cookie not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert cookie not in Path(f"/proc/{pid}/environ").read_bytes()
    cmdline = Path(f"/proc/{srun}/cmdline").read_bytes().split(b"\0")
    assert b"--input=all" in cmdline and b"--label" in cmdline


def test_options_become_srun_flags(clean: SlurmCluster) -> None:
    manager = SlurmManager(
        2,
        partition="debug",
        time="00:05:00",
        cpus_per_task=1,
        mem_per_cpu="100M",
        srun_flags=["--comment=pydist-test"],
        timeout=60,
    )
    pids = addprocs(manager)
    job = _job_of(pids[0])
    r = clean.run("scontrol", "show", "job", job)
    assert "Partition=debug" in r.stdout and "TimeLimit=00:05:00" in r.stdout
    assert "Comment=pydist-test" in r.stdout


def test_overcommit_gives_more_workers_than_cpus(clean: SlurmCluster) -> None:
    pids = addprocs(SlurmManager(4, overcommit=True, timeout=60))
    assert len(pids) == 4
    assert sorted(pmap(lambda x: x + 1, range(8))) == list(range(1, 9))


def test_worker_output_is_relayed_with_its_id(
    clean: SlurmCluster, capfd: pytest.CaptureFixture[str]
) -> None:
    (pid,) = addprocs(SlurmManager(1, timeout=60))
    remotecall_fetch(print, pid, "hello from a slurm task")
    remotecall_fetch(lambda: print("to stderr", file=__import__("sys").stderr), pid)
    said = [f"From worker {pid}:\thello from a slurm task", f"From worker {pid}:\tto stderr"]
    out: list[str] = []
    err: list[str] = []

    def both() -> bool:  # each read takes what came since the last: keep it all
        o, e = capfd.readouterr()
        out.append(o)
        err.append(e)
        return said[0] in "".join(out) and said[1] in "".join(err)

    wait_until(both, timeout=10, what="the worker's two lines to be relayed")
    assert said[0] in "".join(out)
    assert said[1] in "".join(err)


def test_pending_job_reports_progress_then_times_out_and_is_cancelled(
    clean: SlurmCluster,
) -> None:
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(SlurmTimeoutError) as info:
        addprocs(SlurmManager(3, timeout=6, progress=said.append))  # 3 CPUs: never fits
    took = time.monotonic() - start
    e = info.value
    assert 5 < took < 40
    assert e.state == "PENDING" and e.reason and e.job_id
    assert f"job {e.job_id} PENDING" in str(e) and "0 of 3 workers reported" in str(e)
    assert any(f"0 of 3 workers joined, job {e.job_id} PENDING: " in s for s in said), said
    assert isinstance(e, TimeoutError)
    assert clean.wait_no_jobs(20) == []
    assert workers() == [1]


def test_progress_goes_to_standard_error_by_default(
    clean: SlurmCluster, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SlurmTimeoutError):
        addprocs(SlurmManager(3, timeout=4))
    err = capfd.readouterr().err
    assert "pydist: SlurmManager: 0 of 3 workers joined, job " in err
    assert " PENDING: " in err


def test_unknown_partition_is_one_clear_error(clean: SlurmCluster) -> None:
    with pytest.raises(SlurmLaunchError, match="Invalid partition name") as info:
        addprocs(SlurmManager(1, partition="no-such-partition", timeout=60))
    assert "srun exited" in str(info.value)
    assert workers() == [1]


def test_bad_time_is_one_clear_error(clean: SlurmCluster) -> None:
    with pytest.raises(SlurmLaunchError, match="Invalid --time specification"):
        addprocs(SlurmManager(1, time="1:2:3:4:5", timeout=60))
    assert workers() == [1]


def test_controller_not_running_fails_within_bounded_time(
    clean: SlurmCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "slurm.conf"
    text = clean.conf.read_text()
    port = clean.ctl_port
    conf.write_text(text.replace(f"SlurmctldPort={port}", f"SlurmctldPort={free_port()}"))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    start = time.monotonic()
    with pytest.raises(SlurmLaunchError, match="Unable to contact slurm controller"):
        addprocs(SlurmManager(1, timeout=120, progress=False))
    assert time.monotonic() - start < 60
    assert workers() == [1]


def test_controller_that_does_not_answer_fails_within_bounded_time(clean: SlurmCluster) -> None:
    clean.pause_controller()  # SIGSTOP: it accepts connections and never answers
    try:
        start = time.monotonic()
        with pytest.raises(SlurmLaunchError, match=r"timed out|does not answer"):
            addprocs(SlurmManager(1, timeout=30, progress=False))
        assert time.monotonic() - start < 90
    finally:
        clean.resume_controller()
    assert workers() == [1]


def test_job_cancelled_while_pending_is_one_clear_error(clean: SlurmCluster) -> None:
    errors: list[BaseException] = []

    def add() -> None:
        try:
            addprocs(SlurmManager(3, timeout=60, progress=False))
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=add, daemon=True)
    t.start()
    job = wait_until(lambda: clean.jobs(), timeout=20, interval=0.2)[0].split()[0]
    assert clean.run("scancel", job).returncode == 0
    t.join(60)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], SlurmLaunchError)
    assert "srun exited" in str(errors[0]) and "cancel" in str(errors[0]).lower()
    assert workers() == [1]


def test_scancel_from_outside_removes_the_workers(
    clean: SlurmCluster, caplog: pytest.LogCaptureFixture
) -> None:
    pids = addprocs(SlurmManager(2, timeout=60))
    job = _job_of(pids[0])
    pending = remotecall(time.sleep, pids[0], 60)
    with caplog.at_level(logging.WARNING, logger="pydistributed.slurm"):
        assert clean.run("scancel", job).returncode == 0
        with pytest.raises(ProcessExitedException):
            pending.fetch(timeout=30)
        wait_until(lambda: workers() == [1], timeout=30, what="the workers to leave")
        assert clean.wait_no_jobs(20) == []
        # the job's end is told, with what srun said of it
        wait_until(lambda: f"Slurm job {job} of workers" in caplog.text, timeout=20)
    assert "CANCELLED" in caplog.text or "cancel" in caplog.text.lower(), caplog.text


def test_the_masters_exit_cancels_the_job(clean: SlurmCluster, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "master.py"
    script.write_text(
        "import os\n"
        "from pydistributed import addprocs, remotecall_fetch\n"
        "from pydistributed.managers import SlurmManager\n"
        "pids = addprocs(SlurmManager(2, timeout=60))\n"
        "print(remotecall_fetch(os.getpid, pids[0]), remotecall_fetch(os.getpid, pids[1]))\n"
        "print(remotecall_fetch(lambda: os.environ['SLURM_JOB_ID'], pids[0]), flush=True)\n"
    )
    r = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    ospids = [int(p) for p in lines[0].split()]
    assert clean.wait_no_jobs(20) == []
    for p in ospids:
        wait_until(lambda p=p: not Path(f"/proc/{p}").exists(), timeout=20, interval=0.1)


def test_a_worker_that_cannot_start_is_one_clear_error(clean: SlurmCluster) -> None:
    with pytest.raises(SlurmLaunchError, match="srun exited") as info:
        addprocs(SlurmManager(2, timeout=60), exename="/nonexistent/python3")
    assert "/nonexistent/python3" in str(info.value) + info.value.output
    assert workers() == [1]


def test_a_missing_dir_is_named_as_the_cause(clean: SlurmCluster) -> None:
    with pytest.raises(SlurmLaunchError) as info:
        addprocs(SlurmManager(1, timeout=60), dir="/nonexistent/dir")
    assert "dir='/nonexistent/dir': no such directory here" in str(info.value)
    assert "srun" not in str(info.value).split(":")[0] and "Slurm's client" not in str(info.value)
    assert workers() == [1]


def test_a_killed_master_leaves_no_job(clean: SlurmCluster, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    script = tmp_path / "master.py"
    script.write_text(
        "import os, time\n"
        "from pydistributed import addprocs, remotecall_fetch\n"
        "from pydistributed.managers import SlurmManager\n"
        "pids = addprocs(SlurmManager(2, timeout=60))\n"
        "print(*[remotecall_fetch(os.getpid, p) for p in pids], flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ospids = [int(p) for p in proc.stdout.readline().split()]
        assert len(ospids) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    # its workers see the connection drop and exit; the tasks end, and with them the job
    for p in ospids:
        wait_until(lambda p=p: not Path(f"/proc/{p}").exists(), timeout=60, interval=0.1)
    assert clean.wait_no_jobs(30) == []


def test_a_task_that_dies_before_reporting_fails_the_launch_at_once(
    clean: SlurmCluster, tmp_path: Path
) -> None:
    import sys

    # task 1 fails as a missing module would; task 0 starts a real worker
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        'if [ "$SLURM_PROCID" = 1 ]; then echo "no module named pydistributed" >&2; exit 3; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    start = time.monotonic()
    with pytest.raises(SlurmLaunchError, match=r"task 1 of job \d+ ended before reporting") as info:
        addprocs(SlurmManager(2, timeout=120), exename=str(python))
    assert time.monotonic() - start < 30  # not the timeout
    assert "Exited with exit code 3" in str(info.value)
    assert "no module named pydistributed" in str(info.value)
    assert workers() == [1]
