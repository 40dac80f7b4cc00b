"""The connections of this process: one :class:`~pydistributed.peer.Peer` per other process.

Opening a connection, either way, is the same three steps::

    the side that connects                        the side that accepts (a worker)
    ----------------------                        --------------------------------
    manager.connect(pid, config)  ------------->  accept (TCP, or the Unix-socket twin)
    client handshake (handshake.py)  <--------->  server handshake, one bounded deadline
    first message: JoinPGRP (the master)  ----->  ``on_join``: become worker N
                   Identify(myid) (a worker)  ->  install the peer under that id
    read on a thread of its own                   read on the accepting thread

The master opens one connection to each worker when it admits it (``lifecycle``). A worker
opens connections to other workers lazily, on first use (:meth:`Connections.get`), through the
cluster's connection manager (``DefaultClusterManager``: TCP, or another one given to
``init_worker``). There is one connection per pair of processes: when two workers dial each
other at once, the one that finds a live connection installed closes its own, so that what one
process sends to another stays in order.

When a connection closes, every caller waiting on it gets ``ProcessExitedException`` (``Peer``
does that); then ``on_lost`` is told, unless another live connection to that process is
installed (a duplicate closed).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import codec, sockets, transport
from .errors import AuthenticationError, ProcessExitedException, ProtocolError
from .handshake import client_handshake, server_handshake
from .managers.base import ClusterManager, WorkerConfig
from .messages import Identify, JoinPGRP, Message
from .peer import Peer
from .registry import Registry

__all__ = ["HANDSHAKE_TIMEOUT", "Connections", "authenticate_incoming"]

log = logging.getLogger("pydistributed")

HANDSHAKE_TIMEOUT = 10.0
_FIRST_MESSAGE_LIMIT = 1 << 20  # JoinPGRP or Identify: small, and read before trusting much


def authenticate_incoming(reader: Any, writer: Any, cookie: str) -> Message:
    """The accepting side: run the server handshake, then read the first message.

    Raises:
        AuthenticationError: the peer does not know the cookie, or speaks another version.
        ProtocolError: the first message is garbled or too large.
        EOFError, OSError: the connection broke or timed out.
    """
    read_exact, write = transport.handshake_io(reader, writer)
    server_handshake(read_exact, write, cookie)
    return codec.decode(transport.read_message(reader, limit=_FIRST_MESSAGE_LIMIT))


def _ignore_lost(peer: Peer, reason: str) -> None:
    pass


def _refuse_join(peer: Peer, msg: JoinPGRP) -> bool:
    return False


class Connections:
    """The table of live connections, and how connections are opened and accepted.

    Args:
        registry: the worker table (where other workers listen; who is dead).
        cookie: the cluster cookie (:attr:`cookie` may be changed later).
        manager: opens this worker's connections to other workers.
        owner: the cluster, bound to every reader thread (see ``scope``).
        alloc: memory for large incoming frames.
        shield, unshield: keep interrupts off a thread while it writes a message.
        on_message, on_decode_error: where each incoming message goes.

    Set by the cluster once its other parts exist:

    * :attr:`announce`: announces the references a message carries (the reference counter);
    * :attr:`on_lost`: told ``(peer, reason)`` when the connection to a process is gone;
    * :attr:`on_join`: a worker's handler of the master's ``JoinPGRP``; False refuses it.
    """

    def __init__(
        self,
        registry: Registry,
        cookie: str,
        manager: ClusterManager,
        *,
        owner: Any,
        alloc: Callable[[int], Any],
        shield: Callable[[bool], Any],
        unshield: Callable[[Any], None],
        on_message: Callable[[Peer, Message], None],
        on_decode_error: Callable[[Peer, codec.DecodeError], None],
    ) -> None:
        self.registry = registry
        self.cookie = cookie
        self.manager = manager
        self.announce: Callable[[Peer, list[Any]], None] | None = None
        self.on_lost: Callable[[Peer, str], None] = _ignore_lost
        self.on_join: Callable[[Peer, JoinPGRP], bool] = _refuse_join
        self._owner = owner
        self._alloc = alloc
        self._shield = shield
        self._unshield = unshield
        self._on_message = on_message
        self._on_decode_error = on_decode_error
        self._lock = threading.Lock()
        self._peers: dict[int, Peer] = {}
        self._connect_locks: dict[int, threading.Lock] = {}

    # -- the table -------------------------------------------------------------------------

    def lookup(self, pid: int) -> Peer | None:
        """The open connection to ``pid``, or None (opens nothing)."""
        peer = self._peers.get(pid)
        return peer if peer is not None and not peer.closed else None

    def snapshot(self) -> dict[int, Peer]:
        with self._lock:
            return dict(self._peers)

    def install(self, pid: int, peer: Peer) -> Peer:
        """Enter ``peer`` as the connection to ``pid`` unless a live one is there; returns the
        one in the table."""
        with self._lock:
            existing = self._peers.get(pid)
            if existing is None or existing.closed:
                self._peers[pid] = peer
                return peer
            return existing

    def drop(self, pid: int, reason: str) -> None:
        """Forget the connection to ``pid`` and close it."""
        with self._lock:
            peer = self._peers.pop(pid, None)
        if peer is not None:
            peer.close(reason)

    def is_gone(self, pid: int) -> bool:
        """Whether ``pid`` (not this process) has left, or no connection to it is open."""
        if pid == self.registry.myid:
            return False
        return self.registry.is_dead(pid) or self.lookup(pid) is None

    def pid_of(self, obj: Any) -> int:
        """The process at the other end of ``obj`` (a Peer, socket or stream); -1 if none."""
        for pid, peer in self.snapshot().items():
            if obj is peer or obj in (
                peer.sock,
                peer.reader,
                peer.writer,
                getattr(peer.writer, "sock", None),
            ):
                return pid
        return -1

    # -- sending to a process --------------------------------------------------------------

    def get(self, pid: int) -> Peer:
        """The connection to ``pid``, opened now if this worker has not talked to it yet.

        Raises:
            ProcessExitedException: ``pid`` has exited.
            ValueError: there is no such process, or this topology gives no way to reach it.
        """
        peer = self._peers.get(pid)
        if peer is not None and not peer.closed:
            return peer
        reg = self.registry
        if reg.is_dead(pid):
            raise ProcessExitedException(pid, removed=reg.was_removed(pid))
        if reg.myid == 1:
            if reg.was_assigned(pid):
                raise ProcessExitedException(pid)
            raise ValueError(f"no process with id {pid}")
        info = reg.get(pid)
        if pid == 1 or info is None or info.host is None or info.port is None:
            if reg.topology != "all_to_all" and pid != 1:
                raise ValueError(
                    f"process {reg.myid} has no connection to process {pid} "
                    f"(topology {reg.topology!r})"
                )
            raise ValueError(f"no process with id {pid}")
        with self._lock:
            lock = self._connect_locks.setdefault(pid, threading.Lock())
        with lock:
            peer = self.lookup(pid)
            if peer is not None:
                return peer
            if reg.is_dead(pid):
                raise ProcessExitedException(pid, removed=reg.was_removed(pid))
            try:
                return self._dial(pid, WorkerConfig(host=info.host, port=info.port))
            except (OSError, EOFError) as e:
                raise ProcessExitedException(pid, f"cannot connect: {e}") from e

    def send_quietly(self, pid: int, msg: Message) -> None:
        """Send a notice to ``pid`` if it can be reached; a gone process is no error."""
        try:
            self.get(pid).send(msg)
        except (ProcessExitedException, ValueError):
            pass

    def _dial(self, pid: int, config: WorkerConfig) -> Peer:
        """Worker to worker: connect, authenticate, identify ourselves, start reading."""
        instream, outstream = self.manager.connect(pid, config)
        peer = self.open(pid, instream, outstream)
        peer.send(Identify(self.registry.myid))
        kept = self.install(pid, peer)
        if kept is not peer:
            # it connected to us meanwhile: keep one connection per pair, so that what this
            # process sends to it stays in order
            peer.close("a connection already exists")
            return kept
        self.start(peer)
        return peer

    # -- opening ---------------------------------------------------------------------------

    def open(self, pid: int, instream: Any, outstream: Any) -> Peer:
        """The connecting side: authenticate over the two streams; a Peer, not yet reading.

        Raises:
            AuthenticationError: the other side does not know the cookie.
            EOFError, OSError: the connection broke or timed out.
        """
        read_exact, write = transport.handshake_io(instream, outstream)
        sock = getattr(outstream, "sock", None)
        if sock is not None:
            sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            client_handshake(read_exact, write, self.cookie)
        except BaseException:
            try:
                transport.as_frame_writer(outstream).close()
            except Exception:
                pass
            raise
        if sock is not None:
            sock.settimeout(None)
        return self._make(instream, outstream, pid, sock)

    def _make(self, reader: Any, writer: Any, pid: int | None, sock: Any) -> Peer:
        peer = Peer(
            reader,
            writer,
            pid,
            announce=self._announce,
            sock=sock,
            alloc=self._alloc,
            owner=self._owner,
        )
        peer.shield = self._shield
        peer.unshield = self._unshield
        return peer

    def _announce(self, peer: Peer, refs: list[Any]) -> None:
        if self.announce is not None:
            self.announce(peer, refs)

    def start(self, peer: Peer, *, thread: bool = True) -> None:
        """Start reading ``peer`` (on a new thread, or on this one when ``thread`` is False)."""
        peer.start(self._on_message, self._on_decode_error, self._closed, thread=thread)

    def _closed(self, peer: Peer, reason: str) -> None:
        pid = peer.pid
        if pid is None:
            return
        with self._lock:
            current = self._peers.get(pid)
            if current is peer:
                del self._peers[pid]
            elif current is not None:
                return  # a second connection to a live process closed
        self.on_lost(peer, reason)

    # -- accepting (workers) ---------------------------------------------------------------

    def listen(self, host: str, port: int) -> tuple[str, int]:
        """Accept connections on ``host:port`` (and its Unix-socket twin); the address that
        others should dial (a wildcard host becomes this host's address)."""
        sock = sockets.listen_tcp(host, port)
        if host in ("0.0.0.0", "", "::"):
            host = sockets.primary_ip()
        address = (host, int(sock.getsockname()[1]))
        self._accept_on(sock, "pydist-accept")
        local = sockets.listen_local(host, address[1])
        if local is not None:
            self._accept_on(local, "pydist-accept-local")
        return address

    def _accept_on(self, sock: socket.socket, name: str) -> None:
        threading.Thread(target=self._accept_loop, args=(sock,), name=name, daemon=True).start()

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, addr = sock.accept()
            except OSError as e:
                log.error("accept failed: %s", e)
                time.sleep(0.1)
                continue
            threading.Thread(
                target=self._serve_incoming, args=(conn, addr), name="pydist-incoming", daemon=True
            ).start()

    def _serve_incoming(self, conn: socket.socket, addr: Any) -> None:
        try:
            remote = bool(addr) and not isinstance(addr, str) and not sockets.is_loopback(addr[0])
            sockets.set_socket_options(conn, remote=remote)
            conn.settimeout(HANDSHAKE_TIMEOUT)
            reader, writer = sockets.socket_streams(conn)
            first = authenticate_incoming(reader, writer, self.cookie)
            conn.settimeout(None)
        except (AuthenticationError, ProtocolError, OSError, EOFError) as e:
            log.warning("refused a connection from %s: %s", addr, e)
            try:
                conn.close()
            except OSError:
                pass
            return
        self.serve(reader, writer, first, sock=conn)

    def serve(self, reader: Any, writer: Any, first: Message, sock: Any = None) -> None:
        """Serve, on this thread, an authenticated incoming connection that opened with
        ``first``; returns when it closes."""
        peer = self._make(reader, writer, None, sock)
        if isinstance(first, JoinPGRP):
            if not self.on_join(peer, first):
                peer.close("refused")
                return
        elif isinstance(first, Identify):
            peer.pid = first.pid
            self.install(first.pid, peer)
        else:
            log.warning("refused a connection that opened with %s", type(first).__name__)
            peer.close("refused")
            return
        self.start(peer, thread=False)
