"""A real one-node Slurm for the Slurm workers' tests (session-scoped), and the checks that
every test leaves no job and no worker process behind.

The ``slurm`` fixture starts munged, slurmctld and slurmd from a temporary directory on free
ports (``tests/slurm/slurmd.py``), points ``SLURM_CONF`` at it for the session, and stops the
daemons by PID at the end. Skipped with a reason only where the daemons cannot start;
``PYDIST_REQUIRE_SLURM_TESTS=1`` (set by ``.ci/run``) makes that a failure instead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import pydistributed
from tests.conftest import end_workers, is_alive, wait_until, worker_table
from tests.slurm.slurmd import SlurmCluster, why_no_slurm

SRC = str(Path(pydistributed.__file__).resolve().parents[1])  # the tree under test
ROOT = str(Path(__file__).resolve().parents[2])


def _unavailable(why: str) -> None:
    if os.environ.get("PYDIST_REQUIRE_SLURM_TESTS"):  # set by .ci/run: no silent skip
        pytest.fail(f"PYDIST_REQUIRE_SLURM_TESTS is set, but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    why = why_no_slurm()
    if why:
        _unavailable(why)
    cluster = SlurmCluster()
    saved = {k: v for k, v in os.environ.items() if k.startswith(("SLURM_", "SBATCH_"))}
    saved_path = os.environ.get("PYTHONPATH")
    try:
        try:
            cluster.start()
        except Exception as e:
            _unavailable(f"the Slurm daemons did not start: {e}\n{cluster.log_tail()}")
        for key in saved:
            del os.environ[key]  # the tests run outside any allocation
        os.environ["SLURM_CONF"] = str(cluster.conf)
        # processes started by srun/sbatch find this tree (they inherit the environment)
        paths = [SRC, ROOT, os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        yield cluster
    finally:
        cluster.stop()
        os.environ.pop("SLURM_CONF", None)
        os.environ.update(saved)
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path


@pytest.fixture
def clean(slurm: SlurmCluster) -> Iterator[SlurmCluster]:
    """The cluster; after the test: no worker of the test left, no job in the queue, and
    every worker's OS process gone."""
    before = set(worker_table())
    ospids: set[int] = set()

    def note() -> None:
        ospids.update(
            info.ospid for p, info in worker_table().items() if p not in before and info.ospid
        )

    try:
        yield slurm
        note()
    finally:
        note()
        end_workers([p for p in worker_table() if p not in before])
    jobs = slurm.wait_no_jobs(30)
    if jobs:
        slurm.run("scancel", "--user", str(os.getuid()))
    alive = [p for p in ospids if not _gone(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not jobs, f"jobs left in the queue: {jobs}"
    assert not alive, f"worker processes left: {alive}"


def _gone(ospid: int) -> bool:
    try:
        wait_until(lambda: not is_alive(ospid), timeout=15, interval=0.1)
    except AssertionError:
        return False
    return True
