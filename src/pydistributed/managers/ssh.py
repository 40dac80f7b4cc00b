"""SSHManager: workers on other hosts, started over ssh.

Not implemented yet: the class exists so that the public API is complete and ``isinstance``
checks work, and it refuses to launch with a clear error.
"""

from __future__ import annotations

import threading
from typing import Any

from .base import ClusterManager, WorkerConfig

__all__ = ["SSHManager"]


class SSHManager(ClusterManager):
    """Launches workers on remote hosts over ssh (``addprocs(machines)``)."""

    extra_params = frozenset({"tunnel", "sshflags", "max_parallel"})

    def __init__(self, machines: list[Any]) -> None:
        self.machines = list(machines)

    def __repr__(self) -> str:
        return f"SSHManager(machines={self.machines!r})"

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        raise NotImplementedError(
            "SSH workers are not implemented yet in this version of pydistributed; "
            "use addprocs(n) for local workers or a ClusterManager of your own"
        )
