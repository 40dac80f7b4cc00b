"""``srun --mpi=pmix -n 3 python -m pydistributed.mpi SCRIPT`` in the real one-node Slurm: the
ranks that Slurm starts (PMIx, no mpiexec) become process 1 and its workers, and srun returns
the script's exit code. Needs Open MPI and mpi4py as well as Slurm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mpi.conftest import MPI_ENV, ROOT, SRC, _why_no_mpi
from tests.mpi.test_script import SCRIPT, _report
from tests.slurm.slurmd import SlurmCluster


@pytest.mark.parametrize("code", [0, 3])
def test_mpi_script_mode_under_srun_pmix(clean: SlurmCluster, tmp_path: Path, code: int) -> None:
    why = _why_no_mpi()
    if why:
        if os.environ.get("PYDIST_REQUIRE_MPI_TESTS"):
            pytest.fail(f"PYDIST_REQUIRE_MPI_TESTS is set, but {why}")
        pytest.skip(why)
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = dict(clean.env, **MPI_ENV)
    env["PYTHONPATH"] = os.pathsep.join([SRC, ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    argv = [
        "srun", "--mpi=pmix", "--ntasks=3", "--overcommit", "--immediate=30",
        f"--chdir={tmp_path}", sys.executable, "-m", "pydistributed.mpi", str(script),
        "an arg", str(code),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        clean.run("scancel", "--user", str(os.getuid()))
        raise
    assert done.returncode == code, f"{done.returncode}\n{done.stderr}\n{done.stdout}"
    r = _report(done.stdout)
    assert (r["myid"], r["rank"], r["nprocs"], r["workers"]) == (1, 0, 3, [2, 3]), json.dumps(r)
    assert {w: v[:2] for w, v in r["ranks"].items()} == {"2": [1, 2], "3": [2, 3]}
    assert r["pmap"] == [x * x for x in range(20)]
    assert r["where"] == [2, 3]
