"""One ``srun`` of SlurmManager's and what it prints, split per task; its end.

``--label`` prefixes every line of a task with its number: :class:`SrunJob` reads srun's
standard output and error on two threads and gives each task that printed its banner
``pydist_worker:PORT#HOST`` a pipe for its stdout and one for its stderr (what the cluster
relays as ``From worker N:``); lines before the banner are kept for the error messages, and
so are Slurm's own (``srun:``, ``slurmstepd:``). :meth:`SrunJob.end` cancels the job (inside
an allocation, only the step) and reaps srun; at this process's exit every job still live is
ended.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import re
import subprocess
import threading
from typing import IO

from .slurmjob import cancel, step_id

__all__ = ["SrunJob", "TaskStreams", "live"]

log = logging.getLogger("pydistributed.slurm")

_LABELLED = re.compile(r"^\s*(\d+): ?(.*)$", re.S)
_QUEUED = re.compile(r"\bjob (\d+) queued\b")
# srun: error: NODE: tasks 0-1,3: Exited with exit code 2 (or "task 1: Killed", ...)
_TASKS_ENDED = re.compile(r"^srun: error: \S+: tasks? ([\d,\-]+): (.+)$")


def _task_numbers(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            out += range(int(lo), int(hi or lo) + 1)
    return out


class TaskStreams:
    """Stands for one task's process in its ``WorkerConfig``: its stderr, to be relayed."""

    def __init__(self, stderr: IO[bytes]) -> None:
        self.stderr = stderr


class SrunJob:
    """One ``srun`` and what it printed: per-task pipes, banners, srun's own messages."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str, n: int, env: dict[str, str]):
        self.proc, self.name, self.n, self.env = proc, name, n, env
        self.in_job = os.environ.get("SLURM_JOB_ID") or None  # the allocation we run in
        self.job_id: str | None = self.in_job
        self.cond = threading.Condition()
        self.banners: dict[int, str] = {}  # task -> its banner line
        self.outs: dict[int, tuple[IO[bytes], IO[bytes]]] = {}  # task -> (stdout w, stderr w)
        self.reads: dict[int, tuple[IO[bytes], IO[bytes]]] = {}  # task -> their read ends
        self.ended_tasks: dict[int, str] = {}  # task -> how it ended, as srun said
        self.early: dict[int, list[str]] = collections.defaultdict(list)  # before the banner
        self.messages: collections.deque[str] = collections.deque(maxlen=40)  # srun's own
        self.pids: set[int] = set()  # its workers in the cluster
        self.all_pids: set[int] = set()  # every worker it gave
        self.joined = 0
        self.launched = False
        self.ended = False
        self.cancelled = False  # we cancelled it (or ended srun)
        self.done = threading.Event()  # end() has finished
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
                    ended = _TASKS_ENDED.match(line)
                    if ended:
                        for task in _task_numbers(ended.group(1)):
                            self.ended_tasks.setdefault(task, ended.group(2).strip())
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
        if fd == 2 and not unexpected:
            try:
                self.proc.wait(10)  # reap it (srun closes its output as it exits)
            except subprocess.TimeoutExpired:
                pass
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
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.reads[task] = (os.fdopen(out_r, "rb", 0), os.fdopen(err_r, "rb", 0))
        self.outs[task] = (os.fdopen(out_w, "wb", 0), os.fdopen(err_w, "wb", 0))
        self.banners[task] = banner
        self.cond.notify_all()
        return self.outs[task]

    def close_reads(self, tasks: set[int]) -> None:
        """Close the read ends of ``tasks`` (reported, never handed to the cluster)."""
        with self.cond:
            ends = [self.reads[t] for t in tasks if t in self.reads]
        for pair in ends:
            for f in pair:
                f.close()

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
            first = not self.ended
            self.ended = True
        if not first:  # another thread is ending it: wait for that (the exit handler does)
            self.done.wait(30)
            return
        try:
            self._end(grace)
        finally:
            self.done.set()

    def _end(self, grace: float) -> None:
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
        live.discard(self)


live: set[SrunJob] = set()  # the jobs not ended yet


@atexit.register
def _end_all() -> None:
    """At the master's exit (after the cluster's own exit handler): cancel what is left."""
    for job in list(live):
        job.end()
