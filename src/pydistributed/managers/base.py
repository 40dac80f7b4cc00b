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

A manager that takes keyword arguments of its own lists them in ``extra_params``: any iterable
of their names (a tuple, a list, a set), made a ``frozenset`` once, when the class is defined
(an ``extra_params`` set on an instance is converted when ``addprocs`` uses the manager);
anything else (one ``str``, a name that is not a ``str``) raises ``TypeError`` there. ``addprocs``
refuses any other unknown keyword with a ``TypeError``.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

if TYPE_CHECKING:
    from .workerconfig import WorkerConfig

__all__ = [
    "ClusterManager",
    "DefaultClusterManager",
    "WorkerConfig",
    "check_params",
    "extra_params_of",
    "keyword_names",
    "overrides",
]


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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "extra_params" in cls.__dict__:  # its own: a frozenset from now on
            cls.extra_params = keyword_names(cls.__dict__["extra_params"], cls.__name__)

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

        try:
            sock = sockets.connect_tcp(host, int(port), timeout=30.0)
        except OSError as e:  # the same type, with the worker and its address named
            what = f"worker {pid}: cannot connect to {host}:{port}: {e.strerror or e}"
            try:
                err = type(e)(e.errno, what) if e.errno is not None else type(e)(what)
            except Exception:  # a subclass with another signature
                raise e from None
            raise err from e
        return sockets.socket_streams(sock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def keyword_names(names: object, owner: str) -> frozenset[str]:
    """``extra_params`` as a ``frozenset`` of names, from any iterable of ``str``.

    Raises:
        TypeError: ``names`` is one ``str``, not iterable, or holds something else than a
            ``str``; the message names ``<owner>.extra_params`` and what it was.
    """
    if isinstance(names, frozenset) and all(isinstance(n, str) for n in names):
        return names
    what = f"{owner}.extra_params must be an iterable of keyword names (str)"
    if isinstance(names, (str, bytes)):
        raise TypeError(f"{what}, not one {type(names).__name__} ({names!r}): write ({names!r},)")
    if not isinstance(names, Iterable):
        raise TypeError(f"{what}, not {type(names).__name__} ({names!r})")
    out = frozenset(names)
    for n in out:
        if not isinstance(n, str):
            raise TypeError(f"{what}: {n!r} ({type(n).__name__}) is not a str")
    return out


def extra_params_of(manager: ClusterManager) -> frozenset[str]:
    """The keywords ``manager`` takes of its own (its ``extra_params``, converted as the class
    attribute is, when it was set on the instance)."""
    return keyword_names(manager.extra_params, type(manager).__name__)


def check_params(params: Mapping[str, Any], takes: Iterable[str]) -> None:
    """The checks of ``addprocs``' keywords that hold whatever the manager, made before anything
    is started: ``env`` is ``None`` or a mapping of ``str`` to ``str``; ``max_parallel``, when
    the manager takes it (``takes``), an ``int`` >= 1 (Julia's default is 10; ``None`` or 0
    would not say how many).

    Raises:
        TypeError: ``env`` is not a mapping, or holds a name or value that is not a ``str``;
            ``max_parallel`` is not an ``int``. The message names the keyword and the value.
        ValueError: ``max_parallel`` is < 1.
    """
    env = params.get("env")
    if env is not None:
        if not isinstance(env, Mapping):
            raise TypeError(
                f"addprocs: env must be a mapping of variable names to values (str), as "
                f'{{"NAME": "value"}}, not {type(env).__name__} ({env!r})'
            )
        for name, value in env.items():
            if not isinstance(name, str):
                raise TypeError(
                    f"addprocs: env's names must be str, not {type(name).__name__} ({name!r})"
                )
            if not isinstance(value, str):
                raise TypeError(
                    f"addprocs: env[{name!r}] must be a str, not {type(value).__name__} "
                    f"({value!r}): the worker would see {str(value)!r}"
                )
    if "max_parallel" in params and "max_parallel" in takes:
        n = params["max_parallel"]
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"addprocs: max_parallel must be an int >= 1, not {n!r}")
        if n < 1:
            raise ValueError(f"addprocs: max_parallel must be an int >= 1, not {n!r}")


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
