"""pydistributed: Julia's ``Distributed`` standard library, for Python.

A master process (id 1) and worker processes; remote calls and Futures, RemoteChannels, worker
pools and ``pmap``. The public API is re-exported here; see ``docs/julia-to-python.md``.
"""

from typing import TYPE_CHECKING, Any

from .asyncmap import asyncmap
from .backoff import ExponentialBackOff
from .channels import AbstractChannel, Channel
from .clearing import clear
from .cluster import cluster_cookie
from .errors import (
    CapturedException,
    ChannelClosedError,
    CompositeException,
    InterruptException,
    LaunchError,
    LaunchTimeoutError,
    ProcessExitedException,
    RemoteException,
)
from .executor import Executor
from .generics import channel_from_id, fetch, isready, put, remoteref_id, take, wait
from .ids import RRID
from .macros import distributed, everywhere, fetchfrom, spawn, spawnat
from .managers.base import ClusterManager, DefaultClusterManager, WorkerConfig
from .managers.local import LocalManager
from .membership import wait_for_workers
from .pmap import imap, pmap
from .processes import (
    addprocs,
    init_worker,
    interrupt,
    myid,
    nprocs,
    nworkers,
    process_messages,
    procs,
    rmprocs,
    start_worker,
    worker_id_from_socket,
    workers,
)
from .remotecall import remote_do, remotecall, remotecall_fetch, remotecall_wait
from .remoteref import Future, RemoteChannel
from .scoped import procs_added
from .tasks import Task, async_, sync, timedwait
from .workerpool import (
    AbstractWorkerPool,
    CachingPool,
    WorkerPool,
    default_worker_pool,
    remote,
)

if TYPE_CHECKING:
    from .managers.ssh import SSHManager

__version__ = "0.1.0"

# imported on first use, as attributes of the package (PEP 562): not needed to serve calls
_LAZY = {"SSHManager": ".managers.ssh"}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "RRID",
    "AbstractChannel",
    "AbstractWorkerPool",
    "CachingPool",
    "CapturedException",
    "Channel",
    "ChannelClosedError",
    "ClusterManager",
    "CompositeException",
    "DefaultClusterManager",
    "Executor",
    "ExponentialBackOff",
    "Future",
    "InterruptException",
    "LaunchError",
    "LaunchTimeoutError",
    "LocalManager",
    "ProcessExitedException",
    "RemoteChannel",
    "RemoteException",
    "SSHManager",
    "Task",
    "WorkerConfig",
    "WorkerPool",
    "addprocs",
    "async_",
    "asyncmap",
    "channel_from_id",
    "clear",
    "cluster_cookie",
    "default_worker_pool",
    "distributed",
    "everywhere",
    "fetch",
    "fetchfrom",
    "imap",
    "init_worker",
    "interrupt",
    "isready",
    "myid",
    "nprocs",
    "nworkers",
    "pmap",
    "process_messages",
    "procs",
    "procs_added",
    "put",
    "remote",
    "remote_do",
    "remotecall",
    "remotecall_fetch",
    "remotecall_wait",
    "remoteref_id",
    "rmprocs",
    "spawn",
    "spawnat",
    "start_worker",
    "sync",
    "take",
    "timedwait",
    "wait",
    "wait_for_workers",
    "worker_id_from_socket",
    "workers",
]
