"""Sockets: listening, connecting, socket options, and the Unix-socket twin of a local listener.

A worker listens on TCP and, on Linux, also on an abstract Unix socket named after that TCP
address (``listen_local``); a process connecting to a loopback address tries the twin first
(``connect``) and falls back to TCP. A loopback Unix-socket round trip costs about half a TCP
one here, and bulk data moves faster. Every TCP socket gets ``TCP_NODELAY``; one that may cross
a network also gets keepalive and ``TCP_USER_TIMEOUT`` (``set_socket_options``).
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from .transport import SocketReader, SocketWriter

__all__ = [
    "connect",
    "connect_local",
    "connect_tcp",
    "is_loopback",
    "listen_local",
    "listen_tcp",
    "primary_ip",
    "set_socket_options",
    "socket_streams",
]


def set_socket_options(sock: socket.socket, *, remote: bool = False) -> None:
    """TCP_NODELAY always; keepalive and TCP_USER_TIMEOUT for links that may be cut."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if remote:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, name):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 15000)


def socket_streams(sock: socket.socket) -> tuple[Any, SocketWriter]:
    """The (incoming, outgoing) pair for a connected socket."""
    return SocketReader(sock), SocketWriter(sock)


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


def _local_name(host: str, port: int) -> str:
    # an abstract Unix socket name (Linux): no file to clean up, gone with its listener
    return f"\0pydistributed-{host}-{port}"


def listen_local(host: str, port: int) -> socket.socket | None:
    """A Unix-socket twin of the TCP listener ``host:port`` (Linux), or None.

    Processes on the same host reach a worker through it: a local round trip costs about half
    of a loopback TCP one, and bulk data moves faster. The cookie handshake is the same.
    """
    if not sys.platform.startswith("linux") or not hasattr(socket, "AF_UNIX"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(_local_name(host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        return None
    return sock


def connect_local(host: str, port: int, timeout: float) -> socket.socket | None:
    """Connect to the Unix-socket twin of a loopback ``host:port``; None if there is none."""
    if not is_loopback(host) or not sys.platform.startswith("linux"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(_local_name(host, port))
    except OSError:
        sock.close()
        return None
    return sock


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """Connect to a worker's listener: through its Unix socket when local, else TCP."""
    sock = connect_local(host, port, timeout)
    if sock is not None:
        return sock
    return connect_tcp(host, port, timeout)


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
