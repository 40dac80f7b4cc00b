"""SlurmManager's options: refused before anything is submitted, or mapped to srun flags
(the srun command line is checked as built; tests/slurm/test_slurm.py runs it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pydistributed import addprocs, remotecall_fetch
from pydistributed.managers import SlurmManager
from pydistributed.managers.slurm import default_timeout
from pydistributed.managers.slurmjob import srun_command
from tests.slurm.slurmd import SlurmCluster


def test_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="unknown options partiton"):
        SlurmManager(2, partiton="debug")


def test_srun_flags_must_be_a_list() -> None:
    with pytest.raises(TypeError, match="srun_flags is a list"):
        SlurmManager(2, srun_flags="--exclusive")


@pytest.mark.parametrize("value", ["", "a b", True, 1.5, ["x"]])
def test_bad_option_values_are_refused(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match="partition="):
        SlurmManager(2, partition=value)


def test_options_map_to_flags_in_order() -> None:
    cmd = srun_command(
        3,
        {"partition": "gpu", "time": "01:00:00", "ntasks_per_node": 2, "mem_per_cpu": "1G"},
        "pydist-x",
        ["python", "-m", "pydistributed.worker"],
        overcommit=True,
        srun_flags=["--exclusive", "--partition=other"],
    )
    assert cmd[:5] == ["srun", "--ntasks=3", "--job-name=pydist-x", "--input=all", "--label"]
    flags = cmd[5:-3]
    assert flags.index("--partition=gpu") < flags.index("--partition=other")  # raw flags win
    for flag in ("--time=01:00:00", "--ntasks-per-node=2", "--mem-per-cpu=1G", "--overcommit"):
        assert flag in flags
    assert cmd[-3:] == ["python", "-m", "pydistributed.worker"]


def test_default_timeout_is_at_least_five_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "10")
    assert default_timeout() == 300
    assert SlurmManager(1).timeout == 300
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "900")
    assert SlurmManager(1).timeout == 900
    assert SlurmManager(1, timeout=None).timeout is None


def test_env_dir_and_exename_reach_the_workers(clean: SlurmCluster, tmp_path: Path) -> None:
    import sys

    (pid,) = addprocs(
        SlurmManager(1, timeout=60),
        env={"PD_SLURM_TEST": "yes"},
        dir=str(tmp_path),
        exename=sys.executable,
    )
    assert remotecall_fetch(lambda: os.environ.get("PD_SLURM_TEST"), pid) == "yes"
    assert remotecall_fetch(os.getcwd, pid) == str(tmp_path)
    assert remotecall_fetch(lambda: os.environ.get("OMP_NUM_THREADS"), pid) == "1"
