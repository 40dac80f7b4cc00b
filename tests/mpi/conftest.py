"""The MPI tests run the real Open MPI (``mpiexec`` from openmpi-bin) and the real mpi4py.

They skip, with the reason, only where mpiexec or mpi4py cannot be used; with
``PYDIST_REQUIRE_MPI_TESTS`` set (``.ci/run`` sets it) they fail instead. As root, Open MPI
refuses to run without ``OMPI_ALLOW_RUN_AS_ROOT`` and ``OMPI_ALLOW_RUN_AS_ROOT_CONFIRM``, and
more ranks than cores need ``OMPI_MCA_rmaps_base_oversubscribe``: the tests give these (and
``PYTHONPATH``, the tree under test) to the processes they start, never to their own process.
Every process a test starts is ended by its pid, and the test checks that none is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pydistributed

SRC = str(Path(pydistributed.__file__).resolve().parents[1])  # the tree under test
ROOT = str(Path(__file__).resolve().parents[2])  # the repository (tests/ importable)

# for the processes the tests start (mpiexec and its ranks) only
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}


def _why_no_mpi() -> str | None:
    if shutil.which("mpiexec") is None:
        return "no mpiexec on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev)"
    try:
        import mpi4py  # noqa: F401
    except ImportError as e:
        return f"mpi4py cannot be imported ({e}): pip install 'pydistributed[mpi]'"
    return None


@pytest.fixture(scope="session")
def mpi() -> None:
    """Skip (or fail, with PYDIST_REQUIRE_MPI_TESTS) where Open MPI or mpi4py is missing."""
    why = _why_no_mpi()
    if why:
        if os.environ.get("PYDIST_REQUIRE_MPI_TESTS"):  # set by .ci/run: no silent skip
            pytest.fail(f"PYDIST_REQUIRE_MPI_TESTS is set, but {why}")
        pytest.skip(why)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts: ours, Open MPI's root switches, the tree
    under test first on PYTHONPATH."""
    env = dict(os.environ)
    env.update(MPI_ENV)
    env["PYTHONPATH"] = os.pathsep.join([SRC, ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def process_state(ospid: int) -> str | None:
    """The state letter of an OS process (None if gone; 'Z' is a zombie)."""
    try:
        with open(f"/proc/{ospid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(ospid: int) -> bool:
    state = process_state(ospid)
    return state is not None and state not in ("Z", "X")


def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """Wait until no process of ``pids`` runs; those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_all(pids: list[int]) -> None:
    """SIGKILL every process of ``pids`` still running (cleanup after a failure)."""
    for p in pids:
        if alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def started() -> Iterator[list[int]]:
    """OS pids a test started (mpiexec, its ranks, masters): any still running at the end is
    killed, and the test fails if one had to be."""
    pids: list[int] = []
    yield pids
    left = wait_gone(pids, timeout=10.0)
    kill_all(left)
    assert not left, f"processes left behind: {left}"


def run_mpiexec(
    np: int, args: list[str], started: list[int], timeout: float = 120.0, **env: str
) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n NP python ARGS`` with the test environment; its exit status and output."""
    cmd = ["mpiexec", "-x", "PYTHONPATH", "-n", str(np), sys.executable, *args]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(**env),
        start_new_session=True,
    )
    started.append(proc.pid)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def no_mpi4py(tmp_path: Path) -> str:
    """A directory that, first on PYTHONPATH, makes ``import mpi4py`` fail (a fault injected
    on purpose: mpi4py is installed here, and the tests need a process without it)."""
    d = tmp_path / "no_mpi4py"
    (d / "mpi4py").mkdir(parents=True)
    (d / "mpi4py" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mpi4py' (hidden by the test)\", "
        "name='mpi4py')\n"
    )
    return str(d)
