"""The Cluster: this process's membership in a cluster, wired from one part per concern.

A :class:`Cluster` holds no logic of its own; it builds its parts and connects them::

    registry     who is in the cluster and who this process is (no I/O)    registry.py
    connections  one Peer per other process; opening and accepting them   connections.py
    dispatch     what each incoming message does; running a call's f       dispatch.py
    calls        outgoing calls: request, wait for the answer              calls.py
    refcount     the handles held here; add and release notices            refcount.py
    lifecycle    the master's add / admit / remove / interrupt / shutdown  lifecycle.py
    heartbeat    the master's watch for workers that stop answering        heartbeat.py
    server       a worker's listen / join / serve / exit                   serve.py
    executor     where incoming calls run (main thread or pool threads)    execution.py
    refs         the values stored here for Futures and RemoteChannels     refstore.py

A remote call goes ``remotecall.py`` -> ``calls.py`` -> ``peer.py`` (the caller writes, then
reads its own answer) and, on the other side, ``peer.py`` (reader thread) -> ``dispatch.py`` ->
``execution.py`` -> back through ``peer.py``. ``docs/design.md`` draws the whole path.

The Julia-style functions (``myid``, ``addprocs``, ``remotecall``...) act on the current
cluster, :func:`current_cluster`: the one the calling thread works for (a reader or executor
thread of a cluster, see ``scope.py``), else the process's default, made on first use as the
master (process 1) or installed by ``start_worker``/``init_worker`` in a worker. Layers above
the runtime keep per-cluster state in a :class:`ClusterVar`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from . import scope
from .buffers import BufferPool
from .calls import Calls
from .connections import Connections
from .dispatch import Dispatcher
from .errors import AuthenticationError, ProtocolError
from .execution import Executor
from .handshake import check_cookie, random_cookie
from .heartbeat import Heartbeat
from .lifecycle import Lifecycle
from .managers.base import ClusterManager, DefaultClusterManager
from .messages import DialMe, Exit, PeerUpdate
from .refcount import RefCounter
from .refstore import RefStore
from .registry import Registry
from .serve import Server

__all__ = [
    "Cluster",
    "ClusterVar",
    "cluster_cookie",
    "current_cluster",
    "set_current_cluster",
]

T = TypeVar("T")

log = logging.getLogger("pydistributed")


class Cluster:
    """This process's membership in a cluster: process ``pid`` in role ``role``.

    Args:
        pid: this process's id (1 for the master; a worker learns its id on joining).
        cookie: the cluster cookie (default: a random one).
        role: ``"master"`` or ``"worker"``.
        manager: opens this process's connections to workers it was not launched with
            (default: :class:`DefaultClusterManager`, TCP).
    """

    def __init__(
        self,
        pid: int = 1,
        cookie: str | None = None,
        role: str = "master",
        manager: ClusterManager | None = None,
    ) -> None:
        if role not in ("master", "worker"):
            raise ValueError(f"role must be 'master' or 'worker', not {role!r}")
        self.registry = Registry(pid, role)
        self.refs = RefStore()
        self.buffers = BufferPool()
        self.executor = Executor(use_main_thread=(role == "worker"), owner=self)
        self.dispatch = Dispatcher(self.registry, self.refs, self.executor)
        self.connections = Connections(
            self.registry,
            check_cookie(cookie) if cookie is not None else random_cookie(),
            manager if manager is not None else DefaultClusterManager(),
            owner=self,
            alloc=self.buffers.get,
            shield=self.executor.shield,
            unshield=self.executor.unshield,
            on_message=self.dispatch.on_message,
            on_decode_error=self.dispatch.on_decode_error,
        )
        self.refcount = RefCounter(
            self.registry, self.refs, self.connections, on_tick=self.buffers.trim
        )
        self.calls = Calls(self.registry, self.connections, self.dispatch, self.executor)
        self.heartbeat = Heartbeat(self.registry, self.connections)
        self.lifecycle = Lifecycle(
            self.registry, self.connections, self.calls, self.refs, self.heartbeat
        )
        self.server = Server(
            self.registry, self.connections, self.refcount, self.refs, self.executor
        )
        self.connections.announce = self.refcount.announce
        self.connections.on_join = self.server.on_join
        self.dispatch.register(DialMe, self.connections.links.on_dial_me)
        if role == "worker":
            self.connections.on_lost = self.server.on_lost
            self.dispatch.register(PeerUpdate, self.server.on_peer_update)
            self.dispatch.register(Exit, self.server.on_exit)
        else:
            self.connections.on_lost = self.lifecycle.on_lost
        self._vars: dict[ClusterVar[Any], Any] = {}
        self._vars_lock = threading.Lock()

    def __repr__(self) -> str:
        reg = self.registry
        return f"<Cluster myid={reg.myid} role={reg.role} workers={reg.worker_ids()}>"

    @property
    def myid(self) -> int:
        """This process's id."""
        return self.registry.myid

    @property
    def cookie(self) -> str:
        """The cluster cookie (set: printable ASCII, at most 64 characters)."""
        return self.connections.cookie

    @cookie.setter
    def cookie(self, value: str) -> None:
        self.connections.cookie = check_cookie(value)

    def serve_streams(self, reader: Any, writer: Any) -> None:
        """Serve, on a new thread, a connection of a custom transport that the master opened
        (``process_messages``): authenticate it, then read it until it closes."""

        def serve() -> None:
            scope.bind(self)
            try:
                self.connections.serve_streams(reader, writer)
            except (AuthenticationError, ProtocolError, OSError, EOFError) as e:
                log.warning("refused a connection of a custom transport: %s", e)

        threading.Thread(target=serve, name="pydist-custom-transport", daemon=True).start()


class ClusterVar(Generic[T]):
    """Per-cluster state of a layer above the runtime (trio's ``RunVar``): the variable object
    is its own key, so nothing is looked up by a string.

    ``factory`` makes the first value for :meth:`get` (under a lock: it must not do I/O or
    block); a variable without one is set with :meth:`setdefault` only.
    """

    __slots__ = ("_factory", "name")

    def __init__(self, name: str, factory: Callable[[], T] | None = None) -> None:
        self.name = name
        self._factory = factory

    def __repr__(self) -> str:
        return f"<ClusterVar {self.name}>"

    def get(self, cluster: Cluster) -> T:
        """This cluster's value, made by the factory on first use.

        Raises:
            LookupError: it has no value yet, and the variable has no factory.
        """
        values = cluster._vars
        try:
            return values[self]  # type: ignore[no-any-return]
        except KeyError:
            pass
        if self._factory is None:
            raise LookupError(f"{self!r} has no value in {cluster!r}")
        with cluster._vars_lock:
            if self not in values:
                values[self] = self._factory()
            return values[self]  # type: ignore[no-any-return]

    def peek(self, cluster: Cluster) -> T | None:
        """This cluster's value, or None if it has none yet (makes nothing)."""
        return cluster._vars.get(self)

    def setdefault(self, cluster: Cluster, value: T) -> T:
        """This cluster's value; ``value`` becomes it if it has none yet."""
        with cluster._vars_lock:
            return cluster._vars.setdefault(self, value)  # type: ignore[no-any-return]


_default: Cluster | None = None
_default_lock = threading.Lock()
_thread = scope.state


def current_cluster() -> Cluster:
    """The cluster the calling thread works for: a thread of the runtime's is bound to its
    cluster; any other gets the process's default (made as the master, process 1, on first
    use)."""
    c = _thread.owner
    if c is not None:
        return c  # type: ignore[no-any-return]
    c = _default
    if c is None:
        with _default_lock:
            if _default is None:
                set_current_cluster(Cluster(1))
            c = _default
    assert c is not None
    return c


def set_current_cluster(cluster: Cluster) -> None:
    """Make ``cluster`` the process's default (``start_worker`` and ``init_worker`` do)."""
    global _default
    _default = cluster


def cluster_cookie(cookie: str | None = None) -> str:
    """The cluster cookie; with an argument, set it first (printable ASCII, <= 64 chars)."""
    c = current_cluster()
    if cookie is not None:
        c.cookie = cookie
    return c.cookie
