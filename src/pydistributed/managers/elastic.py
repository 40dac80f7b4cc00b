"""ElasticManager: workers that join a running master by themselves (ClusterManagers.jl's).

The master listens; anyone who holds the cookie starts ``python -m pydistributed.worker --join
HOST:PORT`` (by hand, from a scheduler's job, on another host), and that worker becomes the
next worker of the cluster::

    ElasticManager(addr, port)          listener thread            admission thread
    --------------------------          ---------------            ----------------
    listen on addr:port (0: the OS
    picks); the listener gate of
    listener.py serves it      -------> accept; handshake (the
                                        worker proves the cookie
                                        first); bounded, as every
                                        listener; refusals logged
                                        at most once a second
                                        read the address record
                                        (joinwire.py); queue it  -> addprocs(self) for that
                                                                    one worker: launch hands
                                                                    its config over; the link
                                                                    it opened becomes its
                                                                    master connection
                                                                    (authenticated_link);
                                                                    JoinPGRP; in workers()

A joined worker is a worker like any other: in ``workers()`` and the default pool, reachable by
the other workers as the topology says, removed by ``rmprocs`` (an ``Exit`` message: there is
no local process to kill) and gone from ``workers()`` when its connection closes. Each worker is
admitted by an ``addprocs`` of its own, so one that fails to join takes no other with it. The
topology and laziness are those of the workers already there unless given.
"""

from __future__ import annotations

import logging
import queue
import shlex
import socket
import sys
import threading
from typing import Any, BinaryIO

from .. import scope, sockets
from ..cluster import Cluster, current_cluster
from ..errors import AuthenticationError
from ..handshake import Session
from ..joinwire import Link, read_address
from ..listener import Listener
from ..membership import wait_for_workers
from ..registry import TOPOLOGIES
from .base import ClusterManager, WorkerConfig

__all__ = ["ElasticManager", "wait_for_workers"]

log = logging.getLogger("pydistributed")


class ElasticManager(ClusterManager):
    """Listens at ``addr:port`` for workers that join by themselves (Julia's
    ``ElasticManager``); it starts listening when made, on the master.

    Args:
        addr: the address to listen on (``"0.0.0.0"``: every interface).
        port: the port; 0 lets the OS pick one (see :attr:`port`).
        topology: the workers' topology; default: that of the workers there are
            (``"all_to_all"`` when there are none).
        lazy: with ``"all_to_all"``, whether workers connect to each other on first use;
            default: as the workers there are (True when there are none).

    Raises:
        RuntimeError: made on a worker.
        ValueError: a bad port or topology.
        OSError: the address cannot be listened on (the port is taken).
    """

    def __init__(
        self,
        addr: str = "127.0.0.1",
        port: int = 0,
        *,
        topology: str | None = None,
        lazy: bool | None = None,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ValueError(f"port is an int from 0 to 65535, not {port!r}")
        if not isinstance(addr, str) or not addr:
            raise ValueError(f"addr is a host name or address, not {addr!r}")
        if topology is not None and topology not in TOPOLOGIES:
            raise ValueError(
                f"topology must be one of {', '.join(map(repr, TOPOLOGIES))}, not {topology!r}"
            )
        c = current_cluster()
        if c.myid != 1:
            raise RuntimeError("an ElasticManager runs on the master (process 1)")
        self._cluster: Cluster = c
        self.topology = topology
        self.lazy = lazy
        sock = sockets.listen_tcp(addr, port)
        host = sockets.primary_ip() if addr in ("0.0.0.0", "", "::") else addr
        self.address: tuple[str, int] = (host, int(sock.getsockname()[1]))
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[WorkerConfig | None] = queue.SimpleQueue()
        self._next: WorkerConfig | None = None
        self._active: dict[int, WorkerConfig] = {}
        self.terminated: set[int] = set()
        self._waiting = 0
        self._closed = False
        self._listener = Listener(lambda: c.cookie, self._ready)
        self._listener.add(sock, local=False)
        self._admitter = threading.Thread(
            target=self._admit_loop, name="pydist-elastic", daemon=True
        )
        self._admitter.start()

    # -- what it tells -------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address workers dial (``addr``, or this host's address for a wildcard)."""
        return self.address[0]

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS picked for port 0)."""
        return self.address[1]

    @property
    def active(self) -> list[int]:
        """The ids of the workers that joined through this manager and are still there."""
        with self._lock:
            return sorted(self._active)

    @property
    def refused(self) -> int:
        """How many connections to it were refused before they proved the cookie (a wrong
        cookie, other versions, garbage, too slow)."""
        return self._listener.refused

    def join_command(self, exename: str | None = None) -> str:
        """The shell command that starts a worker which joins through this manager (Julia's
        ``get_connect_cmd``). The cookie is not in it: give it in ``PYDIST_COOKIE``, a file
        (``--cookie-file``) or on standard input."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        exe = exename or sys.executable
        return shlex.join([exe, "-m", "pydistributed.worker", "--join", f"{host}:{self.port}"])

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening"
        return (
            f"ElasticManager({self.host!r}, {self.port}): {state}, active workers "
            f"{self.active}, {self._waiting} waiting to be admitted, terminated "
            f"{sorted(self.terminated)}"
        )

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop listening (the workers that joined stay); connections not yet admitted are
        closed. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._listener.close()
        self._queue.put(None)
        self._admitter.join(timeout=30.0)

    def __enter__(self) -> ElasticManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- joining --------------------------------------------------------------------------

    def _ready(self, sock: socket.socket, session: Session, secure: bool, addr: Any) -> None:
        """The listener's hand-off of a worker that proved the cookie (must not block)."""
        threading.Thread(target=self._take, args=(sock, session, secure, addr), daemon=True).start()

    def _take(self, sock: socket.socket, session: Session, secure: bool, addr: Any) -> None:
        reader, writer = sockets.socket_streams(sock)
        link: Link = (reader, writer, session, secure)
        try:
            host, port = read_address(link)
        except (AuthenticationError, OSError, EOFError) as e:
            log.warning("a worker from %s that dialed the elastic port left: %s", addr, e)
            sock.close()
            return
        config = WorkerConfig(host=host, port=port, bind_addr=host)
        config.userdata = {"link": link, "from": addr}
        with self._lock:
            if self._closed:
                sock.close()
                return
            self._waiting += 1
        self._queue.put(config)

    def _admit_loop(self) -> None:
        scope.bind(self._cluster)
        while True:
            config = self._queue.get()
            if config is None:
                break
            with self._lock:
                self._waiting -= 1
            self._admit(config)
        while True:  # closed: the ones still waiting are not admitted
            try:
                config = self._queue.get_nowait()
            except queue.Empty:
                return
            if config is not None:
                _close_link(config)

    def _admit(self, config: WorkerConfig) -> None:
        c = self._cluster
        reg = c.registry
        there = reg.worker_ids() != [1]
        topology = self.topology or (reg.topology if there else "all_to_all")
        lazy = self.lazy if self.lazy is not None else (c.lifecycle.lazy if there else True)
        self._next = config
        try:
            c.lifecycle.add_workers(self, {"topology": topology, "lazy": lazy}, c.cookie)
        except Exception as e:
            where = (config.userdata or {}).get("from")
            log.warning("a worker from %s that joined the elastic port was not admitted: %s",
                        where, e)  # fmt: skip
            _close_link(config)
        finally:
            self._next = None

    # -- the ClusterManager interface ---------------------------------------------------

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        """Hand over the worker being admitted (workers start themselves: see
        :meth:`join_command`)."""
        config, self._next = self._next, None
        if config is None:
            raise TypeError(
                "an ElasticManager admits workers as they join: start them with "
                "join_command() and wait for them with wait_for_workers(n, timeout), "
                "instead of calling addprocs with it"
            )
        with launch_ntfy:
            launched.append(config)
            launch_ntfy.notify_all()

    def authenticated_link(self, config: WorkerConfig) -> tuple[Any, Any, Session, bool] | None:
        """The connection the worker of ``config`` opened, past its handshake (once): the
        runtime makes it the worker's master connection instead of dialing the worker."""
        data = config.userdata if isinstance(config.userdata, dict) else {}
        link: Link | None = data.pop("link", None)
        if link is not None:
            data["closer"] = link[1]
        return link

    def connect(self, pid: int, config: WorkerConfig) -> tuple[BinaryIO, Any]:
        """Never used: an elastic worker's connection is the one it opened."""
        raise ValueError(f"worker {pid} joined by itself: there is no connection to open to it")

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        """Keep the table of active and terminated workers."""
        with self._lock:
            if op == "register":
                self._active[pid] = config
            elif op == "deregister":
                self._active.pop(pid, None)
                self.terminated.add(pid)


def _close_link(config: WorkerConfig) -> None:
    """Close the connection of a worker that was not admitted: it exits."""
    data = config.userdata if isinstance(config.userdata, dict) else {}
    link = data.get("link")
    writer = link[1] if link is not None else data.get("closer")
    sock = getattr(writer, "sock", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
