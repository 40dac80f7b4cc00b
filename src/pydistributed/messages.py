"""One frozen dataclass per message type.

Every message has a ``TAG`` (its type on the wire) and up to three integer header fields
(``HEADER`` names them), which travel in the fixed-size header frame so that they can be read
even when the body cannot be unpickled. The other fields travel in the pickled body, in the
order ``BODY`` gives.

=================  =========================  ==========================================
message            header                     meaning
=================  =========================  ==========================================
``Call``           whence, id (the Future)    run ``f``, store the result in that Future
``CallFetch``      response_id                run ``f``, answer with a ``Result``
``CallWait``       response_id, whence, id    run ``f``, store the result, answer when done
``RemoteDo``       -                          run ``f``, answer nothing
``Result``         response_id                the outcome of a ``CallFetch``/``CallWait``
``RefCount``       -                          batched add-client and delete-client notices
``JoinPGRP``       response_id                the master admits a worker: its id and peers
``JoinComplete``   response_id                the worker's answer to ``JoinPGRP``
``Identify``       pid                        first message worker to worker, with a proof
``PeerUpdate``     -                          workers that joined or left the cluster
``Interrupt``      -                          interrupt the calls running now
``Exit``           -                          exit now (``rmprocs``)
``Ping``           nonce                      are you there? (the heartbeat)
``Pong``           nonce                      yes: the answer to a ``Ping``
``DialMe``         pid                        have worker ``pid`` connect to the sender
``MapCalls``       stream, first, count       elements of a pipelined map, to run in order
``MapResults``     stream, first, count       their outcomes, several in one message
``MapCancel``      stream                     drop the elements of ``stream`` not started
=================  =========================  ==========================================

A pipelined map (``pipecalls.py``) numbers the elements it sends on one stream ``0, 1, 2...``;
``first`` and ``count`` name the run of numbers a message carries, so that a body that cannot
be unpickled can still be answered element by element.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "MESSAGE_TYPES",
    "Call",
    "CallFetch",
    "CallWait",
    "DialMe",
    "Exit",
    "Identify",
    "Interrupt",
    "JoinComplete",
    "JoinPGRP",
    "MapCalls",
    "MapCancel",
    "MapResults",
    "Message",
    "PeerUpdate",
    "Ping",
    "Pong",
    "RefCount",
    "RemoteDo",
    "Result",
]


class Message:
    """Base class of the message records."""

    TAG: ClassVar[int] = 0
    HEADER: ClassVar[tuple[str, ...]] = ()
    BODY: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class Call(Message):
    TAG: ClassVar[int] = 1
    HEADER: ClassVar[tuple[str, ...]] = ("whence", "id")
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")
    whence: int
    id: int
    f: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallFetch(Message):
    TAG: ClassVar[int] = 2
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")
    response_id: int
    f: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallWait(Message):
    TAG: ClassVar[int] = 3
    HEADER: ClassVar[tuple[str, ...]] = ("response_id", "whence", "id")
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")
    response_id: int
    whence: int
    id: int
    f: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RemoteDo(Message):
    TAG: ClassVar[int] = 4
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")
    f: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Result(Message):
    """``ok`` is False when ``value`` is a ``CapturedException`` raised by the call."""

    TAG: ClassVar[int] = 5
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("ok", "value")
    response_id: int
    ok: bool
    value: Any


@dataclass(frozen=True, slots=True)
class RefCount(Message):
    """``adds``/``dels``: tuples ``(whence, id, client_pid)``; adds are applied first."""

    TAG: ClassVar[int] = 6
    BODY: ClassVar[tuple[str, ...]] = ("adds", "dels")
    adds: tuple[tuple[int, int, int], ...] = ()
    dels: tuple[tuple[int, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class JoinPGRP(Message):
    """``peers``: ``(pid, host, port)`` of the workers the new one may connect to; ``keys``:
    ``(pid, key)``, the secret it shares with each of them alone (see ``Identify``)."""

    TAG: ClassVar[int] = 7
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("pid", "topology", "lazy", "peers", "master_host", "keys")
    response_id: int
    pid: int
    topology: str = "all_to_all"
    lazy: bool = True
    peers: tuple[tuple[int, str, int], ...] = ()
    master_host: str = ""
    keys: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class JoinComplete(Message):
    TAG: ClassVar[int] = 8
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("ospid", "hostname")
    response_id: int
    ospid: int
    hostname: str = ""


@dataclass(frozen=True, slots=True)
class Identify(Message):
    """``proof``: ``HMAC(key, "identify" | transcript)``, the key shared by the two workers (from
    the master) and the transcript of this connection's handshake."""

    TAG: ClassVar[int] = 9
    HEADER: ClassVar[tuple[str, ...]] = ("pid",)
    BODY: ClassVar[tuple[str, ...]] = ("proof",)
    pid: int
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class PeerUpdate(Message):
    """``added``: ``(pid, host, port)`` of workers that joined; ``keys``: ``(pid, key)`` as in
    ``JoinPGRP``, for the worker this update goes to."""

    TAG: ClassVar[int] = 10
    BODY: ClassVar[tuple[str, ...]] = ("added", "removed", "keys")
    added: tuple[tuple[int, str, int], ...] = ()
    removed: tuple[int, ...] = ()
    keys: tuple[tuple[int, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Interrupt(Message):
    TAG: ClassVar[int] = 11


@dataclass(frozen=True, slots=True)
class Exit(Message):
    TAG: ClassVar[int] = 12


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Are you there? Answered at once with ``Pong(nonce)`` by the reading thread."""

    TAG: ClassVar[int] = 13
    HEADER: ClassVar[tuple[str, ...]] = ("nonce",)
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TAG: ClassVar[int] = 14
    HEADER: ClassVar[tuple[str, ...]] = ("nonce",)
    nonce: int


@dataclass(frozen=True, slots=True)
class DialMe(Message):
    """A worker to the master: have worker ``pid`` (a higher id) connect to me; the master to
    that worker: connect to worker ``pid`` (``peerlinks.py``)."""

    TAG: ClassVar[int] = 15
    HEADER: ClassVar[tuple[str, ...]] = ("pid",)
    pid: int


@dataclass(frozen=True, slots=True)
class MapCalls(Message):
    """Run ``f(*args)`` for each ``args`` of ``items``, one after another in arrival order, after
    the elements sent before on ``stream`` by the same process."""

    TAG: ClassVar[int] = 16
    HEADER: ClassVar[tuple[str, ...]] = ("stream", "first", "count")
    BODY: ClassVar[tuple[str, ...]] = ("f", "items")
    stream: int
    first: int
    count: int
    f: Any
    items: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class MapResults(Message):
    """The outcomes of elements ``first .. first + count - 1`` of ``stream``. ``oks[i]``: 1 for
    a value, 0 for a ``CapturedException``, 2 for an element dropped by ``MapCancel``;
    ``seconds``: how long the elements ran, together."""

    TAG: ClassVar[int] = 17
    HEADER: ClassVar[tuple[str, ...]] = ("stream", "first", "count")
    BODY: ClassVar[tuple[str, ...]] = ("oks", "values", "seconds")
    stream: int
    first: int
    count: int
    oks: bytes
    values: list[Any]
    seconds: float


@dataclass(frozen=True, slots=True)
class MapCancel(Message):
    TAG: ClassVar[int] = 18
    HEADER: ClassVar[tuple[str, ...]] = ("stream",)
    stream: int


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TAG: cls
    for cls in (
        Call,
        CallFetch,
        CallWait,
        RemoteDo,
        Result,
        RefCount,
        JoinPGRP,
        JoinComplete,
        Identify,
        PeerUpdate,
        Interrupt,
        Exit,
        Ping,
        Pong,
        DialMe,
        MapCalls,
        MapResults,
        MapCancel,
    )
}
