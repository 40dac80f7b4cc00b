"""MPI: ``MPIManager(np)`` starts workers as the ranks of an ``mpiexec`` job; the ranks of a job
started by the user (``mpiexec ... python -m pydistributed.mpi SCRIPT``) join through
:class:`MPIRanksManager`.

Both announce their workers one at a time, in rank order, each once the one before has joined,
so that rank ``r`` of the job becomes worker ``first + r`` (``first`` is 2 in a script's job,
whose rank 0 is process 1). A worker's ``WorkerConfig.userdata`` is its :class:`RankInfo`.

``MPIManager``'s job (``mpijob.py``): ``mpiexec -n NP [mpiflags] python -m pydistributed.mpi
--workers``. The cookie goes to mpiexec's standard input, which mpiexec hands to rank 0, which
broadcasts it to the other ranks over MPI: it is on no command line and in no environment.
Each rank prints its address, tagged with its rank, on mpiexec's stdout. The job ends when its
last worker leaves (``rmprocs``, or the master's exit). mpiexec ends the whole job when one
rank dies (Open MPI does), so all its workers leave together.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..timeouts import worker_timeout
from .base import ClusterManager, WorkerConfig
from .local import spawner, worker_environment
from .mpijob import MPIJob

__all__ = ["MPIManager", "MPIRanksManager", "RankHandle", "RankInfo"]

MISSING_MPIEXEC = (
    "MPIManager: {mpiexec!r} was not found on PATH; install an MPI library that provides it "
    "(Debian: apt-get install openmpi-bin libopenmpi-dev; then pip install "
    "'pydistributed[mpi]' for mpi4py), or give its path: MPIManager(np, mpiexec='/path/to/mpiexec')"
)


_DIE_WITH_PARENT = r"""
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
except Exception:
    pass
if os.getppid() != int(sys.argv[1]):  # the master died before the prctl
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass
class RankInfo:
    """A worker's rank (``WorkerConfig.userdata``), and how its admission went."""

    rank: int
    job: MPIJob | None = None
    joined: threading.Event = field(default_factory=threading.Event)
    failed: threading.Event = field(default_factory=threading.Event)


class RankHandle:
    """``WorkerConfig.process`` of a rank: not a process the master can wait on or kill (mpiexec
    owns it), but the holder of its stderr pipe for the relay, and the sign that its admission
    failed: the master kills the process of a worker that fails to join."""

    def __init__(self, info: RankInfo, stderr: Any = None) -> None:
        self.info = info
        self.stderr = stderr

    def wait(self, timeout: float | None = None) -> int:
        raise subprocess.TimeoutExpired("MPI rank", timeout or 0.0)  # its exit is not ours

    def kill(self) -> None:
        if not self.info.joined.is_set():
            self.info.failed.set()


def _announce_in_order(
    configs: list[WorkerConfig], launched: list[WorkerConfig], launch_ntfy: threading.Condition
) -> None:
    """Announce ``configs`` one at a time, each once the one before has joined (or failed to)."""
    limit = worker_timeout() + 10.0  # the master gives up on a worker within worker_timeout
    for cfg in configs:
        info: RankInfo = cfg.userdata
        with launch_ntfy:
            launched.append(cfg)
            launch_ntfy.notify_all()
        for _ in range(int(limit / 0.05)):
            if info.joined.wait(0.05) or info.failed.is_set():
                break
        if not info.joined.is_set():
            return  # the master raises that worker's error; the rest are not announced


class MPIRanksManager(ClusterManager):
    """The worker ranks of a running MPI job, by address (``python -m pydistributed.mpi``):
    launches nothing; rank ``r`` of ``addresses`` (rank 1 first) becomes worker ``r + 1``."""

    def __init__(self, addresses: Sequence[tuple[str, int]], first_rank: int = 1) -> None:
        self.addresses = list(addresses)
        self.first_rank = first_rank

    def __repr__(self) -> str:
        return f"MPIRanksManager({len(self.addresses)} ranks)"

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        configs = []
        for i, (host, port) in enumerate(self.addresses):
            info = RankInfo(self.first_rank + i)
            configs.append(
                WorkerConfig(host=host, port=port, process=RankHandle(info), userdata=info)
            )
        _announce_in_order(configs, launched, launch_ntfy)

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        if op == "register" and isinstance(config.userdata, RankInfo):
            config.userdata.joined.set()


class MPIManager(ClusterManager):
    """``np`` workers started as the ranks of one ``mpiexec`` job (MPIClusterManagers.jl's
    ``MPIManager``, TCP transport): ``MPIManager(np, mpiexec="mpiexec", mpiflags=())``.

    ``mpiexec`` is the launcher's name or path; ``mpiflags`` are extra flags before the program
    (a sequence, or one string split on spaces), e.g. ``["--host", "h1:2,h2:2"]``. The ranks run
    ``exename -m pydistributed.mpi --workers`` and need mpi4py (``pip install
    'pydistributed[mpi]'``); those on this host listen on 127.0.0.1, the others on every
    interface. With Open MPI's mpiexec, the variables the workers need (``env``, the master's
    ``sys.path`` as ``PYTHONPATH``) are passed to every rank with ``-x``.
    """

    def __init__(
        self,
        np: int,
        mpiexec: str | os.PathLike[str] = "mpiexec",
        mpiflags: str | Sequence[str] = (),
    ) -> None:
        if isinstance(np, bool) or not isinstance(np, int) or np < 1:
            raise ValueError(f"the number of MPI ranks is a positive int, not {np!r}")
        self.np = np
        self.mpiexec = os.fspath(mpiexec)
        flags = mpiflags.split() if isinstance(mpiflags, str) else list(mpiflags)
        self.mpiflags = [str(f) for f in flags]
        self.jobs: list[MPIJob] = []

    def __repr__(self) -> str:
        return f"MPIManager(np={self.np}, mpiexec={self.mpiexec!r}, mpiflags={self.mpiflags!r})"

    def _command(
        self, params: dict[str, Any], env: dict[str, str], exported: list[str]
    ) -> list[str]:
        """``mpiexec [-x NAME...] -n NP [mpiflags] exename [exeflags] -m pydistributed.mpi
        --workers``.

        Raises:
            FileNotFoundError: there is no such mpiexec (the message names the fix).
        """
        path = shutil.which(self.mpiexec, path=env.get("PATH"))
        if path is None:
            raise FileNotFoundError(MISSING_MPIEXEC.format(mpiexec=self.mpiexec))
        exename = str(params.get("exename") or sys.executable)
        exeflags = params.get("exeflags") or ()
        if isinstance(exeflags, str):
            exeflags = exeflags.split()
        forward: list[str] = []
        if _is_open_mpi(path, env):
            for name in exported:
                forward += ["-x", name]
        return [
            path,
            *forward,
            "-n",
            str(self.np),
            *self.mpiflags,
            exename,
            *map(str, exeflags),
            "-m",
            "pydistributed.mpi",
            "--workers",
        ]

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        cwd = os.path.abspath(params.get("dir") or os.getcwd())
        env = worker_environment(params, cwd)
        env.pop("PYDIST_PARENT_PID", None)  # a rank's parent is mpiexec, not this process
        # the master's sys.path, the standard way (PYDIST_SYS_PATH is read by worker.py only),
        # after a PYTHONPATH given in ``env``
        path = json.loads(env.pop("PYDIST_SYS_PATH"))
        given = (params.get("env") or {}).get("PYTHONPATH")
        env["PYTHONPATH"] = os.pathsep.join([given, *path] if given else path)
        env["PYDIST_MPI_MASTER_HOST"] = socket.gethostname()
        exported = ["PYTHONPATH", "PYTHONUNBUFFERED", "PYDIST_MPI_MASTER_HOST"]
        exported += [k for k in env if k.endswith("_NUM_THREADS")]
        exported += [str(k) for k in (params.get("env") or {})]
        cmd = self._command(params, env, list(dict.fromkeys(exported)))
        # mpiexec dies with this process (SIGTERM, on which it ends its ranks), even when this
        # one is killed: the kernel's parent-death signal, set by a small exec trampoline and
        # tied to the spawner's thread, which lives as long as this process (local.py)
        proc = spawner().popen(
            [sys.executable, "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal is the master's to relay
        )
        job = MPIJob(proc, self.np)
        self.jobs.append(job)
        assert proc.stdin is not None
        try:
            # the cookie on mpiexec's stdin, which it hands to rank 0 (see the docstring)
            proc.stdin.write((params["cookie"] + "\n").encode("ascii"))
            proc.stdin.close()
        except OSError:
            pass  # it died at once; wait_addresses reports how
        try:
            addresses = job.wait_addresses(worker_timeout())
        except BaseException:
            job.close_readers()
            job.stop(grace=0.0)
            raise
        configs = []
        for rank, (host, port) in enumerate(addresses):
            info = RankInfo(rank, job)
            configs.append(
                WorkerConfig(
                    exename=str(params.get("exename") or sys.executable),
                    host=host,
                    port=port,
                    io=job.stdout[rank],
                    process=RankHandle(info, job.stderr[rank]),
                    environ=params.get("env"),
                    enable_threaded_blas=bool(params.get("enable_threaded_blas")),
                    userdata=info,
                )
            )
        _announce_in_order(configs, launched, launch_ntfy)
        # ranks never announced (one before them failed) have no worker: the job must end
        # when the announced ones leave
        for cfg in configs:
            if not cfg.userdata.joined.is_set():
                cfg.userdata.failed.set()
                if all(cfg is not c for c in launched):  # nobody relays its output
                    for f in (cfg.io, cfg.process.stderr):
                        f.close()
        if not any(c.userdata.joined.is_set() for c in configs):
            job.stop(grace=0.0)

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        info = config.userdata
        if not isinstance(info, RankInfo) or info.job is None:
            return
        if op == "register":
            info.job.joined(info.rank)
            info.joined.set()
        elif op == "deregister":
            info.job.left(info.rank)


def _is_open_mpi(path: str, env: dict[str, str]) -> bool:
    """Whether ``path`` is Open MPI's mpiexec (which takes ``-x NAME``)."""
    try:
        out = subprocess.run(
            [path, "--version"],
            capture_output=True,
            timeout=30,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return b"Open MPI" in out or b"OpenRTE" in out
