"""One class per message type: plain classes with ``__slots__``, built on the hot path.

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
    """Base class of the message records.

    A message is a plain object with ``__slots__`` (no dataclass: a ``CallFetch`` is built for
    every call, and a frozen dataclass's ``__init__`` costs several times more). Its fields are
    its ``HEADER`` then its ``BODY`` fields, in that order, for positional construction too.
    Messages are treated as immutable by convention (nothing assigns to one after building it);
    it is not enforced, which would cost on construction.
    """

    __slots__ = ()

    TAG: ClassVar[int] = 0
    HEADER: ClassVar[tuple[str, ...]] = ()
    BODY: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.HEADER + self.BODY)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Message)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.HEADER + self.BODY)
        return f"{self.__class__.__name__}({fields})"


class Call(Message):
    __slots__ = ("args", "f", "id", "kwargs", "whence")
    __match_args__ = ("whence", "id", "f", "args", "kwargs")

    TAG: ClassVar[int] = 1
    HEADER: ClassVar[tuple[str, ...]] = ("whence", "id")
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")

    def __init__(
        self,
        whence: int,
        id: int,
        f: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.whence = whence
        self.id = id
        self.f = f
        self.args = args
        self.kwargs = {} if kwargs is None else kwargs


class CallFetch(Message):
    __slots__ = ("args", "f", "kwargs", "response_id")
    __match_args__ = ("response_id", "f", "args", "kwargs")

    TAG: ClassVar[int] = 2
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")

    def __init__(
        self,
        response_id: int,
        f: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.response_id = response_id
        self.f = f
        self.args = args
        self.kwargs = {} if kwargs is None else kwargs


class CallWait(Message):
    __slots__ = ("args", "f", "id", "kwargs", "response_id", "whence")
    __match_args__ = ("response_id", "whence", "id", "f", "args", "kwargs")

    TAG: ClassVar[int] = 3
    HEADER: ClassVar[tuple[str, ...]] = ("response_id", "whence", "id")
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")

    def __init__(
        self,
        response_id: int,
        whence: int,
        id: int,
        f: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.response_id = response_id
        self.whence = whence
        self.id = id
        self.f = f
        self.args = args
        self.kwargs = {} if kwargs is None else kwargs


class RemoteDo(Message):
    __slots__ = ("args", "f", "kwargs")
    __match_args__ = ("f", "args", "kwargs")

    TAG: ClassVar[int] = 4
    BODY: ClassVar[tuple[str, ...]] = ("f", "args", "kwargs")

    def __init__(
        self,
        f: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.f = f
        self.args = args
        self.kwargs = {} if kwargs is None else kwargs


class Result(Message):
    """``ok`` is False when ``value`` is a ``CapturedException`` raised by the call."""

    __slots__ = ("ok", "response_id", "value")
    __match_args__ = ("response_id", "ok", "value")

    TAG: ClassVar[int] = 5
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("ok", "value")

    def __init__(self, response_id: int, ok: bool, value: Any) -> None:
        self.response_id = response_id
        self.ok = ok
        self.value = value


class RefCount(Message):
    """``adds``/``dels``: tuples ``(whence, id, client_pid)``; adds are applied first."""

    __slots__ = ("adds", "dels")
    __match_args__ = ("adds", "dels")

    TAG: ClassVar[int] = 6
    BODY: ClassVar[tuple[str, ...]] = ("adds", "dels")

    def __init__(
        self,
        adds: tuple[tuple[int, int, int], ...] = (),
        dels: tuple[tuple[int, int, int], ...] = (),
    ) -> None:
        self.adds = adds
        self.dels = dels


class JoinPGRP(Message):
    """``peers``: ``(pid, host, port)`` of the workers the new one may connect to; ``keys``:
    ``(pid, key)``, the secret it shares with each of them alone (see ``Identify``)."""

    __slots__ = ("keys", "lazy", "master_host", "peers", "pid", "response_id", "topology")
    __match_args__ = ("response_id", "pid", "topology", "lazy", "peers", "master_host", "keys")

    TAG: ClassVar[int] = 7
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("pid", "topology", "lazy", "peers", "master_host", "keys")

    def __init__(
        self,
        response_id: int,
        pid: int,
        topology: str = "all_to_all",
        lazy: bool = True,
        peers: tuple[tuple[int, str, int], ...] = (),
        master_host: str = "",
        keys: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        self.response_id = response_id
        self.pid = pid
        self.topology = topology
        self.lazy = lazy
        self.peers = peers
        self.master_host = master_host
        self.keys = keys


class JoinComplete(Message):
    __slots__ = ("hostname", "ospid", "response_id")
    __match_args__ = ("response_id", "ospid", "hostname")

    TAG: ClassVar[int] = 8
    HEADER: ClassVar[tuple[str, ...]] = ("response_id",)
    BODY: ClassVar[tuple[str, ...]] = ("ospid", "hostname")

    def __init__(self, response_id: int, ospid: int, hostname: str = "") -> None:
        self.response_id = response_id
        self.ospid = ospid
        self.hostname = hostname


class Identify(Message):
    """``proof``: ``HMAC(key, "identify" | transcript)``, the key shared by the two workers (from
    the master) and the transcript of this connection's handshake."""

    __slots__ = ("pid", "proof")
    __match_args__ = ("pid", "proof")

    TAG: ClassVar[int] = 9
    HEADER: ClassVar[tuple[str, ...]] = ("pid",)
    BODY: ClassVar[tuple[str, ...]] = ("proof",)

    def __init__(self, pid: int, proof: bytes = b"") -> None:
        self.pid = pid
        self.proof = proof


class PeerUpdate(Message):
    """``added``: ``(pid, host, port)`` of workers that joined; ``keys``: ``(pid, key)`` as in
    ``JoinPGRP``, for the worker this update goes to."""

    __slots__ = ("added", "keys", "removed")
    __match_args__ = ("added", "removed", "keys")

    TAG: ClassVar[int] = 10
    BODY: ClassVar[tuple[str, ...]] = ("added", "removed", "keys")

    def __init__(
        self,
        added: tuple[tuple[int, str, int], ...] = (),
        removed: tuple[int, ...] = (),
        keys: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        self.added = added
        self.removed = removed
        self.keys = keys


class Interrupt(Message):
    __slots__ = ()
    __match_args__ = ()

    TAG: ClassVar[int] = 11


class Exit(Message):
    __slots__ = ()
    __match_args__ = ()

    TAG: ClassVar[int] = 12


class Ping(Message):
    """Are you there? Answered at once with ``Pong(nonce)`` by the reading thread."""

    __slots__ = ("nonce",)
    __match_args__ = ("nonce",)

    TAG: ClassVar[int] = 13
    HEADER: ClassVar[tuple[str, ...]] = ("nonce",)

    def __init__(self, nonce: int) -> None:
        self.nonce = nonce


class Pong(Message):
    __slots__ = ("nonce",)
    __match_args__ = ("nonce",)

    TAG: ClassVar[int] = 14
    HEADER: ClassVar[tuple[str, ...]] = ("nonce",)

    def __init__(self, nonce: int) -> None:
        self.nonce = nonce


class DialMe(Message):
    """A worker to the master: have worker ``pid`` (a higher id) connect to me; the master to
    that worker: connect to worker ``pid`` (``peerlinks.py``). A negative ``pid`` says that
    the connection could not be made, and ``refused`` why: from the worker that was to dial,
    ``-pid`` is the one that asked; from the master to that one, ``-pid`` is the one that
    could not dial it. (A peer that knows no ``refused`` reads a request for a process that
    does not exist, and does nothing.)"""

    __slots__ = ("pid", "refused")
    __match_args__ = ("pid", "refused")

    TAG: ClassVar[int] = 15
    HEADER: ClassVar[tuple[str, ...]] = ("pid",)
    BODY: ClassVar[tuple[str, ...]] = ("refused",)

    def __init__(self, pid: int, refused: str = "") -> None:
        self.pid = pid
        self.refused = refused


class MapCalls(Message):
    """Run ``f(*args)`` for each ``args`` of ``items``, one after another in arrival order, after
    the elements sent before on ``stream`` by the same process."""

    __slots__ = ("count", "f", "first", "items", "stream")
    __match_args__ = ("stream", "first", "count", "f", "items")

    TAG: ClassVar[int] = 16
    HEADER: ClassVar[tuple[str, ...]] = ("stream", "first", "count")
    BODY: ClassVar[tuple[str, ...]] = ("f", "items")

    def __init__(
        self,
        stream: int,
        first: int,
        count: int,
        f: Any,
        items: list[tuple[Any, ...]],
    ) -> None:
        self.stream = stream
        self.first = first
        self.count = count
        self.f = f
        self.items = items


class MapResults(Message):
    """The outcomes of elements ``first .. first + count - 1`` of ``stream``. ``oks[i]``: 1 for
    a value, 0 for a ``CapturedException``, 2 for an element dropped by ``MapCancel``;
    ``seconds``: how long the elements ran, together."""

    __slots__ = ("count", "first", "oks", "seconds", "stream", "values")
    __match_args__ = ("stream", "first", "count", "oks", "values", "seconds")

    TAG: ClassVar[int] = 17
    HEADER: ClassVar[tuple[str, ...]] = ("stream", "first", "count")
    BODY: ClassVar[tuple[str, ...]] = ("oks", "values", "seconds")

    def __init__(
        self,
        stream: int,
        first: int,
        count: int,
        oks: bytes,
        values: list[Any],
        seconds: float,
    ) -> None:
        self.stream = stream
        self.first = first
        self.count = count
        self.oks = oks
        self.values = values
        self.seconds = seconds


class MapCancel(Message):
    __slots__ = ("stream",)
    __match_args__ = ("stream",)

    TAG: ClassVar[int] = 18
    HEADER: ClassVar[tuple[str, ...]] = ("stream",)

    def __init__(self, stream: int) -> None:
        self.stream = stream


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
