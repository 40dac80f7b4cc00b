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

import atexit
import collections
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from ..timeouts import deadline, remaining, worker_timeout
from .base import ClusterManager, WorkerConfig
from .slurmjob import (
    FLAG_OPTIONS,
    JobState,
    SlurmLaunchError,
    SlurmTimeoutError,
    cancel,
    job_state,
    scontrol_state,
    srun_command,
    step_id,
)

__all__ = ["SlurmLaunchError", "SlurmManager", "SlurmTimeoutError"]

log = logging.getLogger("pydistributed.slurm")

_BLAS_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_LABELLED = re.compile(r"^\s*(\d+): ?(.*)$", re.S)
_QUEUED = re.compile(r"\bjob (\d+) queued\b")
_POLL = 2.0  # seconds between two looks at the queue
DEFAULT_TIMEOUT = 300.0  # a queue is slower than a process: at least 5 minutes
CONTROLLER_TIMEOUT = 60.0  # the most a controller may stay silent while we wait
_GRACE = 3.0  # how long srun may take to end once its last worker left, before scancel


def default_timeout() -> float:
    """The larger of 300 s and ``PYDIST_WORKER_TIMEOUT``."""
    return max(DEFAULT_TIMEOUT, worker_timeout())


class _Task:
    """Stands for one task's process in its ``WorkerConfig``: its stderr, to be relayed."""

    def __init__(self, stderr: IO[bytes]) -> None:
        self.stderr = stderr


class _Job:
    """One ``srun`` and what it printed: per-task pipes, banners, srun's own messages."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, n: int, env: dict[str, str]):
        self.proc, self.name, self.n, self.env = proc, name, n, env
        self.in_job = os.environ.get("SLURM_JOB_ID") or None  # the allocation we run in
        self.job_id: str | None = self.in_job
        self.cond = threading.Condition()
        self.banners: dict[int, str] = {}  # task -> its banner line
        self.outs: dict[int, tuple[IO[bytes], IO[bytes]]] = {}  # task -> (stdout w, stderr w)
        self.early: dict[int, list[str]] = collections.defaultdict(list)  # before the banner
        self.messages: collections.deque[str] = collections.deque(maxlen=40)  # srun's own
        self.pids: set[int] = set()  # its workers in the cluster
        self.all_pids: set[int] = set()  # every worker it gave
        self.joined = 0
        self.launched = False
        self.ended = False
        self.cancelled = False  # we cancelled it (or ended srun)
        self.readers = [
            threading.Thread(target=self._read, args=(proc.stdout, 1), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, 2), daemon=True),
        ]
        for t in self.readers:
            t.name = "pydist-slurm-read"
            t.start()

    # -- reading srun's output ------------------------------------------------------------

    def _read(self, stream: IO[bytes] | None, fd: int) -> None:
        assert stream is not None
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "replace")
            m = _LABELLED.match(text)
            if m is None:
                line = text.rstrip("\r\n")
                with self.cond:
                    self.messages.append(line)
                    q = _QUEUED.search(line)
                    if q and self.job_id is None:
                        self.job_id = q.group(1)
                    self.cond.notify_all()
                if line:
                    log.info("%s", line)
                continue
            task, body = int(m.group(1)), m.group(2)
            with self.cond:
                if body.startswith("slurmstepd"):  # Slurm's, not the worker's: not relayed
                    self.messages.append(body.rstrip("\r\n"))
                    continue
                pipes = self.outs.get(task)
                if pipes is None and fd == 1 and body.startswith("pydist_worker:"):
                    pipes = self._open(task, body)
                elif pipes is None:
                    self.early[task].append(body.rstrip("\r\n"))
                    continue
            try:
                pipes[fd - 1].write(body.encode("utf-8", "replace"))
                pipes[fd - 1].flush()
            except (OSError, ValueError):
                pass  # that worker's stream is closed: it has left
        stream.close()
        with self.cond:
            for pipes in self.outs.values():
                try:
                    pipes[fd - 1].close()
                except OSError:
                    pass
            self.cond.notify_all()
            unexpected = fd == 2 and self.launched and not self.cancelled
        if unexpected:  # not our doing: the scheduler's (time limit, preemption) or scancel's
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.returncode == 0 or self.cancelled:
                return  # every worker exited (rmprocs), or we cancelled meanwhile
            log.warning(
                "the Slurm job %s of workers %s ended (srun exited with code %s): %s",
                self.job_id or "(unknown)",
                sorted(self.all_pids),
                self.proc.returncode,
                self.srun_error() or "no message from srun",
            )

    def _open(self, task: int, banner: str) -> tuple[IO[bytes], IO[bytes]]:
        """Task ``task`` reported: a pipe for its stdout and one for its stderr (cond held)."""
        pipes: list[IO[bytes]] = []
        reads: list[IO[bytes]] = []
        for _ in range(2):
            r, w = os.pipe()
            reads.append(os.fdopen(r, "rb", buffering=0))
            pipes.append(os.fdopen(w, "wb", buffering=0))
        self.outs[task] = (pipes[0], pipes[1])
        self.banners[task] = banner
        self._reads = getattr(self, "_reads", {})
        self._reads[task] = reads
        self.cond.notify_all()
        return self.outs[task]

    def read_ends(self, task: int) -> list[IO[bytes]]:
        return list(self._reads[task])

    def output(self) -> str:
        """srun's messages, then what the tasks printed before they reported."""
        with self.cond:
            lines = list(self.messages)
            for task in sorted(self.early):
                lines += [f"task {task}: {line}" for line in self.early[task][-10:]]
        return "\n".join(lines[-40:])

    def srun_error(self) -> str | None:
        """What srun (or slurmstepd) said went wrong: its last lines that say so."""
        words = ("error", "cancel", "revoked", "time limit", "killed", "fail")
        with self.cond:
            lines = [m.strip() for m in self.messages if any(w in m.lower() for w in words)]
            if not lines:
                lines = [m.strip() for m in self.messages if m.strip()]
        return "; ".join(dict.fromkeys(lines[-3:])) if lines else None

    # -- ending ------------------------------------------------------------------------

    def target(self) -> str | None:
        """What ``scancel`` should end: our job, or inside an allocation our step only."""
        if self.in_job is None:
            return self.job_id
        return step_id(self.in_job, self.name, self.env)

    def end(self, grace: float = 0.0) -> None:
        """Give srun ``grace`` seconds to end by itself (its workers are leaving), then cancel
        the job (or step), end srun, close the pipes; at most ``grace`` + ~30 s."""
        with self.cond:
            if self.ended:
                return
            self.ended = True
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        if self.proc.poll() is None:
            self.cancelled = True
            target = self.target()
            if target is not None:
                cancel(target, self.env)
            elif self.in_job is None:  # not seen in the queue yet: cancel it by its name
                try:
                    subprocess.run(
                        ["scancel", f"--name={self.name}", "-u", str(os.getuid())],
                        capture_output=True,
                        timeout=15,
                        stdin=subprocess.DEVNULL,
                        env=self.env,
                    )
                except (OSError, subprocess.TimeoutExpired):
                    pass
            try:
                self.proc.wait(8)
            except subprocess.TimeoutExpired:
                self.proc.terminate()  # srun cancels what it holds
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        for t in self.readers:
            t.join(5)
        _live.discard(self)


_live: set[_Job] = set()


@atexit.register
def _end_all() -> None:
    """At the master's exit (after the cluster's own exit handler): cancel what is left."""
    for job in list(_live):
        job.end()


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
        self.jobs: list[_Job] = []  # every srun this manager started, live or not

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
            raise SlurmLaunchError(
                f"cannot run {self.srun!r} (is Slurm's client installed?): {e}"
            ) from None
        assert proc.stdin is not None
        try:
            proc.stdin.write((params["cookie"] + "\n").encode("ascii"))
            proc.stdin.close()  # every task reads its first line, then end of input
        except OSError:
            pass  # srun ended at once; its stderr says why
        job = _Job(proc, name, self.n, env)
        self.jobs.append(job)
        _live.add(job)
        try:
            self._wait(job, params, worker, launched, launch_ntfy)
        except BaseException:
            job.end()
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
        job: _Job,
        params: dict[str, Any],
        worker: list[str],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        """Announce each task as it reports; return when all did; raise when they cannot."""
        until = deadline(self.timeout)
        announced: set[int] = set()
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
                out, err = job.read_ends(task)
                config = WorkerConfig(
                    exename=worker[0],
                    exeflags=tuple(worker[1:-4]),
                    process=_Task(err),
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
            if job.proc.poll() is not None:
                self._failed(job, state, len(announced))
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

    def _failed(self, job: _Job, state: JobState, reported: int) -> None:
        """srun ended before every task reported: raise why."""
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
        if not isinstance(job, _Job):
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
