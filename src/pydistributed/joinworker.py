"""A worker that joins a running master by itself: ``python -m pydistributed.worker --join
HOST:PORT`` (the master runs an ``ElasticManager`` there).

It dials the master and passes the handshake (``joinwire.py``), listens for the other workers
(on the address its link to the master leaves from, unless ``--bind-to`` says otherwise), tells
the master that address, and serves the link it opened as its master connection: the master
admits it as the next worker (``JoinPGRP``), and from then on it is a worker like any other
(see ``serve.py``), which exits when that connection closes.

Failures end the process with a message on stderr and exit code 1: the master unreachable
within ``PYDIST_WORKER_TIMEOUT`` seconds, a wrong cookie, other versions, or a master that
closes the link (or never admits it within ``PYDIST_WORKER_TIMEOUT``) before it joined.
"""

from __future__ import annotations

import sys
import threading
from typing import NoReturn

from . import scope
from .cluster import Cluster, set_current_cluster
from .connections import read_first
from .errors import AuthenticationError, ProtocolError
from .handshake import check_cookie
from .joinwire import JoinError, Link, dial_master, send_address
from .messages import JoinPGRP
from .timeouts import worker_timeout

__all__ = ["JoinError", "join_master", "parse_address"]

_PROG = "pydistributed worker"


def parse_address(text: str, what: str = "--join") -> tuple[str, int]:
    """``HOST:PORT`` (``[V6]:PORT`` for an IPv6 address) as ``(host, port)``.

    Raises:
        ValueError: it is not ``HOST:PORT`` with a port from 1 to 65535.
    """
    host, sep, port = text.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} takes HOST:PORT (a port from 1 to 65535), not {text!r}")
    return host, int(port)


def _bind_address(bind_to: str | None, default: str) -> tuple[str, int]:
    if not bind_to:
        return default, 0
    h, sep, p = bind_to.rpartition(":")
    if sep and p.isdigit() and not bind_to.endswith("]"):
        return h.strip("[]"), int(p)
    return bind_to.strip("[]"), 0


def _fail(message: str) -> NoReturn:
    print(f"{_PROG}: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def join_master(
    target: str, cookie: str, *, bind_to: str | None = None, watchdog: bool = True
) -> NoReturn:
    """Join the master's ElasticManager at ``target`` (``HOST:PORT``) and serve for ever.

    Exits the process (code 1, a message on stderr) when it cannot join; see the module's
    docstring.

    Raises:
        ValueError: ``target`` is not ``HOST:PORT``, or the cookie is not a valid one.
    """
    host, port = parse_address(target)
    cookie = check_cookie(cookie)
    timeout = worker_timeout()
    try:
        link = dial_master(host, port, cookie, timeout)
    except AuthenticationError as e:
        hint = ""
        if "authentication failed" in str(e):
            hint = " (is the cookie the master's cluster_cookie()?)"
        _fail(f"the master at {host}:{port} refused this worker: {e}{hint}")
    except JoinError as e:
        _fail(str(e))
    sock = getattr(link[1], "sock", None)
    local = sock.getsockname()[0] if sock is not None else "127.0.0.1"
    bind_host, bind_port = _bind_address(bind_to, str(local))
    c = Cluster(0, cookie, role="worker")
    set_current_cluster(c)
    c.server.watchdog = watchdog

    def announce(address: tuple[str, int]) -> None:
        try:
            send_address(link, *address)
        except OSError as e:
            _fail(f"the master at {host}:{port} closed the connection: {e}")
        threading.Thread(
            target=_serve_link, args=(c, link, f"{host}:{port}"), name="pydist-master", daemon=True
        ).start()

    c.server.serve(bind_host, bind_port, sys.stdout, announce=announce)


def _serve_link(c: Cluster, link: Link, where: str) -> None:
    """Serve the link to the master: its first message admits this worker."""
    scope.bind(c)
    reader, writer, session, secure = link
    peer = c.connections.adopt(None, reader, writer, session, secure=secure)
    sock = peer.sock
    try:
        if sock is not None:
            sock.settimeout(worker_timeout())
        first = read_first(reader, peer.mac_in)
        if sock is not None:
            sock.settimeout(None)
    except (ProtocolError, OSError, EOFError) as e:
        _leave(c, f"the master at {where} did not admit this worker (see the master's log): {e}")
    if not isinstance(first, JoinPGRP):
        _leave(c, f"the master at {where} opened with {type(first).__name__}, not JoinPGRP")
    c.connections.serve(peer, first)
    if not c.server.joined.is_set():
        _leave(c, f"the master at {where} refused to admit this worker")


def _leave(c: Cluster, message: str) -> NoReturn:
    try:
        print(f"{_PROG}: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass
    c.server.exit(1)
    raise AssertionError("unreachable")
