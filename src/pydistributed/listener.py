"""A worker's listeners, and the gate every incoming connection passes before it is trusted.

One thread serves every listening socket and every connection that has not yet proved it knows
the cookie, with a selector; nothing of an unauthenticated connection runs on a thread of its
own::

    selector thread                                        after the handshake
    ---------------                                        -------------------
    accept (TCP, or the local twin: check_peer first)
    TCP: peek at the first byte: a TLS record starts TLS (``tls.py``), non-blocking
    run handshake.server_steps, non-blocking:
      Read(n)  -> read exactly n bytes when readable
      Write(b) -> send (the rest when writable)
    proof wrong, garbage, EOF     -> close
    past its deadline (DEADLINE s after accept) -> close
    more than MAX_PENDING waiting -> close the oldest
    handshake done ---------------------------------->    on_ready(sock, session, secure)
                                                           (a thread of the caller's)

So a peer that sends one byte every few seconds is dropped after ``DEADLINE`` seconds whatever
it sends, and thousands of idle connections cost at most ``MAX_PENDING`` descriptors: the
oldest are closed as new ones arrive, and an honest client, which finishes its handshake in
milliseconds, gets through. The loop survives any error (a failed ``accept``: too many open
files; a failed hand-off: no thread could start): it logs it, backs off a little and goes on.
"""

from __future__ import annotations

import logging
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import sockets, tls
from .errors import AuthenticationError
from .handshake import Read, Session, Steps, VersionMismatchError, Write, server_steps
from .timeouts import seconds

__all__ = ["DEADLINE", "MAX_PENDING", "Listener"]

log = logging.getLogger("pydistributed")

DEADLINE = 5.0  # seconds from accept to the end of the handshake
MAX_PENDING = 128  # unauthenticated connections at once; beyond, the oldest is closed
_BACKOFF = 0.05  # after an unexpected error of the loop
_ACCEPTS_PER_WAKE = 64


def _would_block() -> tuple[type[BaseException], ...]:
    """The errors of a non-blocking send or receive that has to wait: evaluated only when one
    is raised, so that a process without TLS never imports ``ssl`` for them."""
    ssl = sys.modules.get("ssl")
    if ssl is None:
        return (BlockingIOError,)
    return (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class _Pending:
    """One connection in its handshake: first its first byte (TCP), then TLS (if it starts
    it), then the cookie handshake."""

    __slots__ = (
        "addr",
        "deadline",
        "fd",
        "inbuf",
        "local",
        "need",
        "outbuf",
        "phase",
        "session",
        "sock",
        "steps",
        "tls",
    )

    def __init__(self, sock: socket.socket, addr: Any, local: bool) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.addr = addr
        self.local = local
        self.phase = "cookie" if local else "first"
        self.tls = False
        self.steps: Steps | None = None
        self.deadline = time.monotonic() + DEADLINE
        self.need = 0
        self.inbuf = b""
        self.outbuf = b""
        self.session: Session | None = None


class Listener:
    """The selector thread of a worker's listeners (see the module's docstring).

    Args:
        cookie: gives the cluster cookie (asked at each handshake: it may be changed).
        on_ready: takes each authenticated connection: ``(sock, session, secure, addr)``, the
            socket blocking again; it must not block (start a thread). ``secure`` says the
            link authenticates its frames itself: the Unix-socket twin (whose peer the kernel
            has checked) or TLS.
    """

    def __init__(
        self,
        cookie: Callable[[], str],
        on_ready: Callable[[socket.socket, Session, bool, Any], None],
    ) -> None:
        self._cookie = cookie
        self._on_ready = on_ready
        self._sel = selectors.DefaultSelector()
        self._pending: dict[int, _Pending] = {}
        self._listening: dict[int, tuple[socket.socket, bool]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.refused = 0  # connections closed before they were authenticated
        self._quiet_until = 0.0  # refusals are logged at most once a second, with a count
        self._unlogged = 0
        self._closed = False
        # told why, when a client that proved the cookie was refused for its versions
        self.on_version_mismatch: Callable[[str], None] | None = None

    def add(self, sock: socket.socket, *, local: bool) -> None:
        """Accept connections on the listening socket ``sock`` (``local``: the Unix twin)."""
        sock.setblocking(False)
        with self._lock:
            self._listening[sock.fileno()] = (sock, local)
            self._sel.register(sock, selectors.EVENT_READ, None)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pydist-listener", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Stop listening: close the listening sockets and the connections in their handshake
        (those handed over already are the caller's). Returns once done, within about a
        second (the loop wakes at least once a second)."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        elif thread is None:
            self._shut()

    def _shut(self) -> None:
        for p in list(self._pending.values()):
            self._pending.pop(p.fd, None)
            p.sock.close()
        for sock, _ in self._listening.values():
            sock.close()
        self._listening.clear()
        self._sel.close()

    def pending(self) -> int:
        """How many connections are in their handshake now."""
        return len(self._pending)

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed:
            try:
                self._turn()
            except Exception:
                log.exception("the listener loop failed; going on")
                time.sleep(_BACKOFF)
        self._shut()

    def _turn(self) -> None:
        now = time.monotonic()
        timeout = 1.0
        if self._pending:
            first = min(p.deadline for p in self._pending.values())
            timeout = max(0.0, min(timeout, first - now))
        for key, events in self._sel.select(timeout):
            fd = key.fd
            if fd in self._listening:
                self._accept(*self._listening[fd])
                continue
            p = self._pending.get(fd)
            if p is None:
                continue
            try:
                if p.phase == "first":
                    self._first(p)
                elif p.phase == "tls":
                    self._tls(p)
                else:
                    if events & selectors.EVENT_WRITE:
                        self._flush(p)
                    if events & selectors.EVENT_READ and fd in self._pending:
                        self._receive(p)
            except (AuthenticationError, OSError, EOFError) as e:
                self._drop(p, str(e))
                if isinstance(e, VersionMismatchError) and self.on_version_mismatch is not None:
                    self.on_version_mismatch(str(e))
        now = time.monotonic()
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            self._drop(p, f"no handshake within {seconds(DEADLINE)} s")

    def _accept(self, listening: socket.socket, local: bool) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                conn, addr = listening.accept()
            except BlockingIOError:
                return
            except OSError as e:
                # EMFILE/ENFILE (out of descriptors), ENOBUFS...: make room and go on
                self._note(f"accept failed: {e}")
                self._evict_oldest("out of descriptors")
                time.sleep(_BACKOFF)
                return
            try:
                self._start(conn, addr, local)
            except Exception as e:
                self._refuse(addr, str(e))
                conn.close()

    def _start(self, conn: socket.socket, addr: Any, local: bool) -> None:
        if local:
            sockets.check_peer(conn)  # a local peer must run as this user
        else:
            remote = bool(addr) and not sockets.is_loopback(str(addr[0]))
            sockets.set_socket_options(conn, remote=remote)
        conn.setblocking(False)
        if len(self._pending) >= MAX_PENDING:
            self._evict_oldest("too many connections in their handshake")
        p = _Pending(conn, addr, local)
        self._pending[p.fd] = p
        self._sel.register(conn, selectors.EVENT_READ, None)
        if local:
            self._begin(p, b"")

    def _begin(self, p: _Pending, binding: bytes) -> None:
        """Start the cookie handshake of ``p`` (over TLS, with its channel ``binding``)."""
        p.phase = "cookie"
        p.steps = server_steps(self._cookie(), binding, tags=not (p.local or p.tls))
        self._advance(p, None)

    def _first(self, p: _Pending) -> None:
        """A TCP connection's first byte: TLS, or the cookie handshake in the clear."""
        first = p.sock.recv(1, socket.MSG_PEEK)
        if not first:
            raise EOFError("closed before the handshake")
        if first[0] == tls.TLS_RECORD:
            ctx, _ = tls.server_context()
            p.sock = ctx.wrap_socket(p.sock, server_side=True, do_handshake_on_connect=False)
            p.phase, p.tls = "tls", True
            self._tls(p)
            return
        host = str(p.addr[0]) if p.addr else ""
        if tls.wanted(host):
            raise AuthenticationError(
                f"a plain connection where TLS is wanted (PYDIST_TLS={tls.mode()})"
            )
        self._begin(p, b"")

    def _tls(self, p: _Pending) -> None:
        """One step of the TLS handshake, then the cookie handshake bound to its certificate."""
        import ssl  # imported already: this connection is in TLS

        sock: Any = p.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._sel.modify(sock, selectors.EVENT_READ, None)
            return
        except ssl.SSLWantWriteError:
            self._sel.modify(sock, selectors.EVENT_WRITE, None)
            return
        except ssl.SSLError as e:
            raise AuthenticationError(f"TLS failed: {e}") from e
        _, cert = tls.server_context()
        self._begin(p, tls.binding(cert))
        if p.fd in self._pending and p.session is None:
            # the client's first bytes may have come with its last handshake record: they are
            # in the TLS buffer now, where select cannot see them
            self._receive(p)

    # -- one connection's handshake -----------------------------------------------------------

    def _advance(self, p: _Pending, reply: bytes | None) -> None:
        """Run the steps until they wait for bytes; hand the connection on once done."""
        while True:
            assert p.steps is not None
            try:
                step = p.steps.send(reply)
            except StopIteration as done:
                p.session = done.value
                break
            except AuthenticationError:
                self._flush(p, final=True)  # a DENY, if the steps sent one
                raise
            reply = None
            if isinstance(step, Write):
                p.outbuf += step.data
            elif isinstance(step, Read):
                p.need = step.n
                break
        self._flush(p)

    def _receive(self, p: _Pending) -> None:
        # reads until nothing is there (TLS may hold decrypted bytes that select cannot see)
        while p.session is None and p.fd in self._pending:
            try:
                data = p.sock.recv(p.need - len(p.inbuf))
            except _would_block():
                return
            if not data:
                raise EOFError("closed during the handshake")
            p.inbuf += data
            if len(p.inbuf) == p.need:
                reply, p.inbuf = p.inbuf, b""
                self._advance(p, reply)

    def _flush(self, p: _Pending, final: bool = False) -> None:
        if p.outbuf:
            try:
                sent = p.sock.send(p.outbuf)
            except _would_block():
                sent = 0
            p.outbuf = p.outbuf[sent:]
        if final:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if p.outbuf else 0)
        if p.session is not None and not p.outbuf:
            self._hand_over(p)
            return
        self._sel.modify(p.sock, events, None)

    def _hand_over(self, p: _Pending) -> None:
        del self._pending[p.fd]
        self._sel.unregister(p.sock)
        p.sock.setblocking(True)
        assert p.session is not None
        try:
            self._on_ready(p.sock, p.session, p.local or p.tls, p.addr)
        except Exception:
            log.exception(
                "could not take an authenticated connection from %s", p.addr or "the local socket"
            )
            p.sock.close()

    def _drop(self, p: _Pending, reason: str) -> None:
        if self._pending.pop(p.fd, None) is None:
            return
        self._refuse(p.addr, reason)
        try:
            self._sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()

    def _refuse(self, addr: Any, reason: str) -> None:
        self.refused += 1
        self._note(f"refused a connection from {addr or 'the local socket'}: {reason}")

    def _note(self, what: str) -> None:
        """Log a warning, at most one a second (an attack must not flood the log)."""
        now = time.monotonic()
        if now < self._quiet_until:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last warning)" if self._unlogged else ""
        log.warning("%s%s", what, more)
        self._quiet_until = now + 1.0
        self._unlogged = 0

    def _evict_oldest(self, reason: str) -> None:
        if self._pending:
            self._drop(next(iter(self._pending.values())), reason)
