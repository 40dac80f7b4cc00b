"""A real one-node Slurm (munged + slurmctld + slurmd) in a temporary directory, on free ports.

``SlurmCluster.start()`` writes a munge key and a ``slurm.conf`` (recipe and traps:
ENVIRONMENTS.md "Slurm, one node"), starts the three daemons in the foreground as children of
this process, and waits until the node is idle. :meth:`SlurmCluster.stop` cancels every job,
then stops the daemons by PID and removes the directory. Used by ``tests/slurm/conftest.py``
and by ``bench/bench_slurm.py``; every client command needs ``SLURM_CONF`` (``.env``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
CLIENTS = ("srun", "squeue", "scancel", "sbatch", "salloc", "sinfo", "scontrol")
CPUS = 2  # what the node declares (this machine's count; srun --overcommit goes beyond)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def which(name: str) -> str | None:
    """``name`` on PATH, or in the sbin directories (where Debian puts the daemons)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=path)


def why_no_slurm() -> str | None:
    """Why the daemons cannot start here (None: they can be tried)."""
    missing = [d for d in DAEMONS + CLIENTS if which(d) is None]
    if missing:
        return (
            f"no {', '.join(missing)} on PATH "
            "(apt-get install slurmctld slurmd slurm-client munge; .ci/run does)"
        )
    return None


class SlurmCluster:
    """A one-node Slurm of its own; ``env`` holds ``SLURM_CONF`` for client commands."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pydist-slurm-"))
        self.dir.chmod(0o755)  # munged wants o+x on every directory of its socket's path
        self.host = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for var in [v for v in self.env if v.startswith(("SLURM_", "SBATCH_", "SALLOC_"))]:
            if var != "SLURM_CONF":
                del self.env[var]  # not inside an allocation of another cluster

    # -- starting ----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / f"{name}.out", "ab")
        with log:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )

    def start(self, timeout: float = 60.0) -> None:
        d = self.dir
        m = d / "munge"
        m.mkdir(mode=0o755)
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        subprocess.run(
            [str(which("mungekey")), "-c", "-k", str(m / "munge.key")],
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._spawn(
            "munged",
            [
                str(which("munged")),
                "-F",
                f"--socket={m}/munge.socket.2",
                f"--key-file={m}/munge.key",
                f"--pid-file={m}/munged.pid",
                f"--log-file={m}/munged.log",
                f"--seed-file={m}/munged.seed",
            ],
        )
        self._wait_for(lambda: (m / "munge.socket.2").exists(), "munged's socket", 20)
        self.ctl_port, self.d_port = free_port(), free_port()
        self.write_conf()
        self._spawn("slurmctld", [str(which("slurmctld")), "-D", "-f", str(self.conf)])
        self._spawn("slurmd", [str(which("slurmd")), "-D", "-f", str(self.conf)])
        self._wait_for(self.idle, "the node to become idle", timeout)

    def write_conf(self, extra: str = "") -> None:
        d = self.dir
        self.conf.write_text(
            f"""ClusterName=pd
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ctl_port}
SlurmdPort={self.d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket.2
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
MinJobAge=2
KillWait=2
MessageTimeout=5
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
{extra}"""
        )

    def _wait_for(self, ok: object, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}")
            if ok():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")

    # -- client commands -----------------------------------------------------------------------

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def idle(self) -> bool:
        try:
            r = self.run("sinfo", "-h", "-o", "%T", timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def jobs(self) -> list[str]:
        """``JOBID STATE`` of every job the controller still lists (pending or running)."""
        r = self.run("squeue", "-h", "-o", "%i %T", timeout=20)
        if r.returncode != 0:
            raise RuntimeError(f"squeue failed: {r.stderr.strip()}")
        return [line for line in r.stdout.splitlines() if line.strip()]

    def wait_no_jobs(self, timeout: float = 20) -> list[str]:
        """Wait until ``squeue`` lists no job; what it still lists then."""
        deadline = time.monotonic() + timeout
        jobs = self.jobs()
        while jobs and time.monotonic() < deadline:
            time.sleep(0.2)
            jobs = self.jobs()
        return jobs

    def pause_controller(self) -> None:
        """Stop slurmctld (SIGSTOP): the controller does not answer, as one that is down."""
        self.procs["slurmctld"].send_signal(signal.SIGSTOP)

    def resume_controller(self) -> None:
        self.procs["slurmctld"].send_signal(signal.SIGCONT)

    # -- stopping ------------------------------------------------------------------------------

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.resume_controller()
        with contextlib.suppress(Exception):
            self.run("scancel", "--user", str(os.getuid()), timeout=10)
            self.wait_no_jobs(10)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, name: str = "slurmctld", lines: int = 30) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
