"""Sockets: listening, connecting, socket options, and the Unix-socket twin of a local listener.

A worker listens on TCP and, on Linux, also on an abstract Unix socket whose name only holders
of the cookie can compute (``listen_local``); a process connecting to a loopback address tries
the twin first (``connect_local``) and falls back to TCP when there is none. Each side of a
local connection checks the other's credentials with ``SO_PEERCRED`` (same user; the expected
process when it is known). A loopback Unix-socket round trip costs about half a TCP
one here, and bulk data moves faster. Every TCP socket gets ``TCP_NODELAY``; one that may cross
a network also gets keepalive (``set_socket_options``), and ``link_silence`` tells how long its
data in flight has waited for an acknowledgement (the master's heartbeat ends a cut link).
"""

from __future__ import annotations

import hmac
import os
import socket
import struct
import sys
from typing import Any

from . import shm
from .errors import AuthenticationError
from .transport import SocketReader, SocketWriter

__all__ = [
    "PeerCheckError",
    "check_peer",
    "connect_local",
    "connect_tcp",
    "is_loopback",
    "kept_alive",
    "link_silence",
    "listen_local",
    "listen_tcp",
    "local_name",
    "peer_credentials",
    "primary_ip",
    "set_socket_options",
    "socket_streams",
]

_CREDS = struct.Struct("3i")


# TCP keepalive on links to other hosts: the first probe after KEEPIDLE s without traffic,
# then one every KEEPINTVL s; KEEPCNT unanswered probes end the connection (ETIMEDOUT): an idle
# link that was cut is noticed in about 5 s, by the kernel, on both ends. The kernel answers
# probes however busy the process is (a call that holds the GIL), so a live peer is never cut.
KEEPALIVE = {"TCP_KEEPIDLE": 2, "TCP_KEEPINTVL": 1, "TCP_KEEPCNT": 3}
_TCP_INFO = struct.Struct("8B24I")  # the head of Linux's struct tcp_info


def set_socket_options(sock: socket.socket, *, remote: bool = False) -> None:
    """TCP_NODELAY always; keepalive (:data:`KEEPALIVE`) for links that may be cut (``remote``).

    No ``TCP_USER_TIMEOUT``: it would also end a link to a live peer whose receive window
    stays closed (a worker in a long call that holds the GIL, sent more than its buffers hold);
    a cut link with data in flight is noticed by :func:`link_silence` instead.
    """
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if remote:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in KEEPALIVE.items():
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def kept_alive(sock: Any) -> bool:
    """Whether ``sock`` is a TCP socket with keepalive (a link that may cross a network)."""
    try:
        return bool(
            sock is not None
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        )
    except (OSError, ValueError, AttributeError):
        return False


def link_silence(sock: Any) -> float | None:
    """How long (s) data sent on a kept-alive TCP link has waited for the peer's kernel to
    acknowledge anything; None when nothing waits (no unacknowledged data, no window probe),
    the socket has no keepalive (a loopback link), or the platform cannot tell (not Linux).

    The peer's kernel acknowledges data and probes however busy the peer process is, so a
    growing silence while data waits means the link, or the peer's host, is gone: keepalive
    alone does not notice it (no probes while data is unacknowledged), and the kernel's own
    retransmissions give up only after ~15 minutes (``tcp_retries2``).
    """
    info = _tcp_info(sock, keepalive=True)
    if info is None:
        return None
    probes, backoff = info[3], info[4]
    unacked = info[8 + 4]  # tcpi_unacked
    last_ack_recv_ms = info[8 + 12]  # tcpi_last_ack_recv
    if not (unacked or probes or backoff):
        return None
    return float(last_ack_recv_ms) / 1000.0


def data_silence(sock: Any) -> float | None:
    """How long (s) since data last arrived on TCP socket ``sock``, by its kernel's count (so
    however busy this process is); None when it is not a TCP socket or the platform cannot
    tell (not Linux)."""
    info = _tcp_info(sock)
    return None if info is None else float(info[8 + 11]) / 1000.0  # tcpi_last_data_recv


def _tcp_info(sock: Any, keepalive: bool = False) -> tuple[int, ...] | None:
    """The kernel's ``struct tcp_info`` of TCP socket ``sock`` (the fields ``_TCP_INFO``
    reads), or None: not a TCP socket, no keepalive on it when ``keepalive`` is asked, or a
    platform that cannot tell (not Linux)."""
    if not hasattr(socket, "TCP_INFO") or sock is None:
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        if keepalive and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
            return None
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except (OSError, ValueError, AttributeError):
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    return tuple(_TCP_INFO.unpack(raw))


def socket_streams(sock: socket.socket) -> tuple[Any, SocketWriter]:
    """The (incoming, outgoing) pair for a connected socket.

    On a Unix socket (a local link, its peer checked with ``SO_PEERCRED``), large out-of-band
    buffers go as shared memory (``shm.py``): the reader always takes descriptors, the writer
    sends them unless ``PYDIST_SHM=0``.
    """
    local = getattr(socket, "AF_UNIX", None) is not None and sock.family == socket.AF_UNIX
    fds = local and shm.supported()
    return SocketReader(sock, fds=fds), SocketWriter(sock, shm=fds)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface ("" counts: the local host)."""
    return host in ("localhost", "::1", "") or host.startswith("127.")


def primary_ip() -> str:
    """This host's address as others would see it (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 1))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def local_name(secret: str, host: str, port: int) -> str:
    """The abstract Unix-socket name of the twin of ``host:port`` (Linux).

    Derived from the cluster cookie, so that nobody without the cookie can know it, and so
    cannot bind it first to stand in for the worker; an abstract name needs no file and goes
    with its listener.
    """
    digest = hmac.digest(secret.encode("ascii"), f"local socket {host}:{port}".encode(), "sha256")
    return "\0pydistributed-" + digest[:16].hex()


def _local_supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "AF_UNIX")


class PeerCheckError(AuthenticationError):
    """The process at the other end of a local socket is not the one expected."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket (``SO_PEERCRED``)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDS.size)
    pid, uid, gid = _CREDS.unpack(raw)
    return pid, uid, gid


def check_peer(sock: socket.socket, expect_pid: int | None = None) -> None:
    """Accept the other end of a Unix socket only if it runs as this process's user (and is
    process ``expect_pid`` when given).

    Raises:
        PeerCheckError: it is someone else.
    """
    pid, uid, _ = peer_credentials(sock)
    if uid != os.getuid():
        raise PeerCheckError(
            f"the process at the other end of the local socket (os pid {pid}) runs as uid "
            f"{uid}, not {os.getuid()}; refused"
        )
    if expect_pid is not None and pid != expect_pid:
        raise PeerCheckError(
            f"the process at the other end of the local socket is os pid {pid}, not the "
            f"worker's {expect_pid}; refused"
        )


def listen_local(secret: str, host: str, port: int) -> socket.socket | None:
    """A Unix-socket twin of the TCP listener ``host:port`` (Linux; None elsewhere).

    Processes on the same host reach a worker through it: a local round trip costs about half
    of a loopback TCP one, and bulk data moves faster. The cookie handshake is the same, and
    each side checks the other's credentials (:func:`check_peer`).

    Raises:
        OSError: the name is taken (by a process that knows the cookie) or cannot be bound:
            a worker refuses to start rather than let another process answer for it.
    """
    if not _local_supported():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(local_name(secret, host, port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on the local socket of {host}:{port}: {e}") from e
    return sock


def connect_local(
    secret: str, host: str, port: int, timeout: float, expect_pid: int | None = None
) -> socket.socket | None:
    """Connect to the Unix-socket twin of a loopback ``host:port``; None if there is none
    (another host, another platform, a listener without a twin).

    Raises:
        PeerCheckError: a process is listening there, but not the expected one.
    """
    if not is_loopback(host) or not _local_supported():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(local_name(secret, host, port))
    except OSError:
        sock.close()
        return None
    try:
        check_peer(sock, expect_pid)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_tcp(host: str, port: int, timeout: float) -> socket.socket:
    """Open a TCP connection with our socket options; ``timeout`` bounds the connect."""
    sock = socket.create_connection((host, port), timeout=timeout)
    set_socket_options(sock, remote=not is_loopback(host))
    return sock


def listen_tcp(host: str, port: int = 0, backlog: int = 128) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: the OS picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock
