"""The cookie handshake that opens every connection, the session keys it derives, and the cookie.

Both sides prove that they know the cluster cookie without sending it, the connecting side
(the *client*) first, so that a process that does not know the cookie learns nothing it could
test guesses against; then they compare versions and derive keys for this connection alone::

    client                                          server
    ------                                          ------
    1. MAGIC + Cc                    ------------>
                                     <------------  2. MAGIC + Cs
    3. HMAC(cookie, "client"|T) + info ---------->
                                                    4. check the proof (compare_digest);
                                                       wrong: "DENY" + "authentication
                                                       failed", and close. Check versions.
                                     <------------  5. "OKAY" + HMAC(cookie, "server"|T)
                                                       + info   (or "DENY" + reason)
    6. check the proof and the versions

``Cc`` and ``Cs`` are 32 random bytes each; ``T = Cc | Cs | binding`` is the transcript, where
``binding`` names the channel the handshake runs on (empty, or the TLS certificates' digests,
so that a proof made for one channel is worthless on another). ``info`` is a u16 length and a
JSON object of at most 512 bytes, :func:`versions`: ``{"protocol": int, "python": "3.11",
"pydistributed": "0.1.0", "cloudpickle": "3.1.1"}`` (and ``"macs": ["poly1305"]`` on a link
that will carry frame tags, where this process can compute Poly1305: ``framemac.py``); each
version must be the same on both sides, or
the server refuses the client with a message that names both (``DENY``). The server sends its
proof and its versions only to a client that has proved itself.

Session keys (``Session``): ``S = HMAC(cookie, "session"|T|Ic|Is)``, where ``Ic`` and ``Is`` are
the two sides' info as sent (length included), so a relay that changes either makes the keys
differ and the first message fails; the client's frames are
authenticated with ``HMAC(S, "client->server")``, the server's with ``HMAC(S, "server->client")``
(``transport.FrameMac``). A relay that passes both proofs along still cannot make one frame of
its own, nor replay one (the MAC covers a per-direction counter).

The steps are written once, as generators that yield what they need (:class:`Read`) or send
(:class:`Write`) and return the :class:`Session`, so the same code runs over a blocking stream
(:func:`client_handshake`, :func:`server_handshake`) and inside a selector loop that serves many
unauthenticated connections from one thread (``connections.py``). Every read has a fixed size
or a small bound.
"""

from __future__ import annotations

import functools
import hmac
import json
import os
import secrets
import string
import struct
import sys
import time
from collections.abc import Callable, Generator
from typing import Any

from . import poly1305
from .errors import AuthenticationError, LaunchError

__all__ = [
    "COOKIE_MAX",
    "COOKIE_MIN",
    "MAGIC",
    "PROTOCOL_VERSION",
    "Read",
    "Session",
    "Steps",
    "VersionMismatchError",
    "Write",
    "bulk_mac",
    "check_cookie",
    "client_handshake",
    "client_steps",
    "identity_proof",
    "random_cookie",
    "run_steps",
    "server_handshake",
    "server_steps",
    "stream_io",
    "versions",
]

MAGIC = b"PYDIST\x00\x02"
PROTOCOL_VERSION = 3  # 3: frames of 64 KiB or more are bulk frames of the MAC (were 1 MiB)
_CHALLENGE = 32
_DIGEST = 32
_INFO_MAX = 512
_REASON_MAX = 1024
COOKIE_MAX = 64
COOKIE_MIN = 12
_MISMATCH = "version mismatch:"
_PRINTABLE = set(string.printable) - set("\t\n\r\x0b\x0c")


class VersionMismatchError(LaunchError, AuthenticationError):
    """The two ends of a connection run different versions of Python (major.minor),
    pydistributed, cloudpickle or the wire protocol: the side that noticed refused the
    connection. The message names both sides' versions. A ``LaunchError`` too: ``addprocs``
    raises it for a worker that runs other versions than the master."""


class _Record:
    """A small record: equal to another of its class with equal fields (plain classes, not
    dataclasses: building dataclasses costs at import, on every worker's start)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} fields")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{type(self).__name__}: bad or repeated field {name!r}")
            values[name] = value
        if len(values) != len(names):
            raise TypeError(f"{type(self).__name__} needs the fields {', '.join(names)}")
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Read(_Record):
    """A step needs exactly ``n`` bytes from the peer."""

    __slots__ = ("n",)
    n: int


class Write(_Record):
    """A step sends ``data`` to the peer."""

    __slots__ = ("data",)
    data: bytes


class Session(_Record):
    """What a finished handshake gives: the keys of this connection's frames.

    Attributes:
        key_out: authenticates the frames this side sends.
        key_in: authenticates the frames this side receives.
        transcript: ``Cc | Cs | binding``, unique to this connection (proofs of identity made
            after the handshake are bound to it).
        info: the peer's versions.
    """

    __slots__ = ("key_out", "key_in", "transcript", "info")  # noqa: RUF023 (field order)
    key_out: bytes
    key_in: bytes
    transcript: bytes
    info: dict[str, Any]


Steps = Generator["Read | Write", "bytes | None", Session]


def check_cookie(cookie: object) -> str:
    """Return ``cookie`` if it is valid: printable ASCII, 12 to 64 characters.

    Raises:
        ValueError: it is not a str, is shorter than 12 or longer than 64 characters, or has
            a character that is not printable ASCII.
    """
    if not isinstance(cookie, str):
        raise ValueError(f"a cookie is a str, not {type(cookie).__name__}")
    if len(cookie) > COOKIE_MAX:
        raise ValueError(f"a cookie has at most {COOKIE_MAX} characters, not {len(cookie)}")
    bad = [c for c in cookie if c not in _PRINTABLE]
    if bad:
        raise ValueError(f"a cookie is printable ASCII without whitespace controls; got {bad[0]!r}")
    if len(cookie) < COOKIE_MIN:
        raise ValueError(
            f"a cookie has at least {COOKIE_MIN} characters, not {len(cookie)}: it is the "
            "cluster's only secret (the default, a random one, has 32)"
        )
    return cookie


def random_cookie() -> str:
    """A fresh random cookie (32 alphanumeric characters, about 190 bits)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.digest(key, b"".join(parts), "sha256")


def _python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _package_version() -> str:
    # the package's own ``__version__`` (``pydistributed/__init__.py``): that of the code this
    # process runs, even from a copy on sys.path, where the installed metadata would tell the
    # installed one. Looked up, not imported: a module of the package does not import its
    # container, which is loaded whenever this module is.
    package = sys.modules.get(__package__ or "pydistributed")
    return str(getattr(package, "__version__", "unknown"))


@functools.cache
def _cloudpickle_version() -> str:
    # read from its source, not imported, unless it is already (importing it costs ~12 ms,
    # which a worker that is only sent importable functions never needs): its __init__.py
    # names the version on a line of its own
    cp: Any = sys.modules.get("cloudpickle")
    if cp is None:
        try:
            import importlib.util

            spec = importlib.util.find_spec("cloudpickle")
            if spec is not None and spec.origin and spec.origin.endswith("__init__.py"):
                with open(spec.origin, encoding="utf-8") as f:
                    for line in f:
                        if line.startswith("__version__ ="):
                            version = line.split("=", 1)[1].strip().strip("\"'")
                            if version:
                                return version
        except (ImportError, OSError, ValueError, UnicodeDecodeError):
            pass
        try:
            import cloudpickle
        except ImportError:  # pragma: no cover - a dependency
            return "unknown"
        cp = cloudpickle
    return str(getattr(cp, "__version__", "unknown"))


# what must be the same on both ends of a connection, and how a message names it
_CHECKED = {
    "protocol": "protocol",
    "python": "Python",
    "pydistributed": "pydistributed",
    "cloudpickle": "cloudpickle",
}


def versions() -> dict[str, Any]:
    """This process's versions, as the handshake sends them: the wire protocol, Python's
    major.minor, pydistributed's and cloudpickle's (a worker unpickles what the master
    pickles: they must match)."""
    return {
        "protocol": PROTOCOL_VERSION,
        "python": _python_version(),
        "pydistributed": _package_version(),
        "cloudpickle": _cloudpickle_version(),
    }


def _my_info(tags: bool) -> bytes:
    """This side's info, as sent. ``tags``: the link will carry frame tags (not TLS, not a
    checked local socket): offer Poly1305 for its large frames, if this process has it."""
    info: dict[str, Any] = versions()
    if tags and poly1305.available():
        info["macs"] = ["poly1305"]  # large frames' MAC (framemac.py), if the peer has it too
    data = json.dumps(info).encode()
    return struct.pack("!H", len(data)) + data


def _read(n: int) -> Generator[Read | Write, bytes | None, bytes]:
    """``data = yield from _read(n)``: the next ``n`` bytes from the peer."""
    data = yield Read(n)
    assert data is not None and len(data) == n
    return data


def _read_info() -> Generator[Read | Write, bytes | None, tuple[dict[str, Any], bytes]]:
    """The peer's info, and its bytes as sent (length included)."""
    head = yield from _read(2)
    (n,) = struct.unpack("!H", head)
    if n > _INFO_MAX:
        raise AuthenticationError(f"handshake info of {n} bytes is too long")
    raw = yield from _read(n)
    try:
        info = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise AuthenticationError(f"garbled handshake info: {e}") from e
    if not isinstance(info, dict):
        raise AuthenticationError("garbled handshake info")
    return info, head + raw


def _mismatch(
    theirs: dict[str, Any], here: str = "this process", there: str = "the peer"
) -> str | None:
    """None if ``theirs`` (the peer's :func:`versions`) matches ours; else a message naming
    each version that differs, on both sides (``here``, ``there``: how it names the sides)."""
    mine = versions()
    diffs = [
        (label, mine[key], theirs.get(key, "unknown"))
        for key, label in _CHECKED.items()
        if theirs.get(key, "unknown") != mine[key]
    ]
    if not diffs:
        return None
    ours = ", ".join(f"{label} {m}" for label, m, _ in diffs)
    other = ", ".join(f"{label} {t}" for label, _, t in diffs)
    return (
        f"{_MISMATCH} {there} has {other}; {here} (os pid {os.getpid()}) has {ours} "
        "(Python major.minor, pydistributed and cloudpickle must be the same on the master "
        "and every worker)"
    )


def _session(
    cookie: bytes, transcript: bytes, infos: bytes, info: dict[str, Any], client: bool
) -> Session:
    """The keys of the connection: from the cookie, the transcript and both infos as sent
    (``infos``: the client's, then the server's)."""
    base = _mac(cookie, b"session", transcript + infos)
    c2s = _mac(base, b"client->server")
    s2c = _mac(base, b"server->client")
    if client:
        return Session(key_out=c2s, key_in=s2c, transcript=transcript, info=info)
    return Session(key_out=s2c, key_in=c2s, transcript=transcript, info=info)


def bulk_mac(session: Session) -> bool:
    """Whether both sides of ``session`` (a link with frame tags) authenticate large frames
    with Poly1305 (``framemac.py``): both offered it in their info."""
    macs = session.info.get("macs")
    return isinstance(macs, list) and "poly1305" in macs and poly1305.available()


def client_steps(cookie: str, binding: bytes = b"", tags: bool = True) -> Steps:
    """The client's side (steps 1, 3, 6). ``tags``: the link will carry frame tags.

    Raises:
        AuthenticationError: the peer is not a pydistributed process, refused us, does not
            know the cookie, or speaks another protocol or Python version.
    """
    key = cookie.encode("ascii")
    mine = secrets.token_bytes(_CHALLENGE)
    yield Write(MAGIC + mine)
    if (yield from _read(len(MAGIC))) != MAGIC:
        raise AuthenticationError("the peer is not a pydistributed process (bad magic)")
    theirs = yield from _read(_CHALLENGE)
    transcript = mine + theirs + binding
    sent = _my_info(tags)
    yield Write(_mac(key, b"client", transcript) + sent)
    status = yield from _read(4)
    if status == b"DENY":
        (n,) = struct.unpack("!H", (yield from _read(2)))
        reason = (yield from _read(min(n, _REASON_MAX))).decode("utf-8", "replace")
        if reason.startswith(_MISMATCH):
            raise VersionMismatchError(reason)  # it names the side that refused
        raise AuthenticationError(f"connection refused by the peer: {reason}")
    if status != b"OKAY":
        raise AuthenticationError("garbled handshake answer")
    proof = yield from _read(_DIGEST)
    if not hmac.compare_digest(proof, _mac(key, b"server", transcript)):
        raise AuthenticationError("the peer does not know the cluster cookie")
    info, raw = yield from _read_info()
    problem = _mismatch(info)
    if problem:
        raise VersionMismatchError(problem)
    return _session(key, transcript, sent + raw, info, client=True)


def _deny(reason: str) -> Write:
    data = reason.encode()[:_REASON_MAX]
    return Write(b"DENY" + struct.pack("!H", len(data)) + data)


def server_steps(cookie: str, binding: bytes = b"", tags: bool = True) -> Steps:
    """The server's side (steps 2, 4, 5). ``tags``: the link will carry frame tags.

    Raises:
        AuthenticationError: the client sent garbage, does not know the cookie, or speaks
            another version (it has been told why when it proved the cookie, else only that
            authentication failed).
    """
    key = cookie.encode("ascii")
    if (yield from _read(len(MAGIC))) != MAGIC:
        raise AuthenticationError("not a pydistributed client (bad magic)")
    theirs = yield from _read(_CHALLENGE)
    mine = secrets.token_bytes(_CHALLENGE)
    yield Write(MAGIC + mine)
    transcript = theirs + mine + binding
    proof = yield from _read(_DIGEST)
    if not hmac.compare_digest(proof, _mac(key, b"client", transcript)):
        yield _deny("authentication failed")
        raise AuthenticationError("a client failed authentication (wrong cookie)")
    info, raw = yield from _read_info()
    problem = _mismatch(info, "this worker", "the connecting process")
    if problem:
        yield _deny(problem)
        raise VersionMismatchError(problem)
    sent = _my_info(tags)
    yield Write(b"OKAY" + _mac(key, b"server", transcript) + sent)
    return _session(key, transcript, raw + sent, info, client=False)


ReadExact = Callable[[int], bytes]
WriteAll = Callable[[bytes], object]


def run_steps(steps: Steps, read_exact: ReadExact, write: WriteAll) -> Session:
    """Drive handshake ``steps`` over a blocking stream.

    A write that fails while the steps are refusing the peer (a ``DENY``) does not hide the
    refusal: the :class:`AuthenticationError` is raised all the same.
    """
    reply: bytes | None = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if isinstance(step, Read):
            reply = read_exact(step.n)
        else:
            try:
                write(step.data)
            except OSError:
                if not step.data.startswith(b"DENY"):
                    raise
            reply = None


def client_handshake(
    read_exact: ReadExact, write: WriteAll, cookie: str, binding: bytes = b"", tags: bool = True
) -> Session:
    """Run the client's side over a blocking stream; see :func:`client_steps`.

    Raises:
        AuthenticationError: as :func:`client_steps`.
        EOFError, OSError: the connection failed or timed out.
    """
    return run_steps(client_steps(cookie, binding, tags), read_exact, write)


def server_handshake(
    read_exact: ReadExact, write: WriteAll, cookie: str, binding: bytes = b"", tags: bool = True
) -> Session:
    """Run the server's side over a blocking stream; see :func:`server_steps`.

    Raises:
        AuthenticationError: as :func:`server_steps`.
        EOFError, OSError: the connection failed or timed out.
    """
    return run_steps(server_steps(cookie, binding, tags), read_exact, write)


def stream_io(
    instream: Any, outstream: Any, sock: Any = None, deadline: float | None = None
) -> tuple[Any, Any]:
    """``(read_exact, write)`` over a connection's two streams, for the handshake.

    With ``sock`` and ``deadline`` (a ``time.monotonic()``), every read and write waits only
    for what remains until the deadline: one bound for the whole handshake, however slowly the
    peer trickles its bytes.
    """

    def bound() -> None:
        if sock is not None and deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the handshake took too long")
            sock.settimeout(left)

    def read_exact(n: int) -> bytes:
        bound()
        data = instream.read(n)
        if data is None or len(data) != n:
            raise EOFError("connection closed during the handshake")
        return bytes(data)

    def write(data: bytes) -> None:
        bound()
        outstream.write(data)
        flush = getattr(outstream, "flush", None)
        if flush is not None:
            flush()

    return read_exact, write


def identity_proof(key: bytes, transcript: bytes) -> bytes:
    """What a worker sends in ``Identify``: proof that it knows the secret it shares with the
    worker it connects to, bound to this connection's handshake."""
    return hmac.digest(key, b"identify" + transcript, "sha256")
