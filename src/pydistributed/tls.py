"""TLS for connections that need confidentiality (across hosts), with the standard ``ssl``.

The cookie handshake authenticates both ends and every frame (``handshake.py``,
``transport.FrameMac``), but it hides nothing: over a network anybody on the path can read the
calls and their values. ``PYDIST_TLS`` wraps TCP connections in TLS:

* ``off`` (default): no TLS;
* ``remote``: TLS on TCP connections to other hosts (not loopback);
* ``all``: TLS on every TCP connection (the local Unix-socket twin never needs it).

Who is at the other end is still proved by the cookie, not by certificates: each process that
accepts TLS makes a self-signed certificate for itself (an EC key, made on first use with the
``openssl`` command; never written anywhere but a private temporary directory, removed at once),
and the connecting side checks no certificate. Instead the digest of the server's certificate
is the handshake's *channel binding*: both cookie proofs cover it, so a proof made through a
party that terminates TLS with a certificate of its own is worthless (the server sees another
certificate than the client does). Inside TLS the frames carry no MAC: TLS authenticates them.

A process that accepts connections takes TLS whenever the other side starts it (its first
byte, 0x16, is a TLS record), and with ``PYDIST_TLS`` set it refuses a plain connection from
where TLS is wanted.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import TYPE_CHECKING

from .errors import AuthenticationError
from .sockets import is_loopback

if TYPE_CHECKING:  # ssl itself (3 ms) is imported once a TLS link is made
    import ssl

__all__ = [
    "TLS_RECORD",
    "binding",
    "client_context",
    "mode",
    "server_context",
    "wanted",
]

TLS_RECORD = 0x16  # the first byte of a TLS handshake record


def mode() -> str:
    """``PYDIST_TLS``: ``"off"``, ``"remote"`` or ``"all"`` (anything else counts as off)."""
    value = os.environ.get("PYDIST_TLS", "off").strip().lower()
    return value if value in ("remote", "all") else "off"


def wanted(host: str) -> bool:
    """Whether a TCP connection with ``host`` (the peer's address) is to use TLS."""
    m = mode()
    return m == "all" or (m == "remote" and not is_loopback(host))


def binding(cert_der: bytes) -> bytes:
    """The channel binding of a TLS connection: the digest of the server's certificate."""
    return b"tls-cert-sha256:" + hashlib.sha256(cert_der).digest()


def client_context() -> ssl.SSLContext:
    """A context for connecting: TLS 1.2 or newer; certificates not checked (see above)."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_server: tuple[ssl.SSLContext, bytes] | None = None
_server_lock = threading.Lock()


def server_context() -> tuple[ssl.SSLContext, bytes]:
    """This process's context for accepting TLS, and its certificate (DER), made on first use.

    Raises:
        AuthenticationError: no certificate can be made here (no ``openssl`` command).
    """
    global _server
    with _server_lock:
        if _server is None:
            _server = _make_server_context()
        return _server


def _make_server_context() -> tuple[ssl.SSLContext, bytes]:
    import shutil  # here, not at the top: only a TLS server makes a certificate
    import ssl
    import subprocess
    import tempfile

    openssl = shutil.which("openssl")
    if openssl is None:
        raise AuthenticationError("TLS needs the openssl command to make a certificate")
    with tempfile.TemporaryDirectory(prefix="pydist-tls-") as d:
        key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        run = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "3650", "-subj", "/CN=pydistributed"],
            capture_output=True,
            timeout=30,
        )  # fmt: skip
        if run.returncode != 0:
            raise AuthenticationError(
                f"cannot make a TLS certificate: {run.stderr.decode(errors='replace')[-300:]}"
            )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cert, key)
        with open(cert) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
    return ctx, der
