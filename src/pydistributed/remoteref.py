"""Remote references: ``Future`` and ``RemoteChannel``, the generic functions on them, ``clear``.

A reference names storage on one process, its owner ``where``, by an ``RRID(whence, id)``.
Its operations run on the owner, through ``call_fetch`` of the small functions at the bottom
of this module (or directly, when the owner is this process)::

    any process                          the owner (where)
    -----------                          -----------------
    rc.take()  -- CallFetch(_take_ch) -> an executor thread: channel.take(), polled every
                                         0.25 s while blocked, given up if the caller is gone
               <----------- Result ---- the value (or a marker: timed out, closed)

Every handle is counted on the owner, per holding process:

* a handle made here is announced to the owner (``Future(pid)``: an add-client notice;
  ``RemoteChannel(pid)`` and ``remotecall``: the creating call counts it);
* a handle pickled into a message is announced for the receiving process by the sender,
  before the message leaves (``codec.note_ref`` and ``Cluster._announce``); the receiver
  that already holds that reference keeps the object it has and releases the extra count,
  so a reference is one object per process;
* a handle that is garbage collected, or a ``Future`` whose value has been fetched (or put)
  and is cached here, is released: its finalizer only appends to the cluster's deque (it may
  run on any thread, at any bytecode, even while that thread holds a lock the sender needs),
  and the cluster's flusher sends the releases in batches every 50 ms;
* the owner frees the storage when no process holds a handle any more, and forgets the
  handles of a process that has exited.

A handle pickled outside a message (``pickle.dumps`` by hand, ``copy.copy``) is not counted
by the sender; the process that unpickles it announces itself instead.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import codec
from .channels import AbstractChannel, Channel
from .cluster import Cluster, current_cluster
from .errors import ChannelClosedError, CompositeException
from .ids import RRID
from .refstore import Failure, FutureSlot
from .tasks import Task

__all__ = [
    "Future",
    "RemoteChannel",
    "channel_from_id",
    "clear",
    "fetch",
    "isready",
    "put",
    "remoteref_id",
    "take",
    "wait",
]

_NOTHING: Any = object()

# How often an owner-side operation that blocks checks that its caller is still there.
_POLL = 0.25


class _RemoteRef:
    """What ``Future`` and ``RemoteChannel`` share: identity, counting, pickling."""

    __slots__ = ("__weakref__", "_cluster", "_key", "_released", "rrid", "where")

    _cluster: Cluster
    where: int
    rrid: RRID
    _key: tuple[int, int]  # the rrid as a plain tuple: cheaper to pickle, equal as a dict key
    _released: bool

    def _init(self, cluster: Cluster, where: int, rrid: RRID) -> None:
        self._cluster = cluster
        self.where = where
        self.rrid = rrid
        self._key = (rrid.whence, rrid.id)
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

    def __copy__(self) -> _RemoteRef:
        # a handle is an identity; a copy would be a second, uncounted handle
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _RemoteRef:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # Inside a message, the sender announces the receiver's handle (note_ref); outside
        # one, nobody does, and the receiver must announce itself.
        counted = codec.encoding_target() is not None
        if counted:
            codec.note_ref(self)
        return (_rebuild, (type(self), self.where, self.rrid.whence, self.rrid.id, counted))

    def _call(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run an owner-side operation on the owner."""
        c = self._cluster
        if self.where == c.myid:
            return f(*args)
        return c.call_fetch(self.where, f, args)


def _handles_lock(c: Cluster) -> threading.Lock:
    """Serialises get-or-create of handles: two readers may unpickle one reference at once."""
    lock = c.extensions.get("remoteref.handles_lock")
    if lock is None:
        lock = c.extensions.setdefault("remoteref.handles_lock", threading.Lock())
    return lock  # type: ignore[no-any-return]


def _rebuild(
    cls: type[_RemoteRef], where: int, whence: int, id: int, counted: bool = True
) -> _RemoteRef:
    """Unpickle a handle: one object per reference per process."""
    c = current_cluster()
    rrid = RRID(whence, id)
    # Held only for a lookup and an insert: no I/O, and finalizers never take it.
    with _handles_lock(c):
        existing = c.handles.get(rrid)
        if (
            existing is not None
            and type(existing) is cls
            and (not existing._released or getattr(existing, "_value", _NOTHING) is not _NOTHING)
        ):
            obj = existing
        else:
            obj = cls.__new__(cls)
            if isinstance(obj, Future):
                obj._value = _NOTHING
                obj._lock = threading.Lock()
            obj._init(c, where, rrid)
            existing = None
    if existing is not None:
        if counted:
            # the sender counted one more handle for us; we keep using the one we have
            c.queue_release(where, rrid)
            c._ensure_flusher()
        return existing
    if not counted:
        if where == c.myid:
            c.refs.add(rrid, c.myid, make=None)
        else:
            c.add_handle(where, rrid)
    c._ensure_flusher()
    return obj


def _rebuild_fetched(where: int, whence: int, id: int, value: Any) -> Future:
    """Unpickle a Future whose value was already fetched: it carries the value, no count."""
    c = current_cluster()
    rrid = RRID(whence, id)
    with _handles_lock(c):
        existing = c.handles.get(rrid)
        if not isinstance(existing, Future):
            fut = Future.__new__(Future)
            fut._cluster = c
            fut.where = where
            fut.rrid = rrid
            fut._key = (whence, id)
            fut._released = True
            fut._value = value
            fut._lock = threading.Lock()
            c.handles[rrid] = fut
            return fut
    existing._cache(value)
    return existing


class Future(_RemoteRef):
    """A write-once reference to a value on process ``where``.

    ``Future(pid=None)`` makes an empty one on ``pid`` (this process by default), to be set
    once with :meth:`put`. ``remotecall`` returns one for its result. :meth:`fetch` waits for
    the value and caches it here; the remote copy is then released (so is it after a
    :meth:`put` from here, which caches the value too).

    Attributes:
        where: the process that stores the value.
        whence: the process that created the reference.
        id: unique among the references created on ``whence``.
    """

    __slots__ = ("_lock", "_value")

    _lock: threading.Lock
    _value: Any

    def __init__(self, pid: int | None = None) -> None:
        c = current_cluster()
        where = c.myid if pid is None else _check_pid(pid)
        rrid = RRID(c.myid, c.rrids.next())
        self._value = _NOTHING
        self._lock = threading.Lock()
        self._init(c, where, rrid)
        c.add_handle(where, rrid)
        c._ensure_flusher()

    @classmethod
    def _for_call(cls, cluster: Cluster, where: int, rrid: RRID) -> Future:
        """The handle of a call's result (the call itself counted it on the owner)."""
        fut = cls.__new__(cls)
        fut._value = _NOTHING
        fut._lock = threading.Lock()
        fut._init(cluster, where, rrid)
        cluster._ensure_flusher()
        return fut

    def __reduce__(self) -> tuple[Any, ...]:
        value = self._value
        if value is not _NOTHING:
            return (_rebuild_fetched, (self.where, self.rrid.whence, self.rrid.id, value))
        return super().__reduce__()

    def _slot(self) -> FutureSlot:
        return _future_slot(self._key)

    def _cache(self, value: Any) -> Any:
        """Keep ``value`` here (the first one wins) and release the remote copy."""
        with self._lock:
            if self._value is _NOTHING:
                self._value = value
                if self.where != self._cluster.myid:
                    self._release()  # the value lives here now
            return self._value

    @staticmethod
    def _unwrap(value: Any) -> Any:
        if isinstance(value, Failure):
            raise value.error()
        return value

    def fetch(self, timeout: float | None = None) -> Any:
        """Wait for the value and return it (cached here after the first time).

        Blocks until the value is set, on the owner.

        Raises:
            RemoteException: the call that was to produce the value raised.
            ProcessExitedException: the owner has exited (also while this call waits).
            TimeoutError: ``timeout`` seconds passed first.
        """
        value = self._value
        if value is _NOTHING:
            c = self._cluster
            if self.where == c.myid:
                value = self._slot().fetch(timeout)
            else:
                ready, value = _raise_marker(
                    c.call_fetch(self.where, _fetch_ref, (self._key, timeout, c.myid))
                )
                if not ready:
                    raise TimeoutError(f"{self!r} was not set within {timeout} s")
            value = self._cache(value)
        return self._unwrap(value)

    def wait(self, timeout: float | None = None) -> Future:
        """Block until the value is set (an error counts as set); returns the Future.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        if self._value is not _NOTHING:
            return self
        c = self._cluster
        if self.where == c.myid:
            self._slot().wait(timeout)
        elif not _raise_marker(c.call_fetch(self.where, _wait_ref, (self._key, timeout, c.myid))):
            raise TimeoutError(f"{self!r} was not set within {timeout} s")
        return self

    def isready(self) -> bool:
        """Whether the value is set (asks the owner; True at once once cached here)."""
        if self._value is not _NOTHING:
            return True
        return bool(self._call(_isready_ref, self._key))

    def put(self, value: Any) -> Future:
        """Set the value, once, and cache it here; returns the Future.

        Raises:
            RuntimeError: the value was set already (by anyone).
            ProcessExitedException: the owner has exited.
        """
        if self._value is not _NOTHING:
            raise RuntimeError("a Future can be set only once")
        c = self._cluster
        if self.where == c.myid:
            ok = self._slot().try_put(value)
        else:
            ok = c.call_fetch(self.where, _put_ref, (self._key, codec.oob(value)))
        if not ok:
            raise RuntimeError("a Future can be set only once")
        self._cache(value)
        return self

    def done(self) -> bool:
        """Alias of :meth:`isready`."""
        return self.isready()

    def _sync_wait(self, timeout: float | None = None) -> BaseException | None:
        c = self._cluster
        try:
            if self._value is not _NOTHING:
                value = self._value
            elif self.where == c.myid:
                value = self._slot().fetch(timeout)
            else:
                ready, value = _raise_marker(
                    c.call_fetch(self.where, _status_ref, (self._key, timeout, c.myid))
                )
                if not ready:
                    raise TimeoutError(f"{self!r} was not set within {timeout} s")
        except TimeoutError:
            raise
        except Exception as e:
            return e
        if isinstance(value, Failure):
            return value.error()
        return None


class RemoteChannel(_RemoteRef):
    """A reference to a channel on process ``where``.

    ``RemoteChannel(pid=None)`` makes a ``Channel(1)`` on ``pid`` (this process by default);
    ``RemoteChannel(f, pid=None)`` runs ``f()`` on ``pid`` and uses the channel it returns
    (anything with the ``AbstractChannel`` methods). Every operation runs on the owner, and
    may be called from any process the handle has been sent to.

    Attributes:
        where: the process that holds the channel.
        whence: the process that created the reference.
        id: unique among the references created on ``whence``.
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
            _make_channel((rrid.whence, rrid.id), c.myid, f)
        else:
            c.call_fetch(where, _make_channel, ((rrid.whence, rrid.id), c.myid, f))
        self._init(c, where, rrid)
        c._ensure_flusher()

    def _op(self, f: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking channel operation on the owner; raise what its marker says."""
        c = self._cluster
        if self.where == c.myid:
            return _raise_marker(f(self._key, *args, c.myid))
        return _raise_marker(c.call_fetch(self.where, f, (self._key, *args, c.myid)))

    def put(self, value: Any, timeout: float | None = None) -> RemoteChannel:
        """Put ``value`` into the channel; returns the RemoteChannel.

        Returns once the value is in the channel: blocks while the channel is full (or, for
        an unbuffered channel, until a taker has received it).

        Raises:
            ChannelClosedError: the channel is closed; the value was not added.
            TimeoutError: ``timeout`` seconds passed first; the value was not added.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        v = value if self.where == self._cluster.myid else codec.oob(value)
        self._op(_put_ch, v, timeout)
        return self

    def take(self, timeout: float | None = None) -> Any:
        """Remove and return the first value (blocks until there is one).

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first; nothing was taken.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        return self._op(_take_ch, timeout)

    def fetch(self, timeout: float | None = None) -> Any:
        """Return the first value without removing it (blocks until there is one).

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        return self._op(_fetch_ch, timeout)

    def isready(self) -> bool:
        """Whether a value can be taken now (it may be gone by the time you take it)."""
        return bool(self._call(_isready_ch, self._key))

    def wait(self, timeout: float | None = None) -> RemoteChannel:
        """Block until a value is available, without taking it; returns the RemoteChannel.

        Raises:
            ChannelClosedError: the channel is closed and empty.
            TimeoutError: ``timeout`` seconds passed first.
            ProcessExitedException: the owner has exited (also while this call waits).
        """
        self._op(_wait_ch, timeout)
        return self

    def close(self) -> None:
        """Close the channel: further puts raise; buffered values can still be taken."""
        self._call(_close_ch, self._key)

    def isopen(self) -> bool:
        """Whether the channel is still open."""
        return bool(self._call(_isopen_ch, self._key))

    def __iter__(self) -> Iterator[Any]:
        """Take values until the channel is closed and empty."""
        while True:
            try:
                value = self.take()
            except ChannelClosedError:
                return
            yield value


def _check_pid(pid: Any) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(f"a process id is an int, not {type(pid).__name__}")
    return pid


# -- the generic functions -------------------------------------------------------------


def fetch(x: Any, timeout: float | None = None) -> Any:
    """Wait for and return the value of a Future, RemoteChannel, Channel or Task.

    Anything else is returned unchanged, as in Julia. On a channel the value is not removed.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
        RemoteException: a Future's call raised.
    """
    if isinstance(x, (Future, RemoteChannel, AbstractChannel, Task)):
        return x.fetch(timeout)
    return x


def put(rr: Any, value: Any, timeout: float | None = None) -> Any:
    """``rr.put(value)`` on a Future, RemoteChannel or Channel; returns ``rr``.

    ``timeout`` applies to channels (a Future never blocks a put).
    """
    if timeout is None:
        rr.put(value)
    else:
        rr.put(value, timeout)
    return rr


def take(rr: Any, timeout: float | None = None) -> Any:
    """``rr.take()`` on a RemoteChannel or Channel: remove and return the first value."""
    if timeout is None:
        return rr.take()
    return rr.take(timeout)


def isready(rr: Any) -> bool:
    """Whether a Future is set or a channel has a value (a Task: whether it is done)."""
    if isinstance(rr, Task):
        return rr.done()
    return bool(rr.isready())


def wait(x: Any, timeout: float | None = None) -> Any:
    """Block until ``x`` (a Future, RemoteChannel, Channel or Task) is ready; returns ``x``.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    if timeout is None:
        x.wait()
    else:
        x.wait(timeout)
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
        KeyError: no such storage here (it lives elsewhere, or was freed).
    """
    c = current_cluster()
    storage = c.refs.lookup(RRID(*rrid))
    if storage is None:
        raise KeyError(f"no storage for {RRID(*rrid)!r} on process {c.myid} (elsewhere, or freed)")
    return storage


# -- clear -----------------------------------------------------------------------------


def clear(
    names: str | Iterable[str] | Any,
    pids: int | Iterable[int] | None = None,
    mod: str | types.ModuleType = "__main__",
) -> Any:
    """Set global variables to ``None`` on some processes, to free what they hold (``clear!``).

    Only the names that exist in ``mod`` on a process are set there; a module that a process
    has not imported has nothing to clear. ``clear(pool)`` on a ``CachingPool`` calls
    ``pool.clear()`` (dropping its cached functions on the workers) and returns the pool.

    Args:
        names: one name or several.
        pids: one process id or several; default ``workers()``.
        mod: the module, or its name (default ``"__main__"``).

    Returns:
        None (the pool, for ``clear(pool)``).

    Raises:
        TypeError: a name is not a string.
        CompositeException: of one ``RemoteException`` per process that failed, wrapping an
            ``AttributeError`` for a constant (a name annotated ``typing.Final`` in the
            module) or for a module attribute that refuses to be set. A process that
            refuses a name still clears the others.
    """
    if hasattr(names, "clear") and hasattr(names, "_pool_call"):
        names.clear()
        return names
    if isinstance(names, str):
        wanted: tuple[str, ...] = (names,)
    else:
        wanted = tuple(names)
    for name in wanted:
        if not isinstance(name, str):
            raise TypeError(f"clear() takes names as str, not {type(name).__name__}")
    modname = mod.__name__ if isinstance(mod, types.ModuleType) else mod
    if not isinstance(modname, str):
        raise TypeError(f"clear(mod=...) takes a module or its name, not {type(mod).__name__}")
    c = current_cluster()
    if pids is None:
        targets = c.worker_ids()
    elif isinstance(pids, int):
        targets = [_check_pid(pids)]
    else:
        targets = [_check_pid(p) for p in pids]
    targets = list(dict.fromkeys(targets))
    if not wanted or not targets:
        return None

    def one(pid: int) -> None:
        c.call_fetch(pid, _clear_here, (wanted, modname))

    errors: list[BaseException] = []
    if len(targets) == 1:
        try:
            one(targets[0])
        except Exception as e:
            errors.append(e)
    else:
        tasks = [Task(one, pid).start() for pid in targets]
        for task in tasks:
            try:
                task.wait()
            except Exception as e:
                errors.append(e)
    if errors:
        raise CompositeException(errors, f"clear() failed on {len(errors)} of the processes")
    return None


_FINAL_TEXT = re.compile(r"^(?:[A-Za-z_][A-Za-z_0-9]*\.)*Final(?:\[.*\])?$", re.DOTALL)


def _is_final(annotation: Any) -> bool:
    """Whether a module-level annotation declares a constant (``typing.Final``)."""
    if annotation is typing.Final or typing.get_origin(annotation) is typing.Final:
        return True
    if isinstance(annotation, str):
        # ``from __future__ import annotations`` keeps the source text, quotes included
        text = annotation.replace(" ", "").strip("'\"")
        return _FINAL_TEXT.match(text) is not None
    return False


def _module_has(module: types.ModuleType, name: str) -> bool:
    if name in vars(module):
        return True
    # a module whose class (a ModuleType subclass) defines the name, e.g. as a property
    return any(name in vars(k) for k in type(module).__mro__ if k not in (types.ModuleType, object))


# -- owner-side operations (run on ``where``; pickled by reference) --------------------

_TIMEOUT = "timeout"
_CLOSED = "closed"
_GONE = "gone"


class _Marker:
    """An outcome of an owner-side operation that the caller turns into an exception."""

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
        if value.kind == _CLOSED:
            raise ChannelClosedError(value.message)
        raise RuntimeError(value.message)  # _GONE: only ever sent to a caller that is gone
    return value


def _internal(f: Callable[..., Any]) -> Callable[..., Any]:
    f._pydist_internal = True  # type: ignore[attr-defined]  # never on the main thread
    return f


# Owner-side operations take the reference's ``key``: its RRID as a plain tuple, which finds
# the same entry (an RRID is a tuple) and costs less to pickle than the named tuple.


def _future_slot(key: tuple[int, int]) -> FutureSlot:
    refs = current_cluster().refs
    slot = refs.lookup(key)
    if slot is None:
        # an operation may overtake the add that makes a Future(pid)'s storage
        slot = refs.ensure(RRID(*key))
    return slot  # type: ignore[no-any-return]


def _channel(key: tuple[int, int]) -> Any:
    c = current_cluster()
    storage = c.refs.lookup(key)
    if storage is None:
        raise KeyError(f"no channel {RRID(*key)!r} on process {c.myid} (freed?)")
    return storage


def _caller_gone(caller: int) -> bool:
    """Whether the process that asked for an operation has exited or lost its connection."""
    c = current_cluster()
    if caller == c.myid:
        return False
    if caller in c.dead:
        return True
    peer = c.peers.get(caller)
    return peer is None or peer.closed


def _blocking(
    method: Callable[..., Any], args: tuple[Any, ...], t: float | None, caller: int
) -> Any:
    """``method(*args, t)`` for ``caller``: in slices of ``_POLL`` s while the caller is remote.

    A caller that is gone cannot receive the answer: its operation gives up (returning a
    ``_GONE`` marker) rather than take a value, or put one, that nobody will see. Raises what
    ``method`` raises (``TimeoutError`` once ``t`` seconds have passed).
    """
    if caller == current_cluster().myid:
        return method(*args, t)
    deadline = None if t is None else time.monotonic() + max(t, 0.0)
    while True:
        step = _POLL
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= step:
                return method(*args, remaining)
        try:
            return method(*args, step)
        except TimeoutError:
            if _caller_gone(caller):
                return _Marker(_GONE, f"process {caller} is gone")


@_internal
def _fetch_ref(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    slot = _future_slot(key)
    try:
        value = _blocking(slot.fetch, (), timeout, caller)
    except TimeoutError:
        return False, None
    return value if isinstance(value, _Marker) else (True, value)


@_internal
def _wait_ref(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    slot = _future_slot(key)
    try:
        marker = _blocking(slot.wait, (), timeout, caller)
    except TimeoutError:
        return False
    return marker if isinstance(marker, _Marker) else True


@_internal
def _status_ref(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    slot = _future_slot(key)
    try:
        value = _blocking(slot.fetch, (), timeout, caller)
    except TimeoutError:
        return False, None
    if isinstance(value, _Marker):
        return value
    return True, value if isinstance(value, Failure) else None


@_internal
def _isready_ref(key: tuple[int, int]) -> bool:
    storage = current_cluster().refs.lookup(key)
    return storage is not None and bool(storage.isready())


@_internal
def _put_ref(key: tuple[int, int], value: Any) -> bool:
    return _future_slot(key).try_put(value)


@_internal
def _make_channel(key: tuple[int, int], client: int, f: Callable[[], Any] | None) -> None:
    ch = Channel(1) if f is None else f()
    for method in ("put", "take", "fetch", "isready", "wait"):
        if not callable(getattr(ch, method, None)):
            raise TypeError(
                f"RemoteChannel(f): f() returned a {type(ch).__name__}, which has no "
                f"{method}() method (expected an AbstractChannel)"
            )
    current_cluster().refs.add(RRID(*key), client, make=lambda: ch)


def _channel_op(ch: Any, name: str, timeout: float | None, caller: int, *args: Any) -> Any:
    """``ch.<name>(*args)`` for ``caller``; a timeout or a closed channel becomes a marker.

    An ``AbstractChannel`` takes a timeout, so it is polled (see ``_blocking``); a channel of
    the user's own that is not one gets a timeout only when the caller gave one.
    """
    method = getattr(ch, name)
    try:
        if isinstance(ch, AbstractChannel):
            return _blocking(method, args, timeout, caller)
        return method(*args) if timeout is None else method(*args, timeout)
    except TimeoutError as e:
        return _Marker(_TIMEOUT, str(e) or "timed out")
    except ChannelClosedError as e:
        return _Marker(_CLOSED, str(e) or "the channel is closed")


@_internal
def _put_ch(key: tuple[int, int], value: Any, timeout: float | None, caller: int) -> Any:
    marker = _channel_op(_channel(key), "put", timeout, caller, value)
    return marker if isinstance(marker, _Marker) else None


@_internal
def _take_ch(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    return _channel_op(_channel(key), "take", timeout, caller)


@_internal
def _fetch_ch(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    return _channel_op(_channel(key), "fetch", timeout, caller)


@_internal
def _wait_ch(key: tuple[int, int], timeout: float | None, caller: int) -> Any:
    marker = _channel_op(_channel(key), "wait", timeout, caller)
    return marker if isinstance(marker, _Marker) else None


@_internal
def _isready_ch(key: tuple[int, int]) -> bool:
    return bool(_channel(key).isready())


@_internal
def _close_ch(key: tuple[int, int]) -> None:
    _channel(key).close()


@_internal
def _isopen_ch(key: tuple[int, int]) -> bool:
    ch = _channel(key)
    isopen = getattr(ch, "isopen", None)
    return True if isopen is None else bool(isopen())


@_internal
def _clear_here(names: tuple[str, ...], modname: str) -> list[str]:
    """Set the existing ``names`` of module ``modname`` here to None; the names cleared.

    Raises:
        AttributeError: a name is a constant (``typing.Final``), or the module refused to
            set it; the other names are still cleared.
    """
    module = sys.modules.get(modname)
    if module is None:
        return []
    annotations = getattr(module, "__annotations__", None) or {}
    cleared: list[str] = []
    refused: list[str] = []
    for name in names:
        if not _module_has(module, name):
            continue
        if _is_final(annotations.get(name)):
            refused.append(f"{name!r} is a constant (annotated typing.Final)")
            continue
        try:
            setattr(module, name, None)
        except Exception as e:
            refused.append(f"{name!r} cannot be set: {type(e).__name__}: {e}")
            continue
        cleared.append(name)
    if refused:
        raise AttributeError(f"clear() in module {modname!r}: " + "; ".join(refused))
    return cleared
