"""Connections between two workers, opened when first needed.

The worker with the higher id always dials, as in Julia (``check_worker_state``): it learned
the address of every worker it may talk to when it joined. A worker that wants a connection to
a worker with a higher id asks the master (``DialMe``), which asks that worker to dial it back,
and waits for the connection to arrive. So two first calls at once between two workers make
one connection, and in a ``custom`` topology both workers of a connected pair can call each
other, whichever of them was listed in the other's ``connect_idents``::

    worker 2 (wants 3)          master                   worker 3
    DialMe(3)          ----->   DialMe(2)      ----->    dial 2, Identify(3, proof)
    connection from 3 arrives   <-----------------------------------------------
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Protocol

from .errors import ProcessExitedException
from .handshake import identity_proof
from .managers.base import ClusterManager
from .messages import DialMe, Identify, Message
from .peer import Peer
from .registry import Registry
from .timeouts import seconds

if TYPE_CHECKING:
    from .managers.workerconfig import WorkerConfig

__all__ = ["PeerLinks"]

log = logging.getLogger("pydistributed")


class Connections(Protocol):
    """What this module needs of ``connections.Connections`` (which sits above it)."""

    registry: Registry
    manager: ClusterManager

    def get(self, pid: int) -> Peer: ...
    def lookup(self, pid: int) -> Peer | None: ...
    def install(self, pid: int, peer: Peer) -> Peer: ...
    def start(self, peer: Peer, *, thread: bool = True) -> None: ...
    def connect(self, pid: int, config: WorkerConfig, manager: ClusterManager) -> Peer: ...
    def send_quietly(self, pid: int, msg: Message) -> None: ...
    def wait_installed(self, pid: int, timeout: float) -> Peer | None: ...


class PeerLinks:
    """Opens worker-to-worker connections for :meth:`Connections.get` (see the module).

    ``dial_back_timeout``: how long a worker waits for the connection it asked for.
    """

    def __init__(self, connections: Connections, dial_back_timeout: float) -> None:
        self.connections = connections
        self.dial_back_timeout = dial_back_timeout
        self._lock = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}
        self._refused: dict[int, str] = {}  # pid -> why it could not connect back to us

    def open(self, pid: int) -> Peer:
        """The connection to worker ``pid`` (this process is a worker), opened now.

        Raises:
            ProcessExitedException: ``pid`` has exited, or no connection could be made.
            ConnectionError: ``pid`` (alive) was asked to connect back and said it could not.
            ValueError: there is no such process, or the topology gives no way to reach it.
        """
        c = self.connections
        reg = c.registry
        info = reg.get(pid)
        reachable = reg.pair_key(pid) is not None and reg.topology != "master_worker"
        if pid == 1 or not reachable or (pid < reg.myid and (info is None or not info.port)):
            if reg.topology != "all_to_all" and pid != 1:
                raise ValueError(
                    f"process {reg.myid} has no connection to process {pid} "
                    f"(topology {reg.topology!r})"
                )
            if info is not None and pid != 1 and reachable:
                raise ValueError(
                    f"process {reg.myid} cannot connect to process {pid}: it has no address "
                    "(its manager connects it through its own streams); use "
                    'topology="master_worker", or a manager whose connect() reaches it'
                )
            raise ValueError(f"no process with id {pid}")
        with self._lock:
            lock = self._locks.setdefault(pid, threading.Lock())
        with lock:
            peer = c.lookup(pid)
            if peer is not None:
                return peer
            if reg.is_dead(pid):
                raise ProcessExitedException(pid, removed=reg.was_removed(pid))
            if pid > reg.myid:
                return self._dialed_back(pid)
            assert info is not None and info.host is not None and info.port is not None
            try:
                from .managers.workerconfig import WorkerConfig

                return self._dial(pid, WorkerConfig(host=info.host, port=info.port))
            except (OSError, EOFError) as e:
                raise ProcessExitedException(pid, f"cannot connect: {e}") from e

    def _dial(self, pid: int, config: WorkerConfig) -> Peer:
        """Connect, authenticate, identify ourselves, start reading."""
        c = self.connections
        key = c.registry.pair_key(pid)
        if key is None:
            raise ValueError(f"process {c.registry.myid} has no key to prove itself to {pid}")
        peer = c.connect(pid, config, c.manager)
        peer.send(Identify(c.registry.myid, identity_proof(key, peer.transcript)))
        kept = c.install(pid, peer)
        if kept is not peer:
            # it connected to us meanwhile: keep one connection per pair, so that what this
            # process sends to it stays in order
            peer.close("a connection already exists")
            return kept
        c.start(peer)
        return peer

    def _dialed_back(self, pid: int) -> Peer:
        """Ask the master to have ``pid`` connect to us, and wait for that connection."""
        c = self.connections
        reg = c.registry
        self._refused.pop(pid, None)
        c.get(1).send(DialMe(pid))
        deadline = time.monotonic() + self.dial_back_timeout
        while True:
            peer = c.wait_installed(pid, min(0.25, max(0.0, deadline - time.monotonic())))
            if peer is not None:
                return peer
            why = self._refused.pop(pid, None)
            if why is not None:  # it is alive (the master says so), and said why it cannot
                raise ConnectionError(
                    f"process {reg.myid} cannot connect to process {pid}: asked to connect "
                    f"back, it could not: {why}"
                )
            if reg.is_dead(pid):
                raise ProcessExitedException(pid, removed=reg.was_removed(pid))
            if c.lookup(1) is None:
                raise ProcessExitedException(1, "the master is gone")
            if time.monotonic() >= deadline:
                raise ProcessExitedException(
                    pid,
                    f"cannot connect: process {pid} did not connect back to process "
                    f"{reg.myid} within {seconds(self.dial_back_timeout)} s (asked through the "
                    "master; see its log for why)",
                )

    def on_dial_me(self, peer: Peer, msg: DialMe) -> None:
        """``DialMe``: on the master, from worker ``peer.pid`` that wants ``msg.pid``: pass it
        on; on a worker, from the master: connect to worker ``msg.pid`` (on a thread)."""
        c = self.connections
        if c.registry.myid == 1:
            sender = peer.pid
            if sender is not None and sender != 1:
                if msg.pid < 0:  # sender could not dial -msg.pid, which asked: tell it why
                    c.send_quietly(-msg.pid, DialMe(-sender, msg.refused))
                else:
                    c.send_quietly(msg.pid, DialMe(sender))
            return
        if peer.pid != 1:
            log.warning("ignored a DialMe from process %s (only the master sends one)", peer.pid)
            return
        if msg.pid < 0:  # -msg.pid could not connect back to us: _dialed_back says so
            self._refused[-msg.pid] = msg.refused or "no reason given"
            return
        try:
            threading.Thread(
                target=self._dial_quietly, args=(msg.pid,), name="pydist-dial", daemon=True
            ).start()
        except RuntimeError as e:  # no thread now: the asking worker's wait ends with an error
            log.warning("could not connect to process %d, which asked for it: %s", msg.pid, e)

    def _dial_quietly(self, pid: int) -> None:
        try:
            self.connections.get(pid)
        except Exception as e:
            log.warning(
                "process %d could not connect to process %d, which asked for it: %s",
                self.connections.registry.myid,
                pid,
                e,
            )
            # the asking process learns why through the master, at once (not at its timeout)
            self.connections.send_quietly(1, DialMe(-pid, f"{type(e).__name__}: {e}"))
