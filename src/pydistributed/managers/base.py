"""The cluster manager interface: how workers are launched, connected, managed and killed.

A manager implements :meth:`ClusterManager.launch`; the other methods have defaults that work
for any worker started with ``python -m pydistributed.worker``:

- ``launch(params, launched, launch_ntfy)`` starts workers and announces each with a
  :class:`WorkerConfig`::

      with launch_ntfy:
          launched.append(cfg)
          launch_ntfy.notify_all()

  It must return once every worker it was asked for has been launched. ``params`` holds every
  keyword ``addprocs`` was called with, plus the defaults (``dir``, ``exename``, ``exeflags``,
  ``topology``, ``lazy``, ``enable_threaded_blas``, ``env``), and ``cookie``: the cluster
  cookie, for the manager to hand to each worker (on its standard input, never on a command
  line). The manager acts on the cluster that called it through these arguments alone.
  A config gives either ``host`` and ``port`` to connect to, or ``io``: the worker's standard
  output, from which the master reads the line ``pydist_worker:PORT#HOST`` (and then relays the
  rest as ``From worker N:``). If ``process`` is a :class:`subprocess.Popen` with a stderr pipe,
  that is relayed too, and the process is killed if the worker fails to start.
- ``manage(pid, config, op)`` is called with ``"register"``, ``"deregister"``, ``"interrupt"``
  and ``"finalize"``; the default does nothing, as in Julia. (``interrupt`` always reaches the
  worker over the wire; ``manage`` is told so that a manager can do more.)
- ``kill(pid, config)`` makes a worker exit. A manager that does not override it gets the
  default behaviour: the cluster sends the worker an exit message (Julia's
  ``remote_do(exit, pid)``).
- ``connect(pid, config)`` returns ``(instream, outstream)``; the default opens a TCP connection
  to ``config.host``/``config.port`` (or ``config.connect_at``). When a manager does not
  override it and the host is this one, the cluster goes through the worker's Unix-socket twin
  instead, checking that the process there is the worker (``sockets.connect_local``).

A manager that takes keyword arguments of its own lists them in ``extra_params``; ``addprocs``
refuses any other unknown keyword with a ``TypeError``.
"""

from __future__ import annotations

import abc
import threading
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

if TYPE_CHECKING:
    from .workerconfig import WorkerConfig

__all__ = ["ClusterManager", "DefaultClusterManager", "WorkerConfig", "overrides"]


def __getattr__(name: str) -> Any:
    """``WorkerConfig`` is made on first use (``workerconfig.py``): a dataclass, and the module
    ``dataclasses`` imports ``inspect`` (~5 ms), which a worker that never dials another one
    does not need, nor the forkserver."""
    if name == "WorkerConfig":
        from .workerconfig import WorkerConfig

        globals()["WorkerConfig"] = WorkerConfig
        return WorkerConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ClusterManager(abc.ABC):
    """Base class of the ways to start workers (Julia's ``ClusterManager``)."""

    extra_params: ClassVar[frozenset[str]] = frozenset()
    # why a keyword this manager does not take is not needed: added to addprocs' TypeError
    keyword_hints: ClassVar[dict[str, str]] = {}

    @abc.abstractmethod
    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        """Start the workers; announce each config in ``launched`` and notify ``launch_ntfy``."""

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """React to a worker's life events (``op``: ``"register"``, ``"deregister"``,
        ``"interrupt"``, ``"finalize"``); the default does nothing."""
        return None  # an optional hook, not abstract

    def kill(self, pid: int, config: WorkerConfig) -> None:
        """Make worker ``pid`` exit.

        Not overridden, the cluster sends the worker an exit message instead of calling this
        (see :func:`overrides`); an override may stop the process its own way (a scheduler's
        cancel, a signal over ssh).
        """
        return None  # an optional hook, not abstract

    def connect(self, pid: int, config: WorkerConfig) -> tuple[BinaryIO, Any]:
        """Open the connection to worker ``pid``: ``(instream, outstream)``; default TCP."""
        host, port = config.host, config.port
        if config.connect_at is not None:
            host, port = config.connect_at
        if host is None or port is None:
            raise ValueError(f"worker {pid}: no host and port to connect to")
        from .. import sockets  # (here: ``from pydistributed import addprocs`` stays light)

        sock = sockets.connect_tcp(host, int(port), timeout=30.0)
        return sockets.socket_streams(sock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def overrides(manager: ClusterManager, method: str) -> bool:
    """Whether ``manager``'s class overrides ``ClusterManager.<method>`` (e.g. ``"kill"``)."""
    return getattr(type(manager), method) is not getattr(ClusterManager, method)


class DefaultClusterManager(ClusterManager):
    """The manager of a worker's connections to other workers (Julia's
    ``DefaultClusterManager``): its :meth:`connect` opens them, over TCP (through the Unix-socket
    twin on this host). ``init_worker(cookie, manager)`` may give another manager whose
    ``connect`` a custom transport provides. It launches nothing.
    """

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        raise TypeError(
            "DefaultClusterManager makes worker-to-worker connections and launches no workers; "
            "use LocalManager or a ClusterManager of your own with addprocs"
        )
