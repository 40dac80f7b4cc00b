"""Julia's generic functions on references, channels and tasks: ``fetch``, ``put``, ``take``,
``isready``, ``wait``, and ``remoteref_id``, ``channel_from_id``.

Each also exists as a method of the objects it applies to (``fut.fetch()``); the function form
is Julia's spelling, and ``fetch(x)`` of anything that is not a reference returns ``x``.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, overload

from .channels import AbstractChannel
from .cluster import current_cluster
from .ids import RRID
from .remoteref import Future, RemoteChannel, _RemoteRef
from .tasks import Task
from .timeouts import check_timeout

__all__ = [
    "channel_from_id",
    "fetch",
    "isready",
    "put",
    "remoteref_id",
    "take",
    "wait",
]

T = TypeVar("T")
X = TypeVar("X")


class _Puttable(Protocol):
    def put(self, value: Any, /) -> object: ...


class _Waitable(Protocol):
    def wait(self) -> object: ...


PutT = TypeVar("PutT", bound=_Puttable)
WaitT = TypeVar("WaitT", bound=_Waitable)


@overload
def fetch(x: Future[T], timeout: float | None = None) -> T: ...
@overload
def fetch(x: RemoteChannel[T], timeout: float | None = None) -> T: ...
@overload
def fetch(x: AbstractChannel[T], timeout: float | None = None) -> T: ...
@overload
def fetch(x: Task[T], timeout: float | None = None) -> T: ...
@overload
def fetch(x: X, timeout: float | None = None) -> X: ...


def fetch(x: Any, timeout: float | None = None) -> Any:
    """Wait for and return the value of a Future, RemoteChannel, Channel or Task.

    Anything else is returned unchanged, as in Julia. On a channel the value is not removed.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
        RemoteException: a Future's call raised.
    """
    timeout = check_timeout(timeout)
    if isinstance(x, (Future, RemoteChannel, AbstractChannel, Task)):
        return x.fetch(timeout)
    return x


@overload
def put(rr: AbstractChannel[T], value: T, timeout: float | None = None) -> T: ...
@overload
def put(rr: PutT, value: Any, timeout: float | None = None) -> PutT: ...


def put(rr: Any, value: Any, timeout: float | None = None) -> Any:
    """``rr.put(value)`` on a Future, RemoteChannel or Channel; returns ``rr`` (a Future or
    RemoteChannel) or ``value`` (a local channel), as Julia's ``put!`` does.

    ``timeout`` applies to channels (a Future never blocks a put).
    """
    if check_timeout(timeout) is None:
        rr.put(value)
    else:
        rr.put(value, timeout)  # a channel's put takes a timeout
    return value if isinstance(rr, AbstractChannel) else rr


@overload
def take(rr: RemoteChannel[T], timeout: float | None = None) -> T: ...
@overload
def take(rr: AbstractChannel[T], timeout: float | None = None) -> T: ...
@overload
def take(rr: Any, timeout: float | None = None) -> Any: ...
def take(rr: Any, timeout: float | None = None) -> Any:
    """``rr.take()`` on a RemoteChannel or Channel: remove and return the first value."""
    if check_timeout(timeout) is None:
        return rr.take()
    return rr.take(timeout)


def isready(rr: Any) -> bool:
    """Whether a Future is set or a channel has a value (a Task: whether it is done)."""
    if isinstance(rr, Task):
        return rr.done()
    return bool(rr.isready())


def wait(x: WaitT, timeout: float | None = None) -> WaitT:
    """Block until ``x`` (a Future, RemoteChannel, Channel or Task) is ready; returns ``x``.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    if check_timeout(timeout) is None:
        x.wait()
    else:
        x.wait(timeout)  # type: ignore[call-arg]
    return x


def remoteref_id(r: _RemoteRef) -> RRID:
    """The ``RRID(whence, id)`` of a Future or RemoteChannel."""
    if not isinstance(r, _RemoteRef):
        raise TypeError(f"remoteref_id() takes a Future or RemoteChannel, not {type(r).__name__}")
    return r.rrid


def channel_from_id(rrid: RRID | tuple[int, int]) -> Any:
    """The storage behind ``rrid`` on this process: the channel (or a Future's slot).

    Valid only on the process that holds it (the reference's ``where``).

    Raises:
        TypeError: ``rrid`` is not an ``RRID`` (or a pair of ints: ``(whence, id)``).
        KeyError: no such storage here (it lives elsewhere, or was freed).
    """
    if not (
        isinstance(rrid, tuple)
        and len(rrid) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in rrid)
    ):
        raise TypeError(
            "channel_from_id(rrid): rrid must be an RRID, as remoteref_id(rc) gives, not "
            f"{type(rrid).__name__} ({rrid!r})"
        )
    c = current_cluster()
    storage = c.refs.lookup(RRID(*rrid))
    if storage is None:
        raise KeyError(f"no storage for {RRID(*rrid)!r} on process {c.myid} (elsewhere, or freed)")
    return storage
