"""Inside an allocation: ``pydist --slurm`` in an ``sbatch`` script and an ``salloc`` shell,
and ``SlurmManager`` running a step of the allocation it is in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurmd import SlurmCluster

PROGRAM = """\
import os, sys
from pydistributed import pmap, remotecall_fetch, workers
ws = workers()
jobs = sorted({remotecall_fetch(lambda: os.environ["SLURM_JOB_ID"], w) for w in ws})
print("workers", len(ws))
print("same job", jobs == [os.environ["SLURM_JOB_ID"]])
print("pmap", sum(pmap(lambda x: x * x, range(100))))
print("argv", sys.argv[1:])
"""


def _run(argv: list[str], slurm: SlurmCluster, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command that waits for its job; cancel everything if it hangs."""
    try:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired:
        slurm.run("scancel", "--user", str(__import__("os").getuid()))
        raise


def _check(text: str) -> None:
    assert "workers 2" in text, text
    assert "same job True" in text, text
    assert f"pmap {sum(x * x for x in range(100))}" in text, text
    assert "argv ['--size', '3']" in text, text


def test_pydist_slurm_in_an_sbatch_script(clean: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text(PROGRAM)
    out = tmp_path / "out.txt"
    r = _run(
        [
            "sbatch",
            "--wait",
            "--ntasks=2",
            f"--output={out}",
            f"--chdir={tmp_path}",
            f"--wrap={sys.executable} -m pydistributed --slurm prog.py --size 3",
        ],
        clean,
        tmp_path,
    )
    text = out.read_text() if out.exists() else ""
    assert r.returncode == 0, f"{r.stderr}\n{text}"
    _check(text)


def test_pydist_slurm_in_an_salloc_shell(clean: SlurmCluster, tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text(PROGRAM)
    r = _run(
        [
            "salloc",
            "--ntasks=2",
            "--immediate=30",
            sys.executable,
            "-m",
            "pydistributed",
            "--slurm",
            "prog.py",
            "--size",
            "3",
        ],
        clean,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr + r.stdout
    _check(r.stdout)


def test_pydist_slurm_outside_an_allocation_is_refused(clean: SlurmCluster, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pydistributed", "--slurm", "-c", "print('ran')"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert "ran" not in r.stdout
    assert "--slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set)" in r.stderr


STEP_PROGRAM = """\
import os, subprocess, time
from pydistributed import addprocs, rmprocs, remotecall_fetch
from pydistributed.managers import SlurmManager
JOB = os.environ["SLURM_JOB_ID"]
def squeue(*args):
    return subprocess.run(["squeue", "-h", *args], capture_output=True, text=True).stdout
pids = addprocs(SlurmManager(2, timeout=60))
print("steps while there", squeue("-s", "-j", JOB, "-o", "%i").split())
print("job", remotecall_fetch(lambda: os.environ["SLURM_JOB_ID"], pids[0]) == JOB)
rmprocs(pids, waitfor=20)
for _ in range(100):
    steps = squeue("-s", "-j", JOB, "-o", "%i").split()
    if not [s for s in steps if not s.endswith((".extern", ".interactive", ".batch"))]:
        break
    time.sleep(0.2)
print("steps after", steps)
print("allocation still there", squeue("-j", JOB, "-o", "%T").strip())
"""


def test_slurm_manager_inside_an_allocation_runs_a_step_of_it(
    clean: SlurmCluster, tmp_path: Path
) -> None:
    (tmp_path / "step.py").write_text(STEP_PROGRAM)
    r = _run(["salloc", "--ntasks=2", "--immediate=30", sys.executable, "step.py"], clean, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "job True" in r.stdout, r.stdout
    while_there = next(x for x in r.stdout.splitlines() if x.startswith("steps while there"))
    after = next(x for x in r.stdout.splitlines() if x.startswith("steps after"))
    assert ".0'" in while_there, r.stdout  # a step of the allocation: JOB.0
    assert ".0'" not in after, r.stdout  # rmprocs ended that step...
    assert "allocation still there RUNNING" in r.stdout  # ...and not the allocation


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_slurm_manager_refuses_a_bad_count(bad: str) -> None:
    from pydistributed.managers import SlurmManager

    with pytest.raises(ValueError, match="positive int"):
        SlurmManager(int(bad))
