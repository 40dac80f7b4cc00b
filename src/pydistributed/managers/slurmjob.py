"""SlurmManager's side of Slurm: the ``srun`` command line, the job's state, its cancellation,
and the launch errors. No threads here; every command runs with a timeout.

Options map to ``srun`` flags one for one (``partition="debug"`` -> ``--partition=debug``, an
underscore becoming a dash); ``srun_flags`` are appended as given, after ours, so that they win.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LaunchError, LaunchTimeoutError

__all__ = [
    "FLAG_OPTIONS",
    "JobState",
    "SlurmLaunchError",
    "SlurmTimeoutError",
    "cancel",
    "job_state",
    "scontrol_state",
    "srun_command",
    "step_id",
]

# the options that become `--name=value` flags of srun
FLAG_OPTIONS = (
    "partition",
    "time",
    "nodes",
    "ntasks_per_node",
    "cpus_per_task",
    "mem_per_cpu",
    "mem",
    "account",
    "qos",
    "constraint",
    "reservation",
    "gres",
)
# how long one squeue/scancel/scontrol may take (a controller that does not answer)
COMMAND_TIMEOUT = 15.0


class SlurmLaunchError(LaunchError):
    """Slurm did not give ``SlurmManager`` its workers: the submission was refused (an unknown
    partition, a bad time), the controller did not answer, the job ended (cancelled, killed
    by the scheduler) or waited longer than the timeout. Nothing it submitted is left: the
    job was cancelled (``scancel``) and ``srun`` ended.

    ``job_id`` (``None`` when none was given), ``state`` and ``reason`` are the job's as
    ``squeue`` last showed them; ``output`` holds the end of ``srun``'s standard error.
    """

    def __init__(
        self,
        message: str,
        output: str = "",
        ospid: int | None = None,
        job_id: str | None = None,
        state: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, output, ospid)
        self.job_id = job_id
        self.state = state
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.args[0], self.output, self.ospid, self.job_id, self.state, self.reason)
        return (type(self), args)


class SlurmTimeoutError(SlurmLaunchError, LaunchTimeoutError):
    """The workers did not all join within ``SlurmManager``'s ``timeout`` (the job was still
    pending, or its tasks did not report); the job was cancelled."""


def _flag(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"SlurmManager option {name}= takes a str or an int, not {value!r}")
    text = str(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError(f"SlurmManager option {name}={value!r}: empty or with blanks")
    return f"--{name.replace('_', '-')}={text}"


def srun_command(
    n: int,
    options: dict[str, Any],
    name: str,
    worker: Sequence[str],
    overcommit: bool,
    srun_flags: Sequence[str],
    srun: str = "srun",
) -> list[str]:
    """``srun`` running ``worker`` as ``n`` tasks named ``name``: every task reads the cookie
    from srun's standard input (``--input=all``) and prefixes its output lines with its task
    number (``--label``)."""
    cmd = [srun, f"--ntasks={n}", f"--job-name={name}", "--input=all", "--label"]
    # one task that ends does not end the others: rmprocs removes workers one by one
    cmd.append("--kill-on-bad-exit=0")
    for key in FLAG_OPTIONS:
        if options.get(key) is not None:
            cmd.append(_flag(key, options[key]))
    if overcommit:
        cmd.append("--overcommit")
    cmd += [str(f) for f in srun_flags]
    return [*cmd, *worker]


@dataclass
class JobState:
    """A job (or step) as ``squeue`` shows it; ``error``: why squeue could not say."""

    job_id: str | None = None
    state: str | None = None
    reason: str | None = None
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"squeue: {self.error}"
        if self.job_id is None:
            return "no job in the queue yet"
        text = f"job {self.job_id} {self.state or 'UNKNOWN'}"
        if self.reason and self.reason not in ("None", "(null)"):
            text += f": {self.reason}"
        return text


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def job_state(name: str, in_job: str | None, env: dict[str, str] | None = None) -> JobState:
    """The state of our job named ``name`` (``in_job``: the id of the allocation our step runs
    in; then the allocation's state, which is what a pending step waits for)."""
    if in_job is not None:
        argv = ["squeue", "-h", "-j", in_job, "-o", "%i|%T|%r"]
    else:
        argv = ["squeue", "-h", f"--name={name}", "-u", str(os.getuid()), "-o", "%i|%T|%r"]
    try:
        r = _run(argv, env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return JobState(error=f"{type(e).__name__}: {e}")
    if r.returncode != 0:
        return JobState(error=_last_line(r.stderr))
    rows = [line.split("|") for line in r.stdout.splitlines() if line.count("|") == 2]
    if not rows:
        return JobState()
    job, state, reason = rows[0]
    return JobState(job, state, reason)


def scontrol_state(job: str, env: dict[str, str] | None = None) -> JobState:
    """A job's state from ``scontrol show job`` (which still knows a job that has ended, for
    the controller's ``MinJobAge``)."""
    try:
        r = _run(["scontrol", "-o", "show", "job", job], env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return JobState(job, error=f"{type(e).__name__}: {e}")
    if r.returncode != 0:
        return JobState(job, error=_last_line(r.stderr))
    fields = dict(f.partition("=")[::2] for f in r.stdout.split())
    return JobState(job, fields.get("JobState"), fields.get("Reason"))


def step_id(job: str, name: str, env: dict[str, str] | None = None) -> str | None:
    """The id (``JOB.STEP``) of our step named ``name`` in allocation ``job``, if listed."""
    try:
        r = _run(["squeue", "-h", "-s", "-j", job, "-o", "%i|%j"], env)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in r.stdout.splitlines():
        sid, _, sname = line.partition("|")
        if sname.strip() == name:
            return sid.strip()
    return None


def cancel(target: str, env: dict[str, str] | None = None) -> str | None:
    """``scancel TARGET`` (a job or ``JOB.STEP``); the error, None when it went (or was gone)."""
    try:
        r = _run(["scancel", target], env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    if r.returncode != 0 and "Invalid job id" not in r.stderr and "already" not in r.stderr:
        return _last_line(r.stderr)
    return None
