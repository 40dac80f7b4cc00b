"""The wire of an elastic join: a worker dials the master, proves the cookie, says where it
listens; the connection it opened becomes its link with the master.

::

    worker (python -m pydistributed.worker --join HOST:PORT)   master (ElasticManager)
    ------------------------------------------------------     ------------------------
    dial HOST:PORT, again until the deadline (a master that
    is not listening yet, or a busy network)
    TLS when PYDIST_TLS wants it for HOST
    handshake, client side: proves the cookie first  <------>   handshake, server side, in
                                                                listener.py's gate (bounded)
    the address record: where this worker listens  -------->   read_address (bounded)
                                                 <---------    JoinPGRP: worker N (lifecycle)
    serve the link as the master's

The worker is the handshake's client, so it proves the cookie first and a process that dials
the master's port learns nothing of the cookie, as with every other connection. The address
record is ``u16 length | JSON {"host", "port"} | HMAC(session key, "join-address" | T | JSON)``
(``T``: the handshake's transcript): only the process that passed this handshake can make it.
"""

from __future__ import annotations

import hmac
import json
import socket
import struct
import time
from typing import Any

from . import sockets, tls
from .errors import AuthenticationError
from .handshake import Session, client_handshake, stream_io
from .timeouts import seconds

__all__ = ["HANDSHAKE_TIMEOUT", "JoinError", "Link", "dial_master", "read_address", "send_address"]

HANDSHAKE_TIMEOUT = 10.0
_RECORD_MAX = 512
_LABEL = b"join-address"

# (reader, writer, session, secure): a connection past its handshake; ``secure``: over TLS
Link = tuple[Any, Any, Session, bool]


class JoinError(RuntimeError):
    """A worker could not join its master: unreachable, gone, or the connection broke."""


def _record_mac(session: Session, key: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, _LABEL + session.transcript + payload, "sha256")


def dial_master(host: str, port: int, cookie: str, timeout: float) -> Link:
    """Connect to the master's ElasticManager at ``host:port`` and pass the handshake.

    Connecting is tried again (backing off up to a second) until ``timeout`` seconds have
    passed; the handshake has ``HANDSHAKE_TIMEOUT`` seconds of its own.

    Raises:
        JoinError: no connection within ``timeout``, or it broke during the handshake.
        AuthenticationError: the master refused the cookie, or is not a pydistributed master;
            VersionMismatchError (one): it runs other versions.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        left = deadline - time.monotonic()
        try:
            sock = sockets.connect_tcp(host, port, timeout=max(0.05, min(left, HANDSHAKE_TIMEOUT)))
            break
        except OSError as e:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JoinError(
                    f"could not reach the master at {host}:{port} within {seconds(timeout)} s "
                    f"(PYDIST_WORKER_TIMEOUT): {e}"
                ) from None
            time.sleep(min(delay, left))
            delay = min(2 * delay, 1.0)
    try:
        return _handshake(sock, host, port, cookie)
    except BaseException:
        sock.close()
        raise


def _handshake(sock: socket.socket, host: str, port: int, cookie: str) -> Link:
    secure, binding = False, b""
    raw: Any = sock
    sock.settimeout(HANDSHAKE_TIMEOUT)
    if tls.wanted(host):
        try:
            raw = tls.client_context().wrap_socket(sock)
        except OSError as e:  # ssl.SSLError too
            raise JoinError(f"TLS with the master at {host}:{port} failed: {e}") from e
        binding = tls.binding(raw.getpeercert(binary_form=True) or b"")
        secure = True
    reader, writer = sockets.socket_streams(raw)
    read_exact, write = stream_io(reader, writer, raw, time.monotonic() + HANDSHAKE_TIMEOUT)
    try:
        session = client_handshake(read_exact, write, cookie, binding, not secure)
    except AuthenticationError:
        raise
    except TimeoutError:
        raise JoinError(
            f"the master at {host}:{port} did not answer the handshake within "
            f"{HANDSHAKE_TIMEOUT:g} s"
        ) from None
    except (OSError, EOFError) as e:
        raise JoinError(
            f"the master at {host}:{port} closed the connection during the handshake: {e}"
        ) from None
    return reader, writer, session, secure


def send_address(link: Link, host: str, port: int) -> None:
    """The worker's side: tell the master where it listens (the address record)."""
    _, writer, session, _ = link
    payload = json.dumps({"host": host, "port": int(port)}).encode()
    writer.write(
        struct.pack("!H", len(payload)) + payload + _record_mac(session, session.key_out, payload)
    )
    flush = getattr(writer, "flush", None)
    if flush is not None:
        flush()


def read_address(link: Link, timeout: float = HANDSHAKE_TIMEOUT) -> tuple[str, int]:
    """The master's side: the address record of a worker that passed the handshake.

    Raises:
        AuthenticationError: the record is garbled, too long or not made by that worker.
        EOFError, OSError: the connection broke, or no record came within ``timeout``.
    """
    reader, writer, session, _ = link
    sock = getattr(writer, "sock", None)
    read_exact, _ = stream_io(reader, writer, sock, time.monotonic() + timeout)
    (n,) = struct.unpack("!H", read_exact(2))
    if n > _RECORD_MAX:
        raise AuthenticationError(f"a joining worker's address record of {n} bytes is too long")
    payload = read_exact(n)
    if not hmac.compare_digest(read_exact(32), _record_mac(session, session.key_in, payload)):
        raise AuthenticationError("a joining worker's address record is not authentic")
    try:
        record = json.loads(payload.decode())
        host, port = str(record["host"]), int(record["port"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise AuthenticationError(f"a joining worker's address record is garbled: {e}") from e
    if not 0 < port < 65536:
        raise AuthenticationError(f"a joining worker gave port {port}")
    if sock is not None:
        sock.settimeout(None)
    return host, port
