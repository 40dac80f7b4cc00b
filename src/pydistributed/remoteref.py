"""Remote references: ``Future`` and ``RemoteChannel``, and the generic functions on them.

A reference names storage on one process, its owner ``where``, by an ``RRID(whence, id)``.
Its operations run on the owner, through ``remotecall_fetch`` of the small functions at the
bottom of this module (or directly, when the owner is this process). Every handle is counted
on the owner: a handle made here is announced, a handle sent to another process is announced
for that process by the sender before the message leaves, and a handle that is garbage
collected, or a ``Future`` whose value has been fetched and cached, is released. The owner
frees the storage when no process holds a handle any more.

A handle's finalizer only appends to a deque (it may run on any thread, at any bytecode, even
while that thread holds a lock the sender needs); the cluster's flusher sends the releases.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from . import codec
from .channels import AbstractChannel, Channel
from .cluster import Cluster, current_cluster
from .errors import ChannelClosedError, RemoteException
from .ids import RRID
from .refstore import Failure, FutureSlot
from .tasks import Task

__all__ = [
    "Future",
    "RemoteChannel",
    "channel_from_id",
    "fetch",
    "isready",
    "put",
    "remoteref_id",
    "take",
    "wait",
]

_NOTHING: Any = object()


class _RemoteRef:
    """What ``Future`` and ``RemoteChannel`` share: identity, counting, pickling."""

    __slots__ = ("__weakref__", "_cluster", "_released", "rrid", "where")

    _cluster: Cluster
    where: int
    rrid: RRID
    _released: bool

    def _init(self, cluster: Cluster, where: int, rrid: RRID) -> None:
        self._cluster = cluster
        self.where = where
        self.rrid = rrid
        self._released = False
        cluster.handles[rrid] = self

    @property
    def whence(self) -> int:
        """The process that created the reference."""
        return self.rrid.whence

    @property
    def id(self) -> int:
        """Unique among the references created on ``whence``."""
        return self.rrid.id

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _RemoteRef):
            return NotImplemented
        return (self.where, self.rrid) == (other.where, other.rrid)

    def __hash__(self) -> int:
        return hash((self.where, self.rrid))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(where={self.where}, whence={self.whence}, id={self.id})"

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._cluster.queue_release(self.where, self.rrid)

    def __del__(self) -> None:
        # may run on any thread at any time: only append to a deque
        try:
            if not self._released:
                self._released = True
                self._cluster.refq.append((self.where, self.rrid))
        except Exception:
            pass

    def __reduce__(self) -> tuple[Any, ...]:
        codec.note_ref(self)
        return (_rebuild, (type(self), self.where, self.rrid.whence, self.rrid.id))

    def _call(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run an owner-side operation on the owner."""
        c = self._cluster
        if self.where == c.myid:
            return f(*args)
        return c.call_fetch(self.where, f, args)


def _rebuild(cls: type[_RemoteRef], where: int, whence: int, id: int) -> _RemoteRef:
    """Unpickle a handle: one object per reference per process."""
    c = current_cluster()
    rrid = RRID(whence, id)
    existing = c.handles.get(rrid)
    if existing is not None and type(existing) is cls and not existing._released:
        # the sender counted one more handle for us; we keep using the one we have
        c.queue_release(where, rrid)
        c._ensure_flusher()
        return existing
    obj = cls.__new__(cls)
    obj._init(c, where, rrid)
    if isinstance(obj, Future):
        obj._value = _NOTHING
        obj._lock = threading.Lock()
    c._ensure_flusher()
    return obj


def _rebuild_fetched(where: int, whence: int, id: int, value: Any) -> Future:
    """Unpickle a Future whose value was already fetched: it carries the value, no handle."""
    fut = Future.__new__(Future)
    fut._cluster = current_cluster()
    fut.where = where
    fut.rrid = RRID(whence, id)
    fut._released = True
    fut._value = value
    fut._lock = threading.Lock()
    return fut


class Future(_RemoteRef):
    """A write-once reference to a value on process ``where``.

    ``Future(pid=None)`` makes an empty one on ``pid`` (this process by default), to be set
    once with :meth:`put`. ``remotecall`` returns one for its result. :meth:`fetch` waits for
    the value and caches it here; the remote copy is then released.
    """

    __slots__ = ("_lock", "_value")

    def __init__(self, pid: int | None = None) -> None:
        c = current_cluster()
        where = c.myid if pid is None else _check_pid(pid)
        rrid = RRID(c.myid, c.rrids.next())
        self._init(c, where, rrid)
        self._value = _NOTHING
        self._lock = threading.Lock()
        c.add_handle(where, rrid)

    @classmethod
    def _for_call(cls, cluster: Cluster, where: int, rrid: RRID) -> Future:
        """The handle of a call's result (the call itself counted it on the owner)."""
        fut = cls.__new__(cls)
        fut._init(cluster, where, rrid)
        fut._value = _NOTHING
        fut._lock = threading.Lock()
        cluster._ensure_flusher()
        return fut

    def __reduce__(self) -> tuple[Any, ...]:
        if self._value is not _NOTHING:
            return (_rebuild_fetched, (self.where, self.rrid.whence, self.rrid.id, self._value))
        return super().__reduce__()

    def _storage(self) -> FutureSlot:
        return _future_slot(self.rrid)

    @staticmethod
    def _unwrap(value: Any) -> Any:
        if isinstance(value, Failure):
            raise RemoteException(value.pid, value.captured)
        return value

    def fetch(self, timeout: float | None = None) -> Any:
        """Wait for the value and return it (cached here after the first time).

        Raises:
            RemoteException: the call that was to produce the value raised.
            ProcessExitedException: the owner has exited.
            TimeoutError: ``timeout`` seconds passed first.
        """
        if self._value is not _NOTHING:
            return self._unwrap(self._value)
        if self.where == self._cluster.myid:
            value = self._storage().fetch(timeout)
        else:
            if timeout is not None:
                self.wait(timeout)
            value = self._cluster.call_fetch(self.where, _fetch_ref, (self.rrid,))
        with self._lock:
            if self._value is _NOTHING:
                self._value = value
                if self.where != self._cluster.myid:
                    self._release()  # the value lives here now
        return self._unwrap(self._value)

    def wait(self, timeout: float | None = None) -> Future:
        """Block until the value is set (an error counts as set); returns the Future.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ProcessExitedException: the owner has exited.
        """
        if self._value is not _NOTHING:
            return self
        if self.where == self._cluster.myid:
            self._storage().wait(timeout)
        elif not self._call(_wait_ref, self.rrid, timeout):
            raise TimeoutError(f"{self!r} was not set within {timeout} s")
        return self

    def isready(self) -> bool:
        """Whether the value is set (asks the owner; True at once after a fetch)."""
        if self._value is not _NOTHING:
            return True
        return bool(self._call(_isready_ref, self.rrid))

    def put(self, value: Any) -> Future:
        """Set the value, once. Raises ``RuntimeError`` if it was set already."""
        if self.where == self._cluster.myid:
            self._storage().put(value)
        else:
            self._cluster.call_fetch(self.where, _put_ref, (self.rrid, codec.oob(value)))
        return self

    def done(self) -> bool:
        """Alias of :meth:`isready`."""
        return self.isready()

    def _sync_wait(self, timeout: float | None = None) -> BaseException | None:
        try:
            if self._value is not _NOTHING:
                value = self._value
            elif self.where == self._cluster.myid:
                value = self._storage().fetch(timeout)
            else:
                ready, value = self._cluster.call_fetch(
                    self.where, _status_ref, (self.rrid, timeout)
                )
                if not ready:
                    raise TimeoutError(f"{self!r} was not set within {timeout} s")
        except TimeoutError:
            raise
        except Exception as e:
            return e
        if isinstance(value, Failure):
            return RemoteException(value.pid, value.captured)
        return None


class RemoteChannel(_RemoteRef):
    """A reference to a channel on process ``where``.

    ``RemoteChannel(pid=None)`` makes a ``Channel(1)`` on ``pid``;
    ``RemoteChannel(f, pid=None)`` runs ``f()`` on ``pid`` and uses the channel it returns
    (anything with the ``AbstractChannel`` methods).
    """

    __slots__ = ()

    def __init__(self, f: Callable[[], Any] | int | None = None, pid: int | None = None) -> None:
        if f is not None and not callable(f):
            if pid is not None:
                raise TypeError("RemoteChannel(f, pid): f must be callable")
            f, pid = None, f
        c = current_cluster()
        where = c.myid if pid is None else _check_pid(pid)
        rrid = RRID(c.myid, c.rrids.next())
        if where == c.myid:
            _make_channel(rrid, c.myid, f)
        else:
            c.call_fetch(where, _make_channel, (rrid, c.myid, f))
        self._init(c, where, rrid)
        c._ensure_flusher()

    def put(self, value: Any, timeout: float | None = None) -> RemoteChannel:
        """Put ``value`` (blocks while the channel is full); returns the RemoteChannel."""
        v = value if self.where == self._cluster.myid else codec.oob(value)
        _raise_marker(self._call(_put_ch, self.rrid, v, timeout))
        return self

    def take(self, timeout: float | None = None) -> Any:
        """Remove and return the first value (blocks until there is one)."""
        return _raise_marker(self._call(_take_ch, self.rrid, timeout))

    def fetch(self, timeout: float | None = None) -> Any:
        """Return the first value without removing it (blocks until there is one)."""
        return _raise_marker(self._call(_fetch_ch, self.rrid, timeout))

    def isready(self) -> bool:
        return bool(self._call(_isready_ch, self.rrid))

    def wait(self, timeout: float | None = None) -> RemoteChannel:
        """Block until a value is available."""
        _raise_marker(self._call(_wait_ch, self.rrid, timeout))
        return self

    def close(self) -> None:
        self._call(_close_ch, self.rrid)

    def isopen(self) -> bool:
        return bool(self._call(_isopen_ch, self.rrid))

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                yield self.take()
            except ChannelClosedError:
                return


def _check_pid(pid: Any) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"a process id is an int, not {type(pid).__name__}")
    return pid


# -- the generic functions -------------------------------------------------------------


def fetch(x: Any, timeout: float | None = None) -> Any:
    """Wait for and return the value of a Future, RemoteChannel, Channel or Task.

    Anything else is returned unchanged, as in Julia.
    """
    if isinstance(x, (_RemoteRef, AbstractChannel, Task)):
        return x.fetch(timeout)
    return x


def put(rr: Any, value: Any, timeout: float | None = None) -> Any:
    """``rr.put(value)``; returns ``rr``."""
    if timeout is None:
        rr.put(value)
    else:
        rr.put(value, timeout)
    return rr


def take(rr: Any, timeout: float | None = None) -> Any:
    """``rr.take()``: remove and return the first value."""
    return rr.take(timeout)


def isready(rr: Any) -> bool:
    """``rr.isready()``."""
    return bool(rr.isready())


def wait(x: Any, timeout: float | None = None) -> Any:
    """Block until ``x`` (a Future, RemoteChannel, Channel or Task) is ready; returns ``x``."""
    x.wait(timeout)
    return x


def remoteref_id(r: _RemoteRef) -> RRID:
    """The ``RRID(whence, id)`` of a Future or RemoteChannel."""
    return r.rrid


def channel_from_id(rrid: RRID) -> Any:
    """The storage behind ``rrid`` on this process: the channel (or a Future's slot).

    Raises:
        KeyError: no such storage here (it lives elsewhere, or was freed).
    """
    storage = current_cluster().refs.lookup(RRID(*rrid))
    if storage is None:
        raise KeyError(f"no storage for {rrid!r} on process {current_cluster().myid}")
    return storage


# -- owner-side operations (run on ``where``; pickled by reference) --------------------

_TIMEOUT = "__pydist_timeout__"
_CLOSED = "__pydist_closed__"


class _Marker:
    __slots__ = ("kind", "message")

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Marker, (self.kind, self.message))


def _raise_marker(value: Any) -> Any:
    if isinstance(value, _Marker):
        if value.kind == _TIMEOUT:
            raise TimeoutError(value.message)
        raise ChannelClosedError(value.message)
    return value


def _internal(f: Callable[..., Any]) -> Callable[..., Any]:
    f._pydist_internal = True  # type: ignore[attr-defined]  # never on the main thread
    return f


def _future_slot(rrid: RRID) -> FutureSlot:
    c = current_cluster()
    storage = c.refs.lookup(rrid)
    if storage is None:
        storage = c.refs.ensure(rrid)
    return storage  # type: ignore[no-any-return]


def _channel(rrid: RRID) -> Any:
    storage = current_cluster().refs.lookup(rrid)
    if storage is None:
        raise KeyError(f"no channel {rrid!r} on process {current_cluster().myid} (freed?)")
    return storage


def _guard(op: Callable[[], Any]) -> Any:
    try:
        return op()
    except TimeoutError as e:
        return _Marker(_TIMEOUT, str(e) or "timed out")
    except ChannelClosedError as e:
        return _Marker(_CLOSED, str(e) or "the channel is closed")


@_internal
def _fetch_ref(rrid: RRID) -> Any:
    return _future_slot(rrid).fetch()


@_internal
def _wait_ref(rrid: RRID, timeout: float | None) -> bool:
    try:
        _future_slot(rrid).wait(timeout)
        return True
    except TimeoutError:
        return False


@_internal
def _status_ref(rrid: RRID, timeout: float | None) -> tuple[bool, Failure | None]:
    slot = _future_slot(rrid)
    try:
        value = slot.fetch(timeout)
    except TimeoutError:
        return False, None
    return True, value if isinstance(value, Failure) else None


@_internal
def _isready_ref(rrid: RRID) -> bool:
    c = current_cluster()
    storage = c.refs.lookup(rrid)
    if storage is None:
        return False
    return bool(storage.isready())


@_internal
def _put_ref(rrid: RRID, value: Any) -> None:
    _future_slot(rrid).put(value)


@_internal
def _make_channel(rrid: RRID, client: int, f: Callable[[], Any] | None) -> None:
    ch = Channel(1) if f is None else f()
    for method in ("put", "take", "fetch", "isready", "wait"):
        if not callable(getattr(ch, method, None)):
            raise TypeError(
                f"RemoteChannel(f): f() returned a {type(ch).__name__}, which has no "
                f"{method}() method (expected an AbstractChannel)"
            )
    current_cluster().refs.add(rrid, client, make=lambda: ch)


@_internal
def _put_ch(rrid: RRID, value: Any, timeout: float | None) -> Any:
    ch = _channel(rrid)
    return _guard(lambda: ch.put(value) if timeout is None else ch.put(value, timeout))


@_internal
def _take_ch(rrid: RRID, timeout: float | None) -> Any:
    ch = _channel(rrid)
    return _guard(lambda: ch.take() if timeout is None else ch.take(timeout))


@_internal
def _fetch_ch(rrid: RRID, timeout: float | None) -> Any:
    ch = _channel(rrid)
    return _guard(lambda: ch.fetch() if timeout is None else ch.fetch(timeout))


@_internal
def _wait_ch(rrid: RRID, timeout: float | None) -> Any:
    ch = _channel(rrid)
    return _guard(lambda: ch.wait() if timeout is None else ch.wait(timeout))


@_internal
def _isready_ch(rrid: RRID) -> bool:
    return bool(_channel(rrid).isready())


@_internal
def _close_ch(rrid: RRID) -> None:
    _channel(rrid).close()


@_internal
def _isopen_ch(rrid: RRID) -> bool:
    ch = _channel(rrid)
    isopen = getattr(ch, "isopen", None)
    return True if isopen is None else bool(isopen())
