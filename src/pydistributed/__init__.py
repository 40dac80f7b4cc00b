"""pydistributed: Julia's ``Distributed`` standard library, for Python.

A master process (id 1) and worker processes; remote calls and Futures, RemoteChannels, worker
pools and ``pmap``. The public API is re-exported here; see ``docs/julia-to-python.md``.
"""

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .asyncmap import asyncmap as asyncmap
    from .backoff import ExponentialBackOff as ExponentialBackOff
    from .channels import AbstractChannel as AbstractChannel
    from .channels import Channel as Channel
    from .clearing import clear as clear
    from .cluster import cluster_cookie as cluster_cookie
    from .errors import CapturedException as CapturedException
    from .errors import ChannelClosedError as ChannelClosedError
    from .errors import CompositeException as CompositeException
    from .errors import InterruptException as InterruptException
    from .errors import LaunchError as LaunchError
    from .errors import LaunchTimeoutError as LaunchTimeoutError
    from .errors import ProcessExitedException as ProcessExitedException
    from .errors import RemoteException as RemoteException
    from .executor import Executor as Executor
    from .generics import channel_from_id as channel_from_id
    from .generics import fetch as fetch
    from .generics import isready as isready
    from .generics import put as put
    from .generics import remoteref_id as remoteref_id
    from .generics import take as take
    from .generics import wait as wait
    from .ids import RRID as RRID
    from .macros import distributed as distributed
    from .macros import everywhere as everywhere
    from .macros import fetchfrom as fetchfrom
    from .macros import spawn as spawn
    from .macros import spawnat as spawnat
    from .managers.base import ClusterManager as ClusterManager
    from .managers.base import DefaultClusterManager as DefaultClusterManager
    from .managers.base import WorkerConfig as WorkerConfig
    from .managers.local import LocalManager as LocalManager
    from .managers.ssh import SSHManager as SSHManager
    from .membership import wait_for_workers as wait_for_workers
    from .pmap import imap as imap
    from .pmap import pmap as pmap
    from .processes import addprocs as addprocs
    from .processes import init_worker as init_worker
    from .processes import interrupt as interrupt
    from .processes import myid as myid
    from .processes import nprocs as nprocs
    from .processes import nworkers as nworkers
    from .processes import process_messages as process_messages
    from .processes import procs as procs
    from .processes import rmprocs as rmprocs
    from .processes import start_worker as start_worker
    from .processes import worker_id_from_socket as worker_id_from_socket
    from .processes import workers as workers
    from .remotecall import remote_do as remote_do
    from .remotecall import remotecall as remotecall
    from .remotecall import remotecall_fetch as remotecall_fetch
    from .remotecall import remotecall_wait as remotecall_wait
    from .remoteref import Future as Future
    from .remoteref import RemoteChannel as RemoteChannel
    from .scoped import procs_added as procs_added
    from .tasks import Task as Task
    from .tasks import async_ as async_
    from .tasks import sync as sync
    from .tasks import timedwait as timedwait
    from .workerpool import AbstractWorkerPool as AbstractWorkerPool
    from .workerpool import CachingPool as CachingPool
    from .workerpool import WorkerPool as WorkerPool
    from .workerpool import default_worker_pool as default_worker_pool
    from .workerpool import remote as remote

__version__ = "0.1.0"

# Every public name is imported on first use, as an attribute of the package (PEP 562): a
# process that imports one submodule (a worker, the forkserver, ``from pydistributed import
# addprocs``) does not pay for the rest. ``from pydistributed import *`` imports them all.
_WHERE = {
    "asyncmap": ".asyncmap",
    "ExponentialBackOff": ".backoff",
    "AbstractChannel": ".channels",
    "Channel": ".channels",
    "clear": ".clearing",
    "cluster_cookie": ".cluster",
    "CapturedException": ".errors",
    "ChannelClosedError": ".errors",
    "CompositeException": ".errors",
    "InterruptException": ".errors",
    "LaunchError": ".errors",
    "LaunchTimeoutError": ".errors",
    "ProcessExitedException": ".errors",
    "RemoteException": ".errors",
    "Executor": ".executor",
    "channel_from_id": ".generics",
    "fetch": ".generics",
    "isready": ".generics",
    "put": ".generics",
    "remoteref_id": ".generics",
    "take": ".generics",
    "wait": ".generics",
    "RRID": ".ids",
    "distributed": ".macros",
    "everywhere": ".macros",
    "fetchfrom": ".macros",
    "spawn": ".macros",
    "spawnat": ".macros",
    "ClusterManager": ".managers.base",
    "DefaultClusterManager": ".managers.base",
    "WorkerConfig": ".managers.base",
    "LocalManager": ".managers.local",
    "SSHManager": ".managers.ssh",
    "wait_for_workers": ".membership",
    "imap": ".pmap",
    "pmap": ".pmap",
    "addprocs": ".processes",
    "init_worker": ".processes",
    "interrupt": ".processes",
    "myid": ".processes",
    "nprocs": ".processes",
    "nworkers": ".processes",
    "process_messages": ".processes",
    "procs": ".processes",
    "rmprocs": ".processes",
    "start_worker": ".processes",
    "worker_id_from_socket": ".processes",
    "workers": ".processes",
    "remote_do": ".remotecall",
    "remotecall": ".remotecall",
    "remotecall_fetch": ".remotecall",
    "remotecall_wait": ".remotecall",
    "Future": ".remoteref",
    "RemoteChannel": ".remoteref",
    "procs_added": ".scoped",
    "Task": ".tasks",
    "async_": ".tasks",
    "sync": ".tasks",
    "timedwait": ".tasks",
    "AbstractWorkerPool": ".workerpool",
    "CachingPool": ".workerpool",
    "WorkerPool": ".workerpool",
    "default_worker_pool": ".workerpool",
    "remote": ".workerpool",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
            # A submodule (``pydistributed.managers``, ``pydistributed.cluster``...), as when
            # this file imported them all.
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


class _Package(types.ModuleType):
    """This package's module type. Two submodules share their name with the function they
    define (``pmap``, ``asyncmap``): importing the submodule sets it as an attribute of the
    package, which would hide the function. Such an assignment is dropped here, so the name
    stays the function's (as ``from .pmap import pmap`` made it when this file imported it)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _WHERE:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
