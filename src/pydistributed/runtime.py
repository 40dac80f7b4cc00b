"""The runtime, imported on first use: what a light module (``processes``, ``remotecall``)
calls instead of importing ``cluster`` at its top, so that ``from pydistributed import
addprocs, remotecall_fetch`` imports little, and ``addprocs`` of local workers imports the
runtime while their forkserver starts (``managers.local.prestart``) rather than before."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["current_cluster", "load"]


def load() -> None:
    """Import the runtime (~25 ms): the cluster and everything it builds."""
    from . import cluster  # noqa: F401


def _first() -> Cluster:
    global current_cluster
    from .cluster import current_cluster as real

    current_cluster = real  # the next calls go straight to it
    return real()


current_cluster: Callable[[], Cluster] = _first
"""``cluster.current_cluster()``; the first call imports the runtime. Call it through the
module (``runtime.current_cluster()``): a name imported from here would stay the first one."""
