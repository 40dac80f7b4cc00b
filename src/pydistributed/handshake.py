"""The cookie handshake that opens every connection, and the cookie itself.

Both sides prove that they know the cluster cookie without sending it (the model is
``multiprocessing.connection``'s challenge/response, made mutual), then compare versions.
The side that opened the connection is the *client*, the other the *server*:

1. client -> server: ``MAGIC`` (8 bytes) + a random challenge ``Cc`` (32 bytes).
2. server -> client: ``MAGIC`` + ``HMAC-SHA256(cookie, b"server" + Cc)`` (32 bytes) + a random
   challenge ``Cs`` (32 bytes).
3. The client checks the digest (``hmac.compare_digest``); on a mismatch it drops the connection
   and raises :class:`AuthenticationError`. Otherwise client -> server:
   ``HMAC-SHA256(cookie, b"client" + Cs)`` + ``info``.
4. The server checks the digest and the versions in ``info``, and answers ``b"OKAY"`` + its own
   ``info``, or ``b"DENY"`` + a UTF-8 reason (for a wrong cookie the reason says only
   "authentication failed"). The client checks the server's versions too.

``info`` is a u16 length + a JSON object ``{"protocol": int, "python": "3.11"}``, at most 512
bytes. Every read before authentication has a fixed size or a small bound; the caller sets a
timeout on the socket, so a silent or slow peer cannot hold a server thread for long.
A mismatch of protocol or Python minor version is refused with an error naming both sides
(functions shipped by value need the same Python on both sides).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import string
import struct
import sys
from collections.abc import Callable

from .errors import AuthenticationError

__all__ = [
    "MAGIC",
    "PROTOCOL_VERSION",
    "check_cookie",
    "client_handshake",
    "random_cookie",
    "server_handshake",
]

MAGIC = b"PYDIST\x00\x01"
PROTOCOL_VERSION = 1
_CHALLENGE = 32
_DIGEST = 32
_INFO_MAX = 512
COOKIE_MAX = 64
_PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")

ReadExact = Callable[[int], bytes]
Write = Callable[[bytes], object]


def check_cookie(cookie: object) -> str:
    """Return ``cookie`` if it is valid: printable ASCII, at most 64 characters."""
    if not isinstance(cookie, str):
        raise ValueError(f"a cookie is a str, not {type(cookie).__name__}")
    if len(cookie) > COOKIE_MAX:
        raise ValueError(f"a cookie has at most {COOKIE_MAX} characters, not {len(cookie)}")
    bad = [c for c in cookie if c not in _PRINTABLE]
    if bad:
        raise ValueError(f"a cookie is printable ASCII without whitespace controls; got {bad[0]!r}")
    return cookie


def random_cookie() -> str:
    """A fresh random cookie (32 alphanumeric characters)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _digest(cookie: str, role: bytes, challenge: bytes) -> bytes:
    return hmac.new(cookie.encode("ascii"), role + challenge, hashlib.sha256).digest()


def _python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _my_info() -> bytes:
    info = {"protocol": PROTOCOL_VERSION, "python": _python_version()}
    data = json.dumps(info).encode()
    return struct.pack("!H", len(data)) + data


def _read_info(read_exact: ReadExact) -> dict[str, object]:
    (n,) = struct.unpack("!H", read_exact(2))
    if n > _INFO_MAX:
        raise AuthenticationError(f"handshake info of {n} bytes is too long")
    try:
        info = json.loads(read_exact(n).decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise AuthenticationError(f"garbled handshake info: {e}") from e
    if not isinstance(info, dict):
        raise AuthenticationError("garbled handshake info")
    return info


def _mismatch(theirs: dict[str, object], their_side: str) -> str | None:
    mine = {"protocol": PROTOCOL_VERSION, "python": _python_version()}
    for key in ("protocol", "python"):
        if theirs.get(key) != mine[key]:
            return (
                f"version mismatch: this process (os pid {os.getpid()}) has {key} "
                f"{mine[key]}, the {their_side} has {key} {theirs.get(key)}"
            )
    return None


def client_handshake(read_exact: ReadExact, write: Write, cookie: str) -> dict[str, object]:
    """Run the client's side (steps 1, 3, 5). Returns the server's info.

    Raises:
        AuthenticationError: the server does not know the cookie, refused us, or speaks
            another protocol or Python version.
        EOFError, OSError: the connection failed.
    """
    challenge = secrets.token_bytes(_CHALLENGE)
    write(MAGIC + challenge)
    head = read_exact(len(MAGIC))
    if head != MAGIC:
        raise AuthenticationError("the peer is not a pydistributed process (bad magic)")
    server_digest = read_exact(_DIGEST)
    if not hmac.compare_digest(server_digest, _digest(cookie, b"server", challenge)):
        raise AuthenticationError("the peer does not know the cluster cookie")
    their_challenge = read_exact(_CHALLENGE)
    write(_digest(cookie, b"client", their_challenge) + _my_info())
    status = read_exact(4)
    if status == b"DENY":
        (n,) = struct.unpack("!H", read_exact(2))
        reason = read_exact(min(n, 1024)).decode("utf-8", "replace")
        raise AuthenticationError(f"connection refused by the peer: {reason}")
    if status != b"OKAY":
        raise AuthenticationError("garbled handshake answer")
    info = _read_info(read_exact)
    problem = _mismatch(info, "peer")
    if problem:
        raise AuthenticationError(problem)
    return info


def server_handshake(read_exact: ReadExact, write: Write, cookie: str) -> dict[str, object]:
    """Run the server's side (steps 2, 4). Returns the client's info.

    Raises:
        AuthenticationError: the client sent garbage, does not know the cookie, or speaks another
            version (it has been told why, when that is safe).
        EOFError, OSError: the connection failed.
    """
    head = read_exact(len(MAGIC))
    if head != MAGIC:
        raise AuthenticationError("not a pydistributed client (bad magic)")
    their_challenge = read_exact(_CHALLENGE)
    challenge = secrets.token_bytes(_CHALLENGE)
    write(MAGIC + _digest(cookie, b"server", their_challenge) + challenge)
    client_digest = read_exact(_DIGEST)
    if not hmac.compare_digest(client_digest, _digest(cookie, b"client", challenge)):
        _deny(write, "authentication failed")
        raise AuthenticationError("a client failed authentication (wrong cookie)")
    info = _read_info(read_exact)
    problem = _mismatch(info, "connecting client")
    if problem:
        _deny(write, problem)
        raise AuthenticationError(problem)
    write(b"OKAY" + _my_info())
    return info


def _deny(write: Write, reason: str) -> None:
    data = reason.encode()[:1024]
    try:
        write(b"DENY" + struct.pack("!H", len(data)) + data)
    except OSError:
        pass
