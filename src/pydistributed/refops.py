"""The owner's side of remote references: the operations a ``Future`` or ``RemoteChannel``
handle asks its owner to run.

Each operation here is called on the owner (``where``) with the reference's key, by a
``remotecall_fetch`` from the handle's process (or directly when that is the owner)::

    any process                          the owner (where)
    -----------                          -----------------
    rc.take()  -- CallFetch(take_ch) --> an executor thread: channel.take(), in slices of
                                         POLL seconds while blocked, given up if the caller
                                         is gone
               <----------- Result ---- the value (or a marker: timed out, closed, gone)

They are the runtime's own operations (``dispatch.is_internal``): never interrupted, never on
a worker's main thread. They take the reference's key, its RRID as a plain tuple, which finds
the same storage entry and costs less to pickle than the named tuple. A blocking operation
returns a :class:`Marker` instead of raising across the wire, so that the caller raises the
right exception itself (:func:`raise_marker`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from . import codec
from .channels import AbstractChannel, Channel
from .cluster import Cluster, current_cluster
from .dispatch import LATER
from .errors import ChannelClosedError
from .ids import RRID
from .leasemark import MarkReader
from .refstore import Failure, FutureSlot
from .timeouts import seconds

__all__ = [
    "MAX_CREDIT",
    "POLL",
    "Marker",
    "close_ch",
    "fetch_ch",
    "fetch_ref",
    "isopen_ch",
    "isready_ch",
    "isready_ref",
    "lease_end",
    "lease_take",
    "make_channel",
    "put_ch",
    "put_ref",
    "raise_marker",
    "status_ref",
    "stream_open",
    "stream_put",
    "take_ch",
    "wait_ch",
]

# How often an owner-side operation that blocks checks that its caller is still there.
POLL = 0.25

_TIMEOUT = "timeout"
_CLOSED = "closed"
_GONE = "gone"
_CANCELLED = "cancelled"


class Marker:
    """An outcome of an owner-side operation that the caller turns into an exception."""

    __slots__ = ("kind", "message")

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (Marker, (self.kind, self.message))


def raise_marker(value: Any) -> Any:
    """``value`` itself, unless it is a :class:`Marker`: then raise what it stands for.

    Raises:
        TimeoutError: the operation timed out.
        ChannelClosedError: the channel is closed.
    """
    if isinstance(value, Marker):
        if value.kind == _TIMEOUT:
            raise TimeoutError(value.message)
        if value.kind == _CLOSED:
            raise ChannelClosedError(value.message)
        if value.kind == _CANCELLED:
            raise KeyboardInterrupt  # the caller's Ctrl-C cancelled it, which did nothing
        raise RuntimeError(value.message)  # _GONE: only ever sent to a caller that is gone
    return value


def _internal(f: Callable[..., Any]) -> Callable[..., Any]:
    f._pydist_internal = True  # type: ignore[attr-defined]  # see dispatch.is_internal
    return f


@_internal
def cancel_request(caller: int, rid: int) -> None:
    """Run by ``RemoteDo``: ``caller`` cancels its request ``rid`` (a channel operation that
    waits here), which answers a ``_CANCELLED`` marker at its next slice, having done
    nothing; one that has done its work answers as usual."""
    current_cluster().dispatch.requests.cancel((caller, rid))


def _cancellable(f: Callable[..., Any]) -> Callable[..., Any]:
    """A channel operation: the caller's Ctrl-C cancels it (see ``calls.wait_answer``), where
    a call would interrupt the owner's calls (a Future's fetch does: what it waits for may be
    a call running there, which Ctrl-C means to stop)."""
    f.cancel_with = cancel_request  # type: ignore[attr-defined]
    f.is_cancelled = _is_cancelled  # type: ignore[attr-defined]
    return f


def _is_cancelled(value: Any) -> bool:
    """Whether an operation's answer says that its caller's cancel came first."""
    return isinstance(value, Marker) and value.kind == _CANCELLED


def future_slot(c: Cluster, key: tuple[int, int]) -> FutureSlot:
    """The storage of the Future ``key`` on its owner ``c``, made if the operation arrived
    before the call that makes it (they may come from different processes)."""
    slot = c.refs.lookup(key)
    if slot is None:
        slot = c.refs.ensure(RRID(*key))
    return slot  # type: ignore[no-any-return]


def _channel(c: Cluster, key: tuple[int, int]) -> Any:
    storage = c.refs.lookup(key)
    if storage is None:
        raise KeyError(f"no channel {RRID(*key)!r} on process {c.myid} (freed?)")
    return storage


def _blocking(
    c: Cluster, method: Callable[..., Any], args: tuple[Any, ...], t: float | None, caller: int
) -> Any:
    """``method(*args, t)`` for ``caller``: in slices of ``POLL`` s while the caller is remote.

    A caller that is gone cannot receive the answer: its operation gives up (returning a
    ``_GONE`` marker) rather than take a value, or put one, that nobody will see. Raises what
    ``method`` raises (``TimeoutError`` once ``t`` seconds have passed).
    """
    if caller == c.myid:
        return method(*args, t)
    deadline = None if t is None else time.monotonic() + max(t, 0.0)
    while True:
        step = POLL
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= step:
                return method(*args, remaining)
        if c.dispatch.requests.cancelled():
            return Marker(_CANCELLED, "cancelled by its caller")
        try:
            return method(*args, step)
        except TimeoutError:
            if c.connections.is_gone(caller):
                return Marker(_GONE, f"process {caller} is gone")


# -- Futures ------------------------------------------------------------------------------------


@_internal
def fetch_ref(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    """``(True, value)``, ``(False, None)`` on a timeout, or a marker."""
    c = current_cluster()
    try:
        value = _blocking(c, future_slot(c, key).fetch, (), timeout, caller)
    except TimeoutError:
        return False, None
    return value if isinstance(value, Marker) else (True, value)


@_internal
def status_ref(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    """Like :func:`fetch_ref`, but the value only when it is a failure (``wait``, ``sync``)."""
    c = current_cluster()
    try:
        value = _blocking(c, future_slot(c, key).fetch, (), timeout, caller)
    except TimeoutError:
        return False, None
    if isinstance(value, Marker):
        return value
    return True, value if isinstance(value, Failure) else None


# their answers carry the Future's value: an error names it (dispatch.reply)
fetch_ref._pydist_pair = status_ref._pydist_pair = True  # type: ignore[attr-defined]


@_internal
def isready_ref(key: tuple[int, int]) -> bool:
    storage = current_cluster().refs.lookup(key)
    return storage is not None and bool(storage.isready())


@_internal
def put_ref(key: tuple[int, int], value: Any) -> bool:
    """Set the Future's value; False if it was set already."""
    return future_slot(current_cluster(), key).try_put(value)


# -- channels -----------------------------------------------------------------------------------


@_internal
def make_channel(key: tuple[int, int], client: int, f: Callable[[], Any] | None) -> None:
    """Make the channel of a new RemoteChannel: ``Channel(1)``, or what ``f()`` returns."""
    ch = Channel(1) if f is None else f()
    for method in ("put", "take", "fetch", "isready", "wait"):
        if not callable(getattr(ch, method, None)):
            raise TypeError(
                f"RemoteChannel(f): f() returned a {type(ch).__name__}, which has no "
                f"{method}() method (expected an AbstractChannel)"
            )
    current_cluster().refs.add(RRID(*key), client, make=lambda: ch)


def _channel_op(
    name: str, key: tuple[int, int], timeout: float | None, caller: int, *args: Any
) -> Any:
    """``ch.<name>(*args)`` for ``caller``; a timeout or a closed channel becomes a marker.

    An ``AbstractChannel`` takes a timeout, so it is polled (see ``_blocking``); a channel of
    the user's own that is not one gets a timeout only when the caller gave one.
    """
    c = current_cluster()
    ch = _channel(c, key)
    method = getattr(ch, name)
    if name == "take" and caller != c.myid and isinstance(ch, Channel):
        method, args = ch._take, (_Encoded,)  # see take_ch
    try:
        if isinstance(ch, AbstractChannel):
            return _blocking(c, method, args, timeout, caller)
        return method(*args) if timeout is None else method(*args, timeout)
    except TimeoutError:
        # (the caller's timeout, not the slice of it that ran out here)
        waited = seconds(max(0.0, timeout)) if timeout is not None else "?"
        return Marker(_TIMEOUT, f"{type(ch).__name__}.{name} timed out after {waited} s")
    except ChannelClosedError as e:
        return Marker(_CLOSED, str(e) or "the channel is closed")


def _at_once(now: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a channel operation a form that runs on the owner's reading thread when it can
    finish at once (``dispatch``: ``f._pydist_now``), without the hand-off to a pool thread:
    ``now(*args)`` does the whole operation and returns its answer, or does nothing and
    returns ``dispatch.LATER`` (it would wait, the channel is not one of ours, the value is not
    small), and the operation then runs as usual. It never blocks, nor runs user code."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f._pydist_now = now  # type: ignore[attr-defined]
        return f

    return mark


def _our_channel(key: tuple[int, int]) -> Channel | None:
    ch = current_cluster().refs.lookup(key)
    return ch if type(ch) is Channel else None


def _put_now(key: tuple[int, int], value: Any, timeout: float | None, caller: int) -> Any:
    ch = _our_channel(key)
    if ch is None or not ch._put_now([value]):
        return LATER
    return None  # stored (as put_ch answers)


def _same(value: Any) -> Any:
    return value


def _take_now(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    # a small value is immutable (codec.small): it needs no copy made at the take (_Encoded)
    ch = _our_channel(key)
    value = LATER if ch is None else ch._take_now(codec.small, _same, LATER)
    return value


def _lease_take_now(
    key: tuple[int, int], cid: int, seq: int, n: int, used: int, mark: str | None, caller: int
) -> Any:
    ch = _our_channel(key)
    if ch is None:
        return LATER
    value = ch._take_now(codec.small, _same, LATER)
    if value is LATER:
        return LATER
    values = [value, *ch._take_more(_ahead(ch, n) - 1, codec.small)] if n > 1 else [value]
    return _lease_hold(ch, (caller, cid, seq, used, mark), values, values)


def _ahead(ch: Any, n: int) -> int:
    """How many values one request of a consumer may take: ``n``, at most half the size of a
    bounded channel (at least 1)."""
    size = getattr(ch, "size", 0)
    if isinstance(size, int) and not isinstance(size, bool):
        return max(1, min(n, size // 2))
    return max(1, n)


def _lease_hold(ch: Any, who: tuple[Any, ...], plain: list[Any], values: list[Any]) -> Any:
    """Keep ``plain`` as the consumer's lease; answer ``(values, marked)`` (``marked``: the
    owner holds the consumer's used mark), or give them back if it has ended."""
    caller, cid, seq, used, path = who
    c = current_cluster()
    mark = None
    try:
        if path is not None:
            try:
                mark = MarkReader(path)
            except (OSError, ValueError, TypeError):
                mark = None  # another host, or no /dev/shm: the consumer reports every value
        held = c.refs.leases.hold(caller, cid, ch, seq, plain, used, mark)
    except BaseException:  # nothing was kept: the values go back before the error is told
        c.refs.give_back(ch, plain)
        raise
    if not held:
        c.refs.give_back(ch, plain)
        return Marker(_CANCELLED, "the consumer has ended")
    return values, mark is not None


def _stream_put_now(key: tuple[int, int], values: list[Any], caller: int) -> Any:
    ch = _our_channel(key)
    if ch is None or not ch._put_now(values):
        return LATER
    return (len(values), None)


@_at_once(_put_now)
@_cancellable
@_internal
def put_ch(key: tuple[int, int], value: Any, timeout: float | None, caller: int) -> Any:
    marker = _channel_op("put", key, timeout, caller, value)
    return marker if isinstance(marker, Marker) else None


class _Encoded:
    """A value pickled when it was taken: it travels as those bytes (a rendezvous ``put``
    returns once the taker has the value as it was; see :func:`take_ch`)."""

    __slots__ = ("data",)

    def __init__(self, value: Any) -> None:
        self.data = codec.dumps(value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (codec.loads, (self.data,))


@_at_once(_take_now)
@_cancellable
@_internal
def take_ch(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    """``take`` for ``caller``. For a caller on another process, a ``Channel`` of ours encodes
    the value as it takes it (``_Encoded``): the answer is sent after the take returns, and by
    then the putter, which the take released, may have changed the value."""
    return _channel_op("take", key, timeout, caller)


@_cancellable
@_internal
def fetch_ch(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    return _channel_op("fetch", key, timeout, caller)


@_cancellable
@_internal
def wait_ch(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    marker = _channel_op("wait", key, timeout, caller)
    return marker if isinstance(marker, Marker) else None


# -- streams (channelstream.py) ------------------------------------------------------------------

# The most values a stream may have in flight, whatever the channel's size.
MAX_CREDIT = 1024


@_internal
def stream_open(key: tuple[int, int]) -> Any:
    """The credit of a new stream into the channel ``key``: how many values its producer may
    have in flight (sent, not yet stored). The channel's free capacity when empty: its size
    (at most ``MAX_CREDIT``), 1 for an unbuffered channel or one of the user's own without a
    ``size``, ``MAX_CREDIT`` for an unbounded one.

    A closed channel answers a ``_CLOSED`` marker.
    """
    ch = _channel(current_cluster(), key)
    isopen = getattr(ch, "isopen", None)
    if isopen is not None and not isopen():
        return Marker(_CLOSED, "stream on a closed channel")
    size = getattr(ch, "size", None)
    if isinstance(size, (int, float)) and not isinstance(size, bool) and size >= 1:
        return int(min(size, MAX_CREDIT))
    return 1


@_at_once(_stream_put_now)
@_internal
def stream_put(key: tuple[int, int], values: list[Any], caller: int) -> tuple[int, Any]:
    """Store a stream's batch ``values`` in order, each waiting its turn for room as a ``put``
    does; answer once every one is stored (which gives the producer its credit back), as
    ``(len(values), None)``, or ``(n, marker)`` when only the first ``n`` were: the channel
    closed (a ``_CLOSED`` marker), or the producer is gone or cancelled it (the rest is
    dropped: nobody will hear of it)."""
    c = current_cluster()
    ch = _channel(c, key)
    some = ch._put_some if isinstance(ch, Channel) else None
    done, n = 0, len(values)
    try:
        while done < n:
            if some is not None:
                got = _blocking(c, some, (values, done), None, caller)
            else:
                got = _blocking(c, _put_one(ch), (values[done],), None, caller)
            if isinstance(got, Marker):
                return done, got
            done += got
    except ChannelClosedError as e:
        return done, Marker(_CLOSED, str(e) or "the channel is closed")
    return done, None


def _put_one(ch: Any) -> Callable[..., int]:
    def put(value: Any, timeout: float | None) -> int:
        if isinstance(ch, AbstractChannel):
            ch.put(value, timeout)
        else:
            ch.put(value)  # a channel of the user's own without a timeout: may block
        return 1

    return put


# -- consumers that take values ahead (channelconsumer.py) ------------------------------------


@_at_once(_lease_take_now)
@_cancellable
@_internal
def lease_take(
    key: tuple[int, int], cid: int, seq: int, n: int, used: int, mark: str | None, caller: int
) -> Any:
    """Takes ``seq``, ``seq + 1``... of ``caller``'s consumer ``cid``: waits for one value,
    then takes up to ``n - 1`` more that are there now (at most half a bounded channel's size,
    and leaving one for each taker waiting there), and keeps them here (a lease) until the
    consumer says it used them (``used``, in its next request, its end, or its used mark
    ``mark``, a path given with its first request: ``leasemark``). Answers ``(values,
    marked)`` or a marker. A consumer that has ended or exited meanwhile gets nothing: the
    values go back."""
    c = current_cluster()
    ch = _channel(c, key)
    value = _channel_op("take", key, None, caller)
    if isinstance(value, Marker):
        return value
    plain = codec.loads(value.data) if isinstance(value, _Encoded) else value
    more = ch._take_more(_ahead(ch, n) - 1, None) if n > 1 and isinstance(ch, Channel) else []
    return _lease_hold(ch, (caller, cid, seq, used, mark), [plain, *more], [value, *more])


@_internal
def lease_end(key: tuple[int, int], cid: int, used: int, pending: bool, caller: int) -> int:
    """``caller``'s consumer ``cid`` ended having used its takes up to ``used``: the values
    it took after that go back to the front of the channel, in order; returns how many.
    ``pending``: a take of it may still come (cancelled): it will find the consumer ended."""
    c = current_cluster()
    ch, left = c.refs.leases.end(caller, cid, used, pending)
    if left:
        c.refs.give_back(ch, left)
    return len(left)


@_internal
def isready_ch(key: tuple[int, int]) -> bool:
    return bool(_channel(current_cluster(), key).isready())


@_internal
def close_ch(key: tuple[int, int]) -> None:
    _channel(current_cluster(), key).close()


@_internal
def isopen_ch(key: tuple[int, int]) -> bool:
    isopen = getattr(_channel(current_cluster(), key), "isopen", None)
    return True if isopen is None else bool(isopen())
