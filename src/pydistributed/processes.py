"""Processes: adding, removing, listing and interrupting them; starting a worker.

``addprocs`` picks the cluster manager from its first argument: a count means
:class:`LocalManager`, a manager itself; a list of machines means :class:`SSHManager` (workers
started over ssh; see ``managers/ssh.py``).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeGuard, overload

from . import runtime
from .errors import LaunchError, ProcessExitedException
from .ids import check_pid
from .managers.base import ClusterManager, check_params, extra_params_of
from .managers.local import LocalManager, prestart
from .timeouts import check_timeout

if TYPE_CHECKING:
    from .managers.ssh import SSHManager
    from .tasks import Task

__all__ = [
    "MachineSpec",
    "Topology",
    "addprocs",
    "init_worker",
    "interrupt",
    "myid",
    "nprocs",
    "nworkers",
    "process_messages",
    "procs",
    "rmprocs",
    "start_worker",
    "worker_id_from_socket",
    "workers",
]


Topology = Literal["all_to_all", "master_worker", "custom"]
MachineSpec = str | tuple[str, int | Literal["auto"]]
"""A machine for ``addprocs(machines)``: ``"[user@]host[:port] [bind_addr[:port]]"``, or that
string and a worker count (or ``"auto"``: one per CPU thread there), as in Julia."""


@overload
def addprocs(
    np: int | None = None,
    /,
    *,
    restrict: bool = True,
    dir: str | os.PathLike[str] | None = None,
    exename: str | os.PathLike[str] | None = None,
    exeflags: str | Sequence[str] = (),
    topology: Topology = "all_to_all",
    lazy: bool = True,
    enable_threaded_blas: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[int]: ...
@overload
def addprocs(
    machines: Sequence[MachineSpec],
    /,
    *,
    tunnel: bool = False,
    multiplex: bool = False,
    sshflags: str | Sequence[str] = (),
    max_parallel: int = 10,
    shell: str = "posix",
    ssh: str = "ssh",
    bootstrap: bool = False,
    dir: str | os.PathLike[str] | None = None,
    exename: str | os.PathLike[str] | None = None,
    exeflags: str | Sequence[str] = (),
    topology: Topology = "all_to_all",
    lazy: bool = True,
    enable_threaded_blas: bool = False,
    env: Mapping[str, str] | None = None,
) -> list[int]: ...
@overload
def addprocs(
    manager: ClusterManager,
    /,
    *,
    dir: str | os.PathLike[str] | None = None,
    exename: str | os.PathLike[str] | None = None,
    exeflags: str | Sequence[str] = (),
    topology: Topology = "all_to_all",
    lazy: bool = True,
    enable_threaded_blas: bool = False,
    env: Mapping[str, str] | None = None,
    **kw: Any,
) -> list[int]: ...


def addprocs(
    np_or_machines: int | Sequence[MachineSpec] | ClusterManager | None = None,
    /,
    *,
    restrict: bool = True,
    dir: str | os.PathLike[str] | None = None,
    exename: str | os.PathLike[str] | None = None,
    exeflags: str | Sequence[str] = (),
    topology: Topology = "all_to_all",
    lazy: bool = True,
    enable_threaded_blas: bool = False,
    env: Mapping[str, str] | None = None,
    tunnel: bool = False,
    multiplex: bool = False,
    sshflags: str | Sequence[str] = (),
    max_parallel: int = 10,
    shell: str = "posix",
    **kw: Any,
) -> list[int]:
    """Add workers and return their ids in ascending order.

    - ``addprocs(n, restrict=True, **kw)``: ``n`` workers on this host (LocalManager);
    - ``addprocs(**kw)``: one per CPU thread (``os.cpu_count()``);
    - ``addprocs(machines, tunnel=False, multiplex=False, sshflags=(), max_parallel=10,
      shell="posix", ssh="ssh", bootstrap=False, **kw)``: over ssh (SSHManager), ``machines``
      being specs
      ``"[user@]host[:port] [bind_addr[:port]]"``, ``(spec, count)`` or ``(spec, "auto")``
      (:data:`MachineSpec`; ``tunnel=True`` needs ``topology="master_worker"``);
    - ``addprocs(manager, **kw)``: with a ClusterManager of your own, which may take keywords
      of its own (those it lists in ``extra_params``).

    Keywords of every form:
        dir: the workers' working directory (default: this process's).
        exename: the Python interpreter to run (default ``sys.executable``).
        exeflags: extra interpreter flags (a sequence, or one string split on spaces).
        topology: ``"all_to_all"`` (workers may call each other), ``"master_worker"`` (workers
            talk only to the master) or ``"custom"``.
        lazy: with ``"all_to_all"``, connect workers to each other on first use (True) or at
            once.
        enable_threaded_blas: leave BLAS/OpenMP thread counts alone (default: 1 per worker).
        env: variables added to the workers' environment.

    Keywords of one form: ``restrict`` (local workers: listen on 127.0.0.1 only), and the ssh
    ones (``tunnel``, ``multiplex``, ``sshflags``, ``max_parallel``, ``shell``). Given to a
    form that does not take it, such a keyword raises ``TypeError`` unless left at its default.

    Raises:
        RuntimeError: called on a worker.
        LaunchError: a worker exited before it could join (a ``RuntimeError``), or did not
            report within ``PYDIST_WORKER_TIMEOUT`` seconds (``LaunchTimeoutError``, also a
            ``TimeoutError``); it carries the end of the worker's output.
        SSHLaunchError: (a ``LaunchError``) over ssh, the workers on some hosts could not
            start; it names each host with the end of its ssh session's stderr, and the
            workers that did start, which stay in the cluster (``.started``).
        TypeError: an unknown keyword, or one the form does not take.
        ValueError: an unknown topology, or a topology or ``lazy`` other than the existing
            workers' (as in Julia); nothing was added.
        KeyboardInterrupt: Ctrl-C during the call. None of its workers stays: those launched
            and not set up are ended, those that joined removed (5 s at most in the call, the
            rest in the background). A Ctrl-C that lands once the call has returned finds the
            ids in the caller's hands.
    """
    kw = _keywords(
        np_or_machines,
        kw,
        restrict=restrict,
        dir=dir,
        exename=exename,
        exeflags=exeflags,
        topology=topology,
        lazy=lazy,
        enable_threaded_blas=enable_threaded_blas,
        env=env,
        tunnel=tunnel,
        multiplex=multiplex,
        sshflags=sshflags,
        max_parallel=max_parallel,
        shell=shell,
    )
    if (
        isinstance(np_or_machines, int)
        and not isinstance(np_or_machines, bool)
        and "pydistributed.cluster" not in sys.modules
    ):
        # local workers, the runtime not imported yet (a cold master: a worker has it): their
        # forkserver starts now, and the runtime is imported meanwhile, on the other processor
        prestart(kw, _head_start)
    c = runtime.current_cluster()
    if c.myid != 1:
        raise RuntimeError("Only process 1 can add and remove workers")
    arg = np_or_machines
    manager: ClusterManager
    if arg is None:
        arg = os.cpu_count() or 1
    if isinstance(arg, ClusterManager):
        manager = arg
    elif isinstance(arg, bool):
        raise TypeError("addprocs() takes a count, a list of machines or a ClusterManager")
    elif isinstance(arg, int):
        manager = LocalManager(arg, restrict=kw.pop("restrict", True))
    elif isinstance(arg, (list, tuple)):
        from .managers.ssh import SSHManager

        manager = SSHManager(list(arg))
    else:
        raise TypeError(
            "addprocs() takes a count, a list of machines or a ClusterManager, "
            f"not {type(arg).__name__}"
        )
    try:
        pids = c.lifecycle.add_workers(manager, kw, c.cookie)
    except LaunchError as e:
        if not _over_ssh(manager):
            raise
        from .managers.ssh import SSHLaunchError

        if isinstance(e, SSHLaunchError):
            raise
        manager.take_failures()
        # a worker that failed after its first line (while reporting or joining): name the
        # hosts, since which one it was is not known here
        hosts = ", ".join(m.spec for m, _ in manager.machines)
        raise type(e)(f"over ssh to {hosts}: {e}", e.output, e.ospid) from None
    try:  # a Ctrl-C from here on: the caller never gets these ids, so none of them stays
        error = None
        if _over_ssh(manager):
            from .managers.ssh import launch_error

            error = launch_error(manager, pids)
    except BaseException:
        c.lifecycle.remove_interrupted(lambda: pids)
        raise
    if error is not None:
        raise error
    return pids


def _over_ssh(manager: ClusterManager) -> TypeGuard[SSHManager]:
    """Whether ``manager`` is an SSHManager (``managers.ssh`` is imported on first use: until
    then, there is none)."""
    ssh = sys.modules.get("pydistributed.managers.ssh")
    return ssh is not None and isinstance(manager, ssh.SSHManager)


# the keywords of addprocs that only some managers take, and their defaults
_FORM_DEFAULTS: dict[str, Any] = {
    "restrict": True,
    "tunnel": False,
    "multiplex": False,
    "sshflags": (),
    "max_parallel": 10,
    "shell": "posix",
    "bootstrap": False,
}


def _keywords(arg: Any, extra: dict[str, Any], **named: Any) -> dict[str, Any]:
    """The keywords ``addprocs`` passes on: every common one; a form's own one (``restrict``,
    the ssh ones) when the manager of that form takes it, or else when it is not left at its
    default (then the manager refuses it with ``TypeError``, as before they were spelled out)."""
    if isinstance(arg, ClusterManager):
        takes = extra_params_of(arg)
    elif isinstance(arg, (list, tuple)):
        from .managers.ssh import SSHManager

        takes = SSHManager.extra_params
    elif arg is None or (isinstance(arg, int) and not isinstance(arg, bool)):
        takes = LocalManager.extra_params
    else:
        takes = frozenset()
    kw = {}
    for key, value in named.items():
        if key not in _FORM_DEFAULTS or key in takes:
            kw[key] = value
        elif not (value is _FORM_DEFAULTS[key] or value == _FORM_DEFAULTS[key]):
            kw[key] = value
    kw.update(extra)
    check_params(kw, takes)  # before a forkserver is started for them (prestart)
    return kw


def _flatten(pids: tuple[Any, ...]) -> list[int]:
    flat: list[int] = []
    for p in pids:
        if isinstance(p, (list, tuple, set, frozenset)):
            flat.extend(p)
        else:
            flat.append(p)
    return flat


def rmprocs(*pids: Any, waitfor: float | None = None) -> Task[None] | None:
    """Remove workers: ask them to exit, then interrupt, then kill, within ``waitfor`` seconds.

    ``rmprocs(2, 3)`` or ``rmprocs([2, 3])``. With ``waitfor=0`` the removal runs in a
    :class:`Task`, returned at once; ``wait`` on it before more parallel calls.

    Process 1 is not removed (a warning says so, as Julia's does); nor is a process that is not
    a worker (a warning names it: it has exited already, or never was one).

    Raises:
        RuntimeError: called on a worker.
        TypeError: a process id is not an int, or ``waitfor`` not a number of seconds or None.
        ValueError: ``waitfor`` is negative or NaN.
        TimeoutError: some workers were still running after ``waitfor`` seconds.
    """
    flat = [check_pid(p, "a worker id") for p in _flatten(pids)]
    waitfor = check_timeout(waitfor, "rmprocs: waitfor")
    c = runtime.current_cluster()
    if c.myid != 1:
        raise RuntimeError("Only process 1 can add and remove workers")
    for p in dict.fromkeys(flat):
        if p == 1:
            warnings.warn("rmprocs: process 1 not removed", stacklevel=2)
        elif c.registry.get(p) is None:
            why = "it has exited" if c.registry.is_dead(p) else "there is no such process"
            warnings.warn(f"rmprocs: worker {p} not removed: {why}", stacklevel=2)
    if waitfor == 0:
        from .tasks import Task

        return Task(c.lifecycle.remove_workers, flat, None).start()
    c.lifecycle.remove_workers(flat, waitfor)
    return None


def interrupt(*pids: Any) -> None:
    """Interrupt the calls running now on ``pids`` (all workers when none is given).

    Each interrupted call's caller gets a ``RemoteException`` wrapping ``InterruptException``;
    an idle worker ignores the interrupt and every worker stays usable. Process 1 is not
    interrupted (as in Julia, where it is not a worker).

    Raises:
        TypeError: a process id is not an int.
        ValueError: no process has that id; nothing was interrupted.
        ProcessExitedException: that worker has exited; nothing was interrupted (as in Julia).
    """
    flat = [check_pid(p, "a worker id") for p in _flatten(pids)]
    c = runtime.current_cluster()
    for p in flat:
        if p != 1 and not c.registry.is_alive(p):
            if c.registry.is_dead(p):
                raise ProcessExitedException(p)
            raise ValueError(f"interrupt: no process with id {p} exists")
    targets = [p for p in flat if p != 1]
    if flat and not targets:
        return  # only process 1 was named
    c.lifecycle.interrupt(targets)


def myid() -> int:
    """The id of this process (1 on the master)."""
    return runtime.current_cluster().myid


def nprocs() -> int:
    """The number of processes, the master included."""
    return len(runtime.current_cluster().registry.proc_ids())


def nworkers() -> int:
    """The number of workers (1 when there are none: the master works)."""
    n = nprocs()
    return n - 1 if n > 1 else 1


def procs(pid: int | None = None) -> list[int]:
    """All process ids (``procs()``), or those on the same host as ``pid``."""
    registry = runtime.current_cluster().registry
    if pid is None:
        return registry.proc_ids()
    return registry.procs_on_host(check_pid(pid))


def workers(pool: Any = None) -> list[int]:
    """The worker ids (``[1]`` when there are none); ``workers(pool)``: the pool's."""
    if pool is not None:
        return list(pool.workers)
    return runtime.current_cluster().registry.worker_ids()


# -- workers ---------------------------------------------------------------------------


def _read_cookie() -> str:
    line = sys.stdin.readline()
    if not line:
        raise ValueError("no cookie on standard input")
    return line.rstrip("\r\n")


def _head_start() -> None:
    """What a cold master does while its forkserver starts (see ``managers.local.prestart``):
    import the runtime, make its cluster, and what adding workers imports (the output relay;
    ``WorkerConfig``, a dataclass: ``dataclasses`` and ``inspect``), so that once the
    forkserver is ready only the fork requests are left."""
    runtime.load()
    from . import relay  # noqa: F401
    from .managers import workerconfig  # noqa: F401

    runtime.current_cluster()


def start_worker(
    out: Any = None,
    cookie: str | None = None,
    *,
    bind_to: str | None = None,
    watchdog: bool = True,
) -> NoReturn:
    """Make this process a worker: listen, print ``pydist_worker:PORT#HOST``, serve forever.

    The cookie is read from the first line of standard input when not given. ``bind_to`` is
    ``HOST`` or ``HOST:PORT`` (default ``127.0.0.1`` and a free port). Never returns: the
    process exits when its connection to the master closes; with ``watchdog`` (the default),
    a small watchdog process kills it when that connection closes even if no thread of the
    worker can run (a C call holding the GIL).
    """
    if cookie is None:
        cookie = _read_cookie()
    host, port = "127.0.0.1", 0
    if bind_to:
        h, sep, p = bind_to.rpartition(":")
        if sep and p.isdigit() and not bind_to.endswith("]"):
            host, port = h.strip("[]"), int(p)
        else:
            host = bind_to.strip("[]")
    from . import handshake
    from .cluster import Cluster, set_current_cluster
    from .outputloss import guard_streams

    standard = out is None or out is sys.stdout or out is sys.__stdout__
    guard_streams()  # a print never fails on pipes whose reader is gone (outputloss.py)
    if standard:
        out = sys.stdout  # the guarded stream guard_streams put there (not the one replaced)
    c = Cluster(0, handshake.check_cookie(cookie), role="worker")
    set_current_cluster(c)
    c.server.watchdog = watchdog
    c.server.serve(host, port, out)


def init_worker(cookie: str, manager: ClusterManager | None = None) -> None:
    """Make this process a worker that a custom transport will connect (see process_messages).

    ``manager`` opens this worker's connections to other workers with its ``connect`` (Julia's
    ``init_worker(cookie, manager)``); the default, ``DefaultClusterManager``, uses TCP.
    """
    from . import handshake
    from .cluster import Cluster, set_current_cluster

    c = Cluster(0, handshake.check_cookie(cookie), role="worker", manager=manager)
    set_current_cluster(c)


def process_messages(r_stream: Any, w_stream: Any, incoming: bool = True) -> None:
    """Serve a connection of a custom transport, on a new thread.

    With ``incoming=True`` (the master connected to us) this process runs the server side of
    the handshake and then serves the connection; returns at once.
    """
    if not incoming:
        raise NotImplementedError(
            "process_messages(incoming=False) is not supported: in pydistributed the master "
            "opens every connection to a worker it launches, so a custom transport serves "
            "the worker's side only (incoming=True)"
        )
    runtime.current_cluster().serve_streams(r_stream, w_stream)


def worker_id_from_socket(s: Any) -> int:
    """The id of the process at the other end of connection ``s`` (a socket or stream).

    Inside a ``__reduce__`` running while a message is encoded, ``worker_id_from_socket(None)``
    gives the process the message goes to. Returns -1 when ``s`` is not a connection.
    """
    if s is None:
        from . import codec

        target = codec.encoding_target()
        return -1 if target is None else target
    return runtime.current_cluster().connections.pid_of(s)
