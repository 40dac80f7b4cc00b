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

import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import codec, sockets, tls, transport
from .errors import AuthenticationError, ProcessExitedException, ProtocolError
from .handshake import (
    Session,
    VersionMismatchError,
    bulk_mac,
    client_handshake,
    identity_proof,
    server_handshake,
    stream_io,
)
from .listener import Listener
from .managers.base import ClusterManager, overrides
from .messages import Identify, JoinPGRP, Message
from .peer import Peer
from .peerlinks import PeerLinks
from .registry import Registry

if TYPE_CHECKING:
    from .managers.workerconfig import WorkerConfig

__all__ = ["HANDSHAKE_TIMEOUT", "Connections", "authenticate_incoming", "read_first"]

log = logging.getLogger("pydistributed")

HANDSHAKE_TIMEOUT = 10.0
PAIR_KEY_WAIT = 10.0  # how long a worker waits to hear of a new worker that connects to it
_FIRST_MESSAGE_LIMIT = 1 << 20  # JoinPGRP or Identify: small, and read before trusting much


Macs = tuple[transport.FrameMac, transport.FrameMac]


def session_macs(session: Session) -> Macs:
    """The (outgoing, incoming) frame authentication of a handshake's session."""
    bulk = bulk_mac(session)
    return transport.FrameMac(session.key_out, bulk), transport.FrameMac(session.key_in, bulk)


def read_first(reader: Any, mac_in: transport.FrameMac | None) -> Message:
    """The first message of an authenticated incoming connection (small: bounded)."""
    return codec.decode(transport.read_message(reader, _FIRST_MESSAGE_LIMIT, None, mac_in))


def authenticate_incoming(reader: Any, writer: Any, cookie: str) -> tuple[Message, Session, Macs]:
    """The accepting side over two blocking streams (a custom transport): run the server
    handshake, then read the first message. Returns it, the handshake's session and the
    connection's frame MACs (the incoming one has counted the first message).

    Raises:
        AuthenticationError: the peer does not know the cookie, or speaks another version.
        ProtocolError: the first message is garbled, too large or not authentic.
        EOFError, OSError: the connection broke or timed out.
    """
    read_exact, write = stream_io(reader, writer)
    session = server_handshake(read_exact, write, cookie)
    macs = session_macs(session)
    return read_first(reader, macs[1]), session, macs


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
        self._installed = threading.Condition(self._lock)
        self._peers: dict[int, Peer] = {}
        self.links = PeerLinks(self, dial_back_timeout=2 * HANDSHAKE_TIMEOUT)
        self.listener: Listener | None = None

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
                self._installed.notify_all()
                return peer
            return existing

    def wait_installed(self, pid: int, timeout: float) -> Peer | None:
        """The open connection to ``pid``, waiting up to ``timeout`` s for one to be entered."""
        with self._installed:
            self._installed.wait_for(lambda: self.lookup(pid) is not None, timeout)
        return self.lookup(pid)

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
        if peer is not None and reg.myid == 1:
            # the master: a closed link is a worker gone. The thread that closed it may not
            # have deregistered it yet: dead now, or a pool would hand it out again (a retry
            # loop can spin through its retries before that thread runs again)
            reg.mark_lost(pid)
        if reg.is_dead(pid):
            raise ProcessExitedException(pid, removed=reg.was_removed(pid))
        if reg.myid == 1:
            if reg.was_assigned(pid):
                raise ProcessExitedException(pid)
            raise ValueError(f"no process with id {pid}")
        return self.links.open(pid)

    def send_quietly(self, pid: int, msg: Message) -> None:
        """Send a notice to ``pid`` if it can be reached; a gone process is no error."""
        try:
            peer = self.get(pid)
        except (ProcessExitedException, ValueError):
            return
        peer.send_quietly(msg)

    # -- opening ---------------------------------------------------------------------------

    def connect(self, pid: int, config: WorkerConfig, manager: ClusterManager) -> Peer:
        """Connect to worker ``pid`` as ``config`` says; a Peer, authenticated, not reading.

        On this host, when ``manager`` leaves ``connect`` to the default, the connection goes
        through the worker's Unix-socket twin, and only to the expected process
        (``config.ospid``, when known); elsewhere, or without a twin, through
        ``manager.connect`` (TCP by default), in TLS when ``PYDIST_TLS`` wants it for that
        host (``tls.py``; a manager's own streams that are not a socket get no TLS).

        Raises:
            AuthenticationError: the other side does not know the cookie, or is not the
                expected process; VersionMismatchError (also a LaunchError): it runs other
                versions (Python, pydistributed, cloudpickle), named with the worker's address.
            EOFError, OSError: the connection failed or timed out.
        """
        try:
            return self._connect(pid, config, manager)
        except VersionMismatchError as e:
            where = config.connect_at or (config.host, config.port)
            raise VersionMismatchError(
                f"worker {pid} at {where[0]}:{where[1]} refused the connection: {e}",
                e.output,
                config.ospid,
            ) from None

    def _connect(self, pid: int, config: WorkerConfig, manager: ClusterManager) -> Peer:
        host, port = config.host, config.port
        if config.connect_at is not None:
            host, port = config.connect_at
        if host is not None and port is not None and not overrides(manager, "connect"):
            sock = sockets.connect_local(
                self.cookie, host, int(port), HANDSHAKE_TIMEOUT, expect_pid=config.ospid
            )
            if sock is not None:
                reader, writer = sockets.socket_streams(sock)
                return self.open(pid, reader, writer, secure=True)
        instream, outstream = manager.connect(pid, config)
        raw = getattr(outstream, "sock", None)
        if raw is not None and host is not None and tls.wanted(str(host)):
            raw.settimeout(HANDSHAKE_TIMEOUT)
            import ssl  # only for a link in TLS

            try:
                secured = tls.client_context().wrap_socket(raw)
            except ssl.SSLError as e:
                raw.close()
                raise AuthenticationError(f"TLS with worker {pid} failed: {e}") from e
            binding = tls.binding(secured.getpeercert(binary_form=True) or b"")
            reader, writer = sockets.socket_streams(secured)
            return self.open(pid, reader, writer, secure=True, binding=binding)
        return self.open(pid, instream, outstream)

    def open(
        self,
        pid: int,
        instream: Any,
        outstream: Any,
        *,
        secure: bool = False,
        binding: bytes = b"",
    ) -> Peer:
        """The connecting side: authenticate over the two streams; a Peer, not yet reading.

        ``secure``: the link authenticates its frames itself (a checked local socket, TLS), so
        they need no MAC; ``binding``: the channel binding of TLS.

        Raises:
            AuthenticationError: the other side does not know the cookie.
            EOFError, OSError: the connection broke or timed out.
        """
        sock = getattr(outstream, "sock", None)
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        read_exact, write = stream_io(instream, outstream, sock, deadline)
        try:
            session = client_handshake(read_exact, write, self.cookie, binding, not secure)
        except BaseException:
            try:
                transport.as_frame_writer(outstream).close()
            except Exception:
                pass
            raise
        if sock is not None:
            sock.settimeout(None)
        macs = None if secure else session_macs(session)
        return self._make(instream, outstream, pid, sock, session, macs)

    def adopt(
        self, pid: int | None, reader: Any, writer: Any, session: Session, *, secure: bool = False
    ) -> Peer:
        """A Peer over a connection that has passed its handshake already, not yet reading: the
        link an elastic worker dialed (``managers/elastic.py``, ``joinwire.py``), on either
        side. ``secure``: TLS carries it (its frames need no MAC)."""
        sock = getattr(writer, "sock", None)
        return self._make(
            reader, writer, pid, sock, session, None if secure else session_macs(session)
        )

    def _make(
        self,
        reader: Any,
        writer: Any,
        pid: int | None,
        sock: Any,
        session: Session,
        macs: Macs | None,
    ) -> Peer:
        """A Peer over an authenticated connection; ``macs``: its frame authentication (None on
        a checked local socket)."""
        peer = Peer(
            reader,
            writer,
            pid,
            announce=self._announce,
            sock=sock,
            alloc=self._alloc,
            owner=self._owner,
            macs=macs,
        )
        peer.shield = self._shield
        peer.unshield = self._unshield
        peer.transcript = session.transcript
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
        """Accept connections on ``host:port`` and its Unix-socket twin; the address that
        others should dial (a wildcard host becomes this host's address).

        Raises:
            OSError: a listener cannot be made (the port, or the twin's name, is taken).
        """
        sock = sockets.listen_tcp(host, port)
        if host in ("0.0.0.0", "", "::"):
            host = sockets.primary_ip()
        address = (host, int(sock.getsockname()[1]))
        try:
            local = sockets.listen_local(self.cookie, host, address[1])
        except OSError:
            sock.close()
            raise
        if self.listener is None:
            self.listener = Listener(lambda: self.cookie, self._accepted)
        self.listener.add(sock, local=False)
        if local is not None:
            self.listener.add(local, local=True)
        return address

    def _accepted(self, sock: socket.socket, session: Session, secure: bool, addr: Any) -> None:
        """The listener's hand-off of an authenticated connection: serve it on a thread."""
        threading.Thread(
            target=self._serve_accepted,
            args=(sock, session, secure, addr),
            name="pydist-incoming",
            daemon=True,
        ).start()

    def _serve_accepted(
        self, sock: socket.socket, session: Session, secure: bool, addr: Any
    ) -> None:
        reader, writer = sockets.socket_streams(sock)
        peer = self._make(
            reader, writer, None, sock, session, None if secure else session_macs(session)
        )
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            first = read_first(reader, peer.mac_in)
            sock.settimeout(None)
        except (ProtocolError, OSError, EOFError) as e:
            log.warning("dropped a connection from %s: %s", addr or "the local socket", e)
            peer.close(f"dropped: {e}")
            return
        self.serve(peer, first)

    def serve_streams(self, reader: Any, writer: Any) -> None:
        """Authenticate and serve, on this thread, a connection of a custom transport that the
        master opened (``process_messages``); returns when it closes."""
        first, session, macs = authenticate_incoming(reader, writer, self.cookie)
        self.serve(self._make(reader, writer, None, None, session, macs), first)

    def serve(self, peer: Peer, first: Message) -> None:
        """Serve, on this thread, an authenticated incoming connection that opened with
        ``first``; returns when it closes."""
        if isinstance(first, JoinPGRP):
            if not self.on_join(peer, first):
                peer.close("refused")
                return
        elif isinstance(first, Identify):
            key = self.registry.pair_key(first.pid, timeout=PAIR_KEY_WAIT)
            if key is None or not hmac.compare_digest(
                first.proof, identity_proof(key, peer.transcript)
            ):
                log.warning(
                    "refused a connection that claimed to be process %s but could not prove it",
                    first.pid,
                )
                peer.close("refused: no proof of identity")
                return
            peer.pid = first.pid
            self.install(first.pid, peer)
        else:
            log.warning("refused a connection that opened with %s", type(first).__name__)
            peer.close("refused")
            return
        self.start(peer, thread=False)
