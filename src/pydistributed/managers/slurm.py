"""SlurmManager: workers as the tasks of one ``srun``.

``addprocs(SlurmManager(8, partition="debug", time="00:30:00"))`` runs one ``srun`` of 8 tasks,
each ``python -m pydistributed.worker --bind-to 0.0.0.0``. Outside an allocation ``srun``
submits a job of its own and waits in the queue for it; inside one (``SLURM_JOB_ID`` set: an
``sbatch`` script, an ``salloc`` shell) it runs a step of that allocation. The cookie goes to
``srun``'s standard input, which ``--input=all`` copies to every task (never a command line or
the environment); ``--label`` prefixes each task's lines with its number, so that the one
output of ``srun`` is split here into one stream per worker: its banner
``pydist_worker:PORT#HOST`` (the address of its node, which the master and the other workers
dial), then what it prints, relayed as ``From worker N:``.

While the job waits, ``addprocs`` polls ``squeue`` and reports each change of
"K of N workers joined, job J PENDING: Resources" (on standard error with ``progress=True``,
the default, and always on the ``pydistributed.slurm`` logger at INFO). After ``timeout``
seconds, or when ``srun`` fails (a refused submission, a controller that does not answer, a
job cancelled or killed), it cancels what it submitted (``scancel``), ends ``srun``, and
raises one :class:`SlurmLaunchError` naming the cause.

The job ends with its workers: when the last of them leaves (``rmprocs``, the master's exit,
or the workers dying), the job (or, inside an allocation, the step) is cancelled and ``srun``
reaped; a master that exits cancels whatever is left.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..timeouts import deadline, remaining, worker_timeout
from .base import ClusterManager, WorkerConfig
from .slurmjob import (
    FLAG_OPTIONS,
    JobState,
    SlurmLaunchError,
    SlurmTimeoutError,
    job_state,
    scontrol_state,
    srun_command,
)
from .slurmsrun import SrunJob, TaskStreams, live

__all__ = ["SlurmLaunchError", "SlurmManager", "SlurmTimeoutError"]

log = logging.getLogger("pydistributed.slurm")

_BLAS_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_POLL = 2.0  # seconds between two looks at the queue
DEFAULT_TIMEOUT = 300.0  # a queue is slower than a process: at least 5 minutes
CONTROLLER_TIMEOUT = 60.0  # the most a controller may stay silent while we wait
_GRACE = 3.0  # how long srun may take to end once its last worker left, before scancel


def default_timeout() -> float:
    """The larger of 300 s and ``PYDIST_WORKER_TIMEOUT``."""
    return max(DEFAULT_TIMEOUT, worker_timeout())


class SlurmManager(ClusterManager):
    """Launches ``n`` workers as the tasks of one ``srun`` (outside an allocation, a job of
    their own; inside one, a step of it).

    Options: ``partition``, ``time``, ``nodes``, ``ntasks_per_node``, ``cpus_per_task``,
    ``mem_per_cpu``, ``mem``, ``account``, ``qos``, ``constraint``, ``reservation``, ``gres``
    (each ``--name=value``); ``overcommit`` (``--overcommit``); ``srun_flags`` (more flags, as
    a list); ``timeout`` (seconds until a job that has not given every worker is cancelled;
    default the larger of 300 and ``PYDIST_WORKER_TIMEOUT``; ``None``: wait for ever);
    ``bind_to`` (the workers' listening address, default ``0.0.0.0``: they report their node's
    address); ``progress`` (``True``: print each change of the job's state on standard
    error; or a callable taking the text); ``srun`` (the command, default ``"srun"``).
    ``addprocs``'s ``exename``, ``exeflags``, ``env``, ``dir`` and ``enable_threaded_blas``
    apply as for local workers.
    """

    def __init__(
        self,
        n: int,
        *,
        overcommit: bool = False,
        srun_flags: Sequence[str] = (),
        timeout: float | None = -1.0,
        bind_to: str = "0.0.0.0",
        progress: bool | Callable[[str], object] = True,
        srun: str = "srun",
        **options: Any,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"the number of workers is a positive int, not {n!r}")
        unknown = sorted(set(options) - set(FLAG_OPTIONS))
        if unknown:
            raise TypeError(
                f"SlurmManager got unknown options {', '.join(unknown)}: it takes "
                f"{', '.join(FLAG_OPTIONS)}, overcommit, srun_flags, timeout, bind_to, "
                "progress, srun (other srun flags go in srun_flags=[...])"
            )
        if isinstance(srun_flags, (str, bytes)):
            raise TypeError("srun_flags is a list of flags, not a string")
        self.n = n
        self.options = {k: v for k, v in options.items() if v is not None}
        srun_command(n, self.options, "x", [], overcommit, srun_flags)  # refuse bad values now
        self.overcommit = bool(overcommit)
        self.srun_flags = [str(f) for f in srun_flags]
        self.timeout = default_timeout() if timeout is not None and timeout < 0 else timeout
        self.bind_to = bind_to
        self.progress = progress
        self.srun = srun
        self.jobs: list[SrunJob] = []  # every srun this manager started, live or not

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"SlurmManager({self.n}{opts})"

    # -- launching -------------------------------------------------------------------------

    def _environment(self, params: dict[str, Any], cwd: str) -> dict[str, str]:
        """srun's environment, which it gives the tasks: ours, the master's sys.path (a
        shared file system), unbuffered output; never the cookie."""
        import json

        env = dict(os.environ)
        env.pop("PYDIST_COOKIE", None)
        if not params.get("enable_threaded_blas"):
            env.update(dict.fromkeys(_BLAS_VARS, "1"))
        path = [os.path.abspath(p) if p else cwd for p in sys.path]
        env["PYDIST_SYS_PATH"] = json.dumps(path)
        env["PYTHONUNBUFFERED"] = "1"
        given = params.get("env") or {}
        for key, value in given.items() if isinstance(given, dict) else given:
            env[str(key)] = str(value)
        return env

    def _worker(self, params: dict[str, Any]) -> list[str]:
        exename = str(params.get("exename") or sys.executable)
        flags = params.get("exeflags") or ()
        if isinstance(flags, str):
            flags = flags.split()
        return [exename, *map(str, flags), "-m", "pydistributed.worker", "--bind-to", self.bind_to]

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        cwd = os.path.abspath(params.get("dir") or os.getcwd())
        env = self._environment(params, cwd)
        name = f"pydist-{secrets.token_hex(4)}"
        worker = self._worker(params)
        cmd = srun_command(
            self.n, self.options, name, worker, self.overcommit, self.srun_flags, self.srun
        )
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal is the master's to relay
            )
        except OSError as e:
            if not os.path.isdir(cwd):  # Popen's error names the directory as if a program
                raise SlurmLaunchError(
                    f"dir={params.get('dir') or cwd!r}: no such directory here (srun starts in it, "
                    f"and its tasks run in it): {e.strerror}"
                ) from None
            raise SlurmLaunchError(
                f"cannot run {self.srun!r} (is Slurm's client installed?): {e}"
            ) from None
        assert proc.stdin is not None
        try:
            proc.stdin.write((params["cookie"] + "\n").encode("ascii"))
            proc.stdin.close()  # every task reads its first line, then end of input
        except OSError:
            pass  # srun ended at once; its stderr says why
        job = SrunJob(proc, name, self.n, env)
        self.jobs.append(job)
        live.add(job)
        announced: set[int] = set()
        try:
            self._wait(job, params, worker, launched, launch_ntfy, announced)
        except BaseException:
            job.end()
            job.close_reads(set(job.reads) - announced)
            raise
        if job.job_id is None:  # started before the first look at the queue
            job.job_id = job_state(name, None, env).job_id
        with job.cond:
            job.launched = True
            left = not job.pids and job.joined >= self.n  # every worker left already
        if left:
            threading.Thread(
                target=job.end, args=(_GRACE,), name="pydist-slurm-end", daemon=True
            ).start()

    def _say(self, text: str) -> None:
        log.info("%s", text)
        if callable(self.progress):
            self.progress(text)
        elif self.progress:
            print(f"pydist: SlurmManager: {text}", file=sys.stderr, flush=True)

    def _wait(
        self,
        job: SrunJob,
        params: dict[str, Any],
        worker: list[str],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
        announced: set[int],
    ) -> None:
        """Announce each task as it reports (adding it to ``announced``); return when all did;
        raise when they cannot."""
        until = deadline(self.timeout)
        next_look = time.monotonic() + 1.0  # a job that starts at once is not reported
        status, silent_since = "", None
        state = JobState(job_id=job.job_id)
        while True:
            with job.cond:
                new = sorted(t for t in job.banners if t not in announced)
                if not new:
                    job.cond.wait(0.2)
                    new = sorted(t for t in job.banners if t not in announced)
            for task in new:
                announced.add(task)
                out, err = job.reads[task]
                config = WorkerConfig(
                    exename=worker[0],
                    exeflags=tuple(worker[1:-4]),
                    process=TaskStreams(err),
                    io=out,
                    environ=params.get("env"),
                    enable_threaded_blas=bool(params.get("enable_threaded_blas")),
                    userdata={"slurm_job": job, "task": task},
                )
                with launch_ntfy:
                    launched.append(config)
                    launch_ntfy.notify_all()
            if len(announced) == self.n:
                return
            with job.cond:
                dead = sorted(set(job.ended_tasks) - set(job.banners))
            if job.proc.poll() is not None or dead:
                self._failed(job, state, len(announced), dead)
            now = time.monotonic()
            if now >= next_look:
                next_look = now + _POLL
                state = job_state(job.name, job.in_job, job.env)
                if state.job_id is not None and job.in_job is None:
                    job.job_id = state.job_id
                elif state.job_id is None and job.job_id is not None:
                    state.job_id = job.job_id
                if state.error:
                    silent_since = silent_since or now
                    if now - silent_since > min(CONTROLLER_TIMEOUT, self.timeout or 1e9):
                        raise SlurmLaunchError(
                            f"the Slurm controller does not answer: {state.error}"
                            f" (for {now - silent_since:.0f} s); srun was ended",
                            job.output(),
                            job.proc.pid,
                            job.job_id,
                        )
                else:
                    silent_since = None
                with job.cond:
                    joined = job.joined
                text = f"{joined} of {self.n} workers joined, {state.describe()}"
                if text != status:
                    status = text
                    self._say(text)
            left = remaining(until)
            if left is not None and left <= 0:
                raise SlurmTimeoutError(
                    f"{len(announced)} of {self.n} workers reported within {self.timeout:g} s "
                    f"(SlurmManager timeout); {state.describe()}; job cancelled",
                    job.output(),
                    job.proc.pid,
                    state.job_id,
                    state.state,
                    state.reason,
                )

    def _failed(self, job: SrunJob, state: JobState, reported: int, dead: list[int]) -> None:
        """srun ended, or tasks ``dead`` ended, before every task reported: raise why."""
        if dead:
            try:
                job.proc.wait(2)  # when every task ended, srun ends too: say it that way
            except subprocess.TimeoutExpired:
                pass
        if dead and job.proc.returncode is None:
            if job.job_id is None:
                job.job_id = job_state(job.name, None, job.env).job_id
            with job.cond:
                how = job.ended_tasks[dead[0]]
                said = job.early.get(dead[0], [])[-5:]
            tasks = ", ".join(map(str, dead))
            which = f"job {job.job_id}" if job.job_id else "the job"
            raise SlurmLaunchError(
                f"task{'s' if len(dead) > 1 else ''} {tasks} of {which} ended before reporting "
                f"({how}); {reported} of {self.n} workers reported"
                + (f"; task {dead[0]} printed: {' | '.join(said)}" if said else "")
                + f"; {job.srun_error() or ''}".rstrip("; "),
                job.output(),
                job.proc.pid,
                job.job_id,
            )
        for t in job.readers:
            t.join(5)
        code = job.proc.returncode
        why = job.srun_error() or "no message"
        if job.job_id is not None and job.in_job is None:
            final = scontrol_state(job.job_id, job.env)
            if final.state is not None:
                state = final
        where = state.describe() if state.state else (f"job {job.job_id}" if job.job_id else "")
        done = f"after {reported} of {self.n} workers" if reported else "before any worker"
        raise SlurmLaunchError(
            f"srun exited with code {code} {done} reported{f' ({where})' if where else ''}: {why}",
            job.output(),
            job.proc.pid,
            job.job_id,
            state.state,
            state.reason or why,
        )

    # -- life events -----------------------------------------------------------------------

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        data = config.userdata if isinstance(config.userdata, dict) else {}
        job = data.get("slurm_job")
        if not isinstance(job, SrunJob):
            return
        if op == "register":
            with job.cond:
                job.pids.add(pid)
                job.all_pids.add(pid)
                job.joined += 1
        elif op == "deregister":
            with job.cond:
                job.pids.discard(pid)
                last = not job.pids and job.launched
            if last:  # the job ends with its last worker (not on this reading thread)
                threading.Thread(
                    target=job.end, args=(_GRACE,), name="pydist-slurm-end", daemon=True
                ).start()
