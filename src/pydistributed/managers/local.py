"""LocalManager: workers on this host, forked by the forkserver (``forkspawn.py``), or started
as new interpreters (``PYDIST_SPAWN=exec``, ``exename``, ``exeflags``). The master never forks.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .base import ClusterManager

if TYPE_CHECKING:  # imported where used: a worker imports this module, and needs none
    import subprocess

    from .forkspawn import ForkServerClient
    from .workerconfig import WorkerConfig

__all__ = ["LocalManager", "worker_command", "worker_environment"]

_BLAS_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


class _Spawner:
    """Starts local workers from one thread that lives as long as this process.

    A local worker asks the kernel (``PR_SET_PDEATHSIG``) to kill it when its parent dies,
    so that a worker stuck in a C call that holds the GIL (where no Python thread of its own
    can notice the lost connection) still dies with the master. The kernel ties that signal
    to the *thread* that forked the child, so the fork must come from a thread that never
    ends before the process does: this one.
    """

    def __init__(self) -> None:
        import queue

        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="pydist-spawner", daemon=True).start()

    def _loop(self) -> None:
        while True:
            args, kwargs, done, out = self._q.get()
            try:
                import subprocess

                out.append(subprocess.Popen(*args, **kwargs))
            except BaseException as e:
                out.append(e)
            done.set()

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        done = threading.Event()
        out: list[Any] = []
        self._q.put((args, kwargs, done, out))
        done.wait()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]  # type: ignore[no-any-return]


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def spawner() -> _Spawner:
    """This process's spawner (one per process: the thread must outlive every worker)."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
        return _spawner


_forkserver: ForkServerClient | None = None
_forkserver_lock = threading.Lock()


# what the interpreter or the dynamic loader read as a process starts: a worker whose
# environment differs from the forkserver's in one of these needs an interpreter of its own
# (the locale: an interpreter chooses its UTF-8 mode and file system encoding from it at start)
_STARTUP_PREFIXES = ("PYTHON", "LD_", "MALLOC_", "GLIBC_TUNABLES", "LC_ALL", "LC_CTYPE", "LANG")


def startup_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_STARTUP_PREFIXES)}


def _forkserver_environment() -> dict[str, str]:
    return worker_environment({"enable_threaded_blas": True}, os.getcwd())


def prestart(params: dict[str, Any], meanwhile: Callable[[], object]) -> None:
    """Start the forkserver now for a launch of local workers with ``params`` (``addprocs``'
    keywords), if they will be forked and it is not running: ``meanwhile`` (the master's
    import of the runtime) then runs while it starts, on the other processor, instead of
    before. The launch finds it running (or starts it, as it would have)."""
    if params.get("env") or not forked(params):
        meanwhile()
        return
    forkserver(worker_environment({}, os.getcwd()), meanwhile)


def forkserver(
    env: dict[str, str], meanwhile: Callable[[], object] | None = None
) -> ForkServerClient | None:
    """This master's forkserver (started on first use, and again if it has ended), if a worker
    with environment ``env`` can be forked from it; None if it needs a fresh interpreter.
    ``meanwhile`` runs while a new one starts (or at once, if none is started)."""
    global _forkserver
    wanted = startup_environment(env)
    with _forkserver_lock:
        if _forkserver is None or not _forkserver.alive:
            server_env = _forkserver_environment()
            if startup_environment(server_env) == wanted:
                from .forkspawn import ForkServerClient

                _forkserver = ForkServerClient(spawner().popen, server_env, meanwhile)
                return _forkserver
        server = _forkserver if _forkserver is not None and _forkserver.alive else None
    if meanwhile is not None:
        meanwhile()
    if server is None or startup_environment(server.env) != wanted:
        return None
    return server


def forked(params: dict[str, Any]) -> bool:
    """Whether this launch's workers come from the forkserver: not with ``PYDIST_SPAWN=exec``,
    nor with an ``exename`` or ``exeflags`` (they need an interpreter started for the worker)."""
    from .forkspawn import spawn_mode

    if spawn_mode() != "forkserver":
        return False
    exename = params.get("exename")
    return (not exename or str(exename) == sys.executable) and not params.get("exeflags")


def worker_environment(params: dict[str, Any], cwd: str) -> dict[str, str]:
    """The environment of a local worker: ours, the master's sys.path, unbuffered output."""
    env = dict(os.environ)
    if not params.get("enable_threaded_blas"):
        for var in _BLAS_VARS:
            env[var] = "1"
    # '' on sys.path means the directory the master was started in
    path = [os.path.abspath(p) if p else cwd for p in sys.path]
    env["PYDIST_SYS_PATH"] = json.dumps(path)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYDIST_PARENT_PID"] = str(os.getpid())  # the worker dies with us (see _Spawner)
    for key, value in (params.get("env") or {}).items():
        env[str(key)] = str(value)
    return env


def worker_command(params: dict[str, Any], bind_to: str) -> list[str]:
    exename = params.get("exename") or sys.executable
    exeflags = params.get("exeflags") or ()
    if isinstance(exeflags, str):
        exeflags = exeflags.split()
    return [str(exename), *map(str, exeflags), "-m", "pydistributed.worker", "--bind-to", bind_to]


class LocalManager(ClusterManager):
    """Launches ``np`` workers on this host; ``restrict`` binds them to 127.0.0.1."""

    extra_params = frozenset({"restrict"})

    def __init__(self, np: int, restrict: bool = True) -> None:
        if isinstance(np, bool) or not isinstance(np, int) or np < 0:
            raise ValueError(f"the number of workers is a non-negative int, not {np!r}")
        self.np = np
        self.restrict = restrict

    def __repr__(self) -> str:
        return f"LocalManager(np={self.np}, restrict={self.restrict})"

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        cookie = params["cookie"]
        cwd = os.path.abspath(params.get("dir") or os.getcwd())
        env = worker_environment(params, cwd)
        bind_to = "127.0.0.1" if self.restrict else "0.0.0.0"
        cmd = worker_command(params, bind_to)
        server = forkserver(env) if self.np and forked(params) else None
        if server is not None and not os.path.isdir(cwd):  # as Popen would say, before a fork
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cwd)
        procs: Iterator[Any] = (
            self._forked(server, env, cwd, bind_to, cookie)
            if server is not None
            else (self._exec(cmd, cwd, env, cookie) for _ in range(self.np))
        )
        from .workerconfig import WorkerConfig  # (here: a worker imports this module)

        for proc in procs:
            config = WorkerConfig(
                exename=cmd[0],
                exeflags=tuple(cmd[1:-4]),
                process=proc,
                ospid=proc.pid,
                io=proc.stdout,
                enable_threaded_blas=bool(params.get("enable_threaded_blas")),
                environ=params.get("env"),
            )
            with launch_ntfy:
                launched.append(config)
                launch_ntfy.notify_all()

    def _forked(
        self, server: ForkServerClient, env: dict[str, str], cwd: str, bind_to: str, cookie: str
    ) -> Iterator[Any]:
        """The workers from the forkserver, requested all at once (``spawn_many``)."""
        from .forkspawn import ForkServerError

        done = 0
        try:
            for proc in server.spawn_many(self.np, cwd, env, bind_to, cookie):
                done += 1
                yield proc
        except ForkServerError:
            if server.alive:
                raise
            again = forkserver(env)  # it died meanwhile: once more, from a new one
            if again is None:
                raise
            yield from again.spawn_many(self.np - done, cwd, env, bind_to, cookie)

    @staticmethod
    def _exec(cmd: list[str], cwd: str, env: dict[str, str], cookie: str) -> Any:
        """A worker started as a new interpreter."""
        import subprocess

        proc = spawner().popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,  # a Ctrl-C in the terminal is the master's to relay
        )
        assert proc.stdin is not None
        try:
            # the cookie goes on stdin, never on the command line
            proc.stdin.write((cookie + "\n").encode("ascii"))
            proc.stdin.close()
        except OSError:
            pass  # it died at once; the master reports its stderr
        return proc
