"""SSHManager: workers on other hosts, started with the system's OpenSSH client.

``addprocs(["alice@h1", ("h2", 2), ("h3", "auto")], exename="/opt/venv/bin/python")`` runs,
for each worker, ``ssh -T -a -x -o BatchMode=yes ... [user@]host REMOTE`` where ``REMOTE`` (see
``sshcommand``) changes to ``dir``, takes ``env`` and then the cookie from the session's standard
input, and ``exec``s ``EXENAME EXEFLAGS -m pydistributed.worker --bind-to BIND``. The worker's
banner comes back on the session's standard output, which the master reads as for a local
worker; its stderr comes back with ssh's own messages. Being the user's ``ssh``, it honours
``~/.ssh/config``, the agent, ``ProxyJump``; ``sshflags`` come first so that they win.

At most ``max_parallel`` logins to one host are in progress at once (a login ends when the
worker prints its first line, or the session ends). A session that ends before the worker
printed anything (host down, key refused, no Python, no pydistributed, a bad ``dir``) is a
*launch failure*: it is recorded with the host and the end of the session's stderr, the other
hosts' workers are admitted, and ``addprocs`` then raises one :class:`SSHLaunchError` naming
every failed host and the workers that did start (they stay in the cluster).

With ``tunnel=True`` (and ``topology="master_worker"``) a worker listens on its host's
loopback and :meth:`SSHManager.connect` reaches it through an ``ssh -L`` forward
(``sshtunnel``), closed when the worker is deregistered.

A remote worker has no local parent to die with: its watchdog (``serve.py``) kills it when the
master's connection drops. Removing it (``rmprocs``) asks it to exit over the wire, then ends
the local ssh client and the connection.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from .. import sockets
from ..heartbeat import TUNNEL_SILENCE
from ..timeouts import worker_timeout
from .base import ClusterManager, WorkerConfig
from .sshbootstrap import BOOT_CODE, archive
from .sshcommand import (
    Machine,
    normalize_machines,
    parse_machine,
    probe_command,
    remote_command,
    stdin_payload,
)
from .sshfailures import (
    Failed,
    Failure,
    SSHLaunchError,
    bytes_ready,
    failure_error,
    hint,
    read_available,
    tail,
    wait_readable,
)
from .sshtunnel import Tunnel

__all__ = ["SSHLaunchError", "SSHManager", "launch_error"]

_BLAS_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_PASSED_ON = ("PYDIST_WORKER_TIMEOUT", "PYDIST_TLS")  # from the master's environment, if set
_CPU_CODE = (
    "import os\ntry:\n print(len(os.sched_getaffinity(0)))\n"
    "except AttributeError:\n print(os.cpu_count() or 1)"
)


def _bind_host(bind: str) -> str:
    """``"host[:port]"`` / ``"[v6]:port"`` -> the host."""
    if bind.startswith("["):
        return bind[1 : bind.index("]")]
    return bind.rsplit(":", 1)[0] if bind.count(":") == 1 else bind


class SSHManager(ClusterManager):
    """Launches workers on remote hosts over ssh (``addprocs(machines, ...)``).

    ``machines``: specs ``"[user@]host[:port] [bind_addr[:port]]"``, ``(spec, count)`` or
    ``(spec, "auto")`` (one worker per CPU of that host).
    """

    extra_params = frozenset(
        {"tunnel", "multiplex", "sshflags", "max_parallel", "shell", "ssh", "bootstrap"}
    )
    output_carrier = "its ssh session"  # what the master logs when a worker's output is lost
    keyword_hints = {
        "restrict": "LocalManager's keyword, as in Julia; an SSH worker listens at its machine "
        "spec's bind_addr, or on its host's loopback with tunnel=True",
    }

    def __init__(self, machines: Sequence[Any]) -> None:
        if isinstance(machines, (str, bytes)):
            raise TypeError("machines is a list of specs, not a string")
        self.machines = normalize_machines(machines)
        self._failures: list[Failure] = []
        self._lock = threading.Lock()
        self._mux_lock = threading.Lock()  # held while a control master starts
        self._tunnels: dict[int, Tunnel] = {}  # tunnel=True: the forward of each worker
        # multiplex=True: a control master and its socket per destination
        self._masters: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        self._atexit = False

    def __repr__(self) -> str:
        return f"SSHManager(machines={[(m.spec, c) for m, c in self.machines]!r})"

    # -- launching -------------------------------------------------------------------------

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        if params.get("tunnel") and params.get("topology") != "master_worker":
            raise ValueError(
                "addprocs(machines, tunnel=True) needs topology='master_worker': a tunnelled "
                "worker listens on its host's loopback, where only the master reaches it "
                "(through its ssh forward); other workers could not"
            )
        shell = params.get("shell") or "posix"
        max_parallel = params.get("max_parallel") or 10
        if not isinstance(max_parallel, int) or max_parallel < 1:
            raise ValueError(f"max_parallel must be a positive int, not {max_parallel!r}")
        # check everything that can be checked here before any login
        remote_command(shell, ["x"], self._env(params), params.get("dir"))
        with self._lock:
            self._failures = []
        threads = [
            threading.Thread(
                target=self._launch_on,
                args=(machine, count, params, max_parallel, launched, launch_ntfy),
                name="pydist-ssh-launch",
                daemon=True,
            )
            for machine, count in self.machines
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def take_failures(self) -> list[Failure]:
        """The launch failures of the last ``launch`` (and forget them)."""
        with self._lock:
            failures, self._failures = self._failures, []
        return failures

    def _fail(self, machine: Machine, message: str, output: str = "") -> None:
        with self._lock:
            self._failures.append(Failure(machine, message, output))

    @staticmethod
    def _env(params: dict[str, Any]) -> list[tuple[str, str]]:
        env: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
        if not params.get("enable_threaded_blas"):
            env.update(dict.fromkeys(_BLAS_VARS, "1"))
        for var in _PASSED_ON:
            if var in os.environ:
                env[var] = os.environ[var]
        if params.get("tunnel"):  # it exits when the master's beats stop (heartbeat.py)
            env["PYDIST_MASTER_SILENCE"] = f"{TUNNEL_SILENCE:g}"
        env.update(params.get("env") or {})  # (names and values: str, checked by addprocs)
        return list(env.items())

    def _ssh_base(
        self, machine: Machine, params: dict[str, Any], forwarding: bool = False
    ) -> list[str]:
        """The ssh command up to the destination; ``forwarding``: for a tunnel's session (the
        others clear every forward, as Julia's do)."""
        flags = params.get("sshflags") or ()
        if isinstance(flags, str):
            flags = shlex.split(flags)
        timeout = max(1, int(min(worker_timeout(), 30)))
        cmd = [
            str(params.get("ssh") or "ssh"),
            *map(str, flags),  # first: ssh takes the first value given for an option
            "-T",
            "-a",
            "-x",
            *(() if forwarding else ("-o", "ClearAllForwardings=yes")),
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={timeout}",
        ]
        if machine.port is not None:
            cmd += ["-p", str(machine.port)]
        return cmd

    def _exename(self, params: dict[str, Any]) -> str:
        return str(params.get("exename") or sys.executable)

    def _launch_on(
        self,
        machine: Machine,
        count: int | str,
        params: dict[str, Any],
        max_parallel: int,
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        try:
            base = self._ssh_base(machine, params)
            if params.get("multiplex"):
                base = self._multiplexed(machine, base, params.get("shell") or "posix")
            if count == "auto":
                count = self._count_cpus(machine, base, params)
            if not count:
                return
            gate = threading.BoundedSemaphore(max_parallel)
            threads = []
            for _ in range(int(count)):
                gate.acquire()
                t = threading.Thread(
                    target=self._launch_one,
                    args=(machine, base, params, gate, launched, launch_ntfy),
                    name="pydist-ssh-login",
                    daemon=True,
                )
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        except Failed as e:
            self._fail(machine, e.message, e.output)
        except Exception as e:
            self._fail(machine, f"{type(e).__name__}: {e}")

    def _count_cpus(self, machine: Machine, base: list[str], params: dict[str, Any]) -> int:
        shell = params.get("shell") or "posix"
        exename = self._exename(params)
        cmd = [*base, machine.destination, probe_command(shell, exename, _CPU_CODE)]
        try:
            r = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=worker_timeout()
            )
        except subprocess.TimeoutExpired as e:
            raise Failed(
                f"counting its CPUs (count 'auto') took more than {worker_timeout():g} s "
                "(PYDIST_WORKER_TIMEOUT)",
                tail(e.stderr or b""),
            ) from None
        text = r.stdout.decode("utf-8", "replace").strip()
        if r.returncode != 0 or not text.isdigit():
            err = tail(r.stderr)
            raise Failed(
                f"counting its CPUs (count 'auto') failed: "
                f"{hint(r.returncode, err, exename, shell)}",
                err,
            )
        return max(1, int(text))

    def _launch_one(
        self,
        machine: Machine,
        base: list[str],
        params: dict[str, Any],
        gate: threading.BoundedSemaphore,
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        try:
            self._login(machine, base, params, launched, launch_ntfy)
        except Failed as e:
            self._fail(machine, e.message, e.output)
        except Exception as e:
            self._fail(machine, f"{type(e).__name__}: {e}")
        finally:
            gate.release()

    def _login(
        self,
        machine: Machine,
        base: list[str],
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        shell = params.get("shell") or "posix"
        exename = self._exename(params)
        exeflags = params.get("exeflags") or ()
        if isinstance(exeflags, str):
            exeflags = shlex.split(exeflags)
        bootstrap = bool(params.get("bootstrap"))
        # with bootstrap, the worker's code arrives on stdin (sshbootstrap.py)
        entry = ["-c", BOOT_CODE] if bootstrap else ["-m", "pydistributed.worker"]
        argv = [
            exename,
            *map(str, exeflags),
            *entry,
            "--bind-to",
            machine.bind or ("127.0.0.1" if params.get("tunnel") else "0.0.0.0"),
        ]
        env = self._env(params)
        remote = remote_command(shell, argv, env, params.get("dir"), default_dir=os.getcwd())
        cmd = [*base, machine.destination, remote]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal is the master's to relay
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            blob = archive() if bootstrap else None
            proc.stdin.write(stdin_payload(env, params["cookie"], shell, blob))
            proc.stdin.close()
        except OSError:
            pass  # the session ended at once; its stderr says why
        # the login is over when the worker prints its first line, or the session ends
        timeout = worker_timeout()
        fd = proc.stdout.fileno()
        ready = wait_readable(fd, timeout)
        if not ready or bytes_ready(fd) == 0:
            if not ready:
                proc.kill()
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=5)
            err = tail(read_available(proc.stderr, 2.0))
            proc.stdout.close()
            proc.stderr.close()
            if not ready:
                raise Failed(
                    f"no worker reported within {timeout:g} s (PYDIST_WORKER_TIMEOUT)", err
                )
            raise Failed(hint(code, err, exename, shell), err)
        config = WorkerConfig(
            exename=exename,
            exeflags=tuple(map(str, exeflags)),
            host=None,  # the banner gives it
            sshflags=tuple(base[1:]),
            max_parallel=params.get("max_parallel") or 10,
            process=proc,
            io=proc.stdout,
            environ=params.get("env"),
            enable_threaded_blas=bool(params.get("enable_threaded_blas")),
            bind_addr=_bind_host(machine.bind) if machine.bind else None,
            tunnel=bool(params.get("tunnel")),
            userdata={
                "machine": machine.spec,
                "ssh_pid": proc.pid,
                "tunnel_ssh": self._ssh_base(machine, params, forwarding=True),
            },
        )
        with launch_ntfy:
            launched.append(config)
            launch_ntfy.notify_all()

    # -- tunnels --------------------------------------------------------------------------

    def connect(self, pid: int, config: WorkerConfig) -> tuple[BinaryIO, Any]:
        """TCP to the worker's address, or with ``tunnel=True`` through an ``ssh -L`` forward
        to the loopback of its host (kept until the worker leaves)."""
        if not config.tunnel:
            return super().connect(pid, config)
        data = config.userdata if isinstance(config.userdata, dict) else {}
        machine = parse_machine(str(data.get("machine", "")))
        if config.host is None or config.port is None:
            raise ValueError(f"worker {pid}: no address to tunnel to")
        tunnel = Tunnel(list(data["tunnel_ssh"]), machine.destination, config.host, config.port)
        sock = tunnel.open(worker_timeout())
        with self._lock:
            self._tunnels[pid] = tunnel
        return sockets.socket_streams(sock)

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        if op in ("deregister", "finalize"):
            with self._lock:
                tunnel = self._tunnels.pop(pid, None)
            if tunnel is not None:
                tunnel.close()

    def tunnel_of(self, pid: int) -> Tunnel | None:
        """The forward to worker ``pid`` (``tunnel=True``), while it is in the cluster."""
        with self._lock:
            return self._tunnels.get(pid)

    # -- multiplexing ----------------------------------------------------------------------

    def _multiplexed(self, machine: Machine, base: list[str], shell: str) -> list[str]:
        """``base`` for sessions that share one ssh connection to the host: a control master
        started here once per destination and port, kept until :meth:`close` (at the latest
        when this process exits, however it exits: see :func:`_control_master`)."""
        key = f"{machine.destination}:{machine.port}"
        with self._mux_lock:
            if not self._atexit:
                self._atexit = True
                atexit.register(self.close)
            known = self._masters.get(key)
            if known is not None and known[0].poll() is None:
                return [*base, "-o", f"ControlPath={known[1]}", "-o", "ControlMaster=no"]
            path = os.path.join(tempfile.mkdtemp(prefix="pydist-ssh-"), "m")
            ctl = ["-o", f"ControlPath={path}"]
            master = _control_master(base, path, machine.destination, shell)
            self._masters[key] = (master, path)
            deadline = time.monotonic() + worker_timeout()
            while not os.path.exists(path):
                if master.poll() is not None or time.monotonic() > deadline:
                    err = tail(read_available(master.stderr, 1.0))
                    _end_control_master(master, path)
                    del self._masters[key]
                    why = hint(master.returncode, err, "ssh")
                    raise Failed(f"the ssh control master (multiplex=True): {why}", err)
                time.sleep(0.02)
        return [*base, *ctl, "-o", "ControlMaster=no"]

    def close(self) -> None:
        """End the ssh control masters (``multiplex=True``); their sessions end with them."""
        with self._mux_lock:
            masters, self._masters = list(self._masters.values()), {}
        for master, path in masters:
            _end_control_master(master, path)


# The control master's process: a shell that runs it and then removes its socket's directory.
# Its session runs ``cat > /dev/null`` on the host, reading this process's pipe: when this
# process dies, however it dies, the kernel closes the pipe, the session ends, and ssh exits
# once the workers' sessions over it have ended (the workers exit when their master's
# connection drops); the shell then removes the directory. So no control master outlives the
# master, as no tunnel does (sshtunnel.py). With shell="wincmd" (no ``cat``) it runs ``-N``,
# and is only ended by close() (atexit).
_CONTROL_SHELL = '"$@"; rm -rf -- "$0"'


def _control_master(
    base: list[str], path: str, destination: str, shell: str
) -> subprocess.Popen[bytes]:
    if shell == "wincmd":
        session = ["-N", destination]
    else:
        session = [destination, "cat > /dev/null"]
    cmd = [*base, "-o", f"ControlPath={path}", "-o", "ControlMaster=yes", *session]
    return subprocess.Popen(
        ["/bin/sh", "-c", _CONTROL_SHELL, os.path.dirname(path), *cmd],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the shell and ssh end together
    )


def _end_control_master(master: subprocess.Popen[bytes], path: str) -> None:
    for f in (master.stdin, master.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
    # the shell's group (ssh is in it); while the shell is not reaped its pid is not reused
    if master.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(master.pid, signal.SIGTERM)
        try:
            master.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(master.pid, signal.SIGKILL)
            master.wait(5)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def launch_error(manager: SSHManager, started: list[int]) -> SSHLaunchError | None:
    """The one error for the hosts where ``manager``'s last launch failed (None: none did)."""
    return failure_error(manager.take_failures(), started)
