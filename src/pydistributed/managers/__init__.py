"""Cluster managers. ``base`` defines the interface; ``local``, ``ssh``, ``slurm``, ``mpi`` and
``elastic`` implement it.

Nothing is imported here eagerly: the runtime imports ``managers.base`` alone, and a manager's
module is imported the first time its name is looked up here
(``from pydistributed.managers import SlurmManager``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .base import ClusterManager as ClusterManager
    from .base import DefaultClusterManager as DefaultClusterManager
    from .base import WorkerConfig as WorkerConfig
    from .elastic import ElasticManager as ElasticManager
    from .elastic import wait_for_workers as wait_for_workers
    from .local import LocalManager as LocalManager
    from .mpi import MPIManager as MPIManager
    from .slurm import SlurmManager as SlurmManager
    from .slurmjob import SlurmLaunchError as SlurmLaunchError
    from .slurmjob import SlurmTimeoutError as SlurmTimeoutError
    from .ssh import SSHManager as SSHManager

# name -> the submodule that defines it
_WHERE = {
    "ClusterManager": "base",
    "WorkerConfig": "base",
    "DefaultClusterManager": "base",
    "LocalManager": "local",
    "MPIManager": "mpi",
    "SSHManager": "ssh",
    "ElasticManager": "elastic",
    "wait_for_workers": "elastic",
    "SlurmManager": "slurm",
    "SlurmLaunchError": "slurmjob",
    "SlurmTimeoutError": "slurmjob",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
