"""What ``Future`` and ``RemoteChannel`` share: a handle's identity, its counting, its pickling.

``remoteref.py`` says how handles are counted on their owner; this module holds the base
class and the two functions every handle is made by (``_new``) and unpickled by
(``_rebuild``): one object per reference per process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import codec
from .cluster import Cluster, current_cluster
from .futures import NOTHING
from .ids import RRID

__all__ = ["_RemoteRef", "_new", "_rebuild"]

_NOTHING: Any = NOTHING


class _RemoteRef:
    """What ``Future`` and ``RemoteChannel`` share: identity, counting, pickling."""

    __slots__ = ("__weakref__", "_cluster", "_key", "_released", "rrid", "where")

    _cluster: Cluster
    where: int
    rrid: RRID
    _key: tuple[int, int]  # the rrid as a plain tuple: cheaper to pickle, equal as a dict key
    _released: bool

    def _prepare(self) -> None:
        """Set the attributes of a subclass, for a handle made without ``__init__``."""

    def _init(self, cluster: Cluster, where: int, rrid: RRID, released: bool = False) -> None:
        self._cluster = cluster
        self.where = where
        self.rrid = rrid
        self._key = (rrid.whence, rrid.id)
        self._released = released

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
            self._cluster.refcount.queue_release(self.where, self.rrid)

    def __del__(self) -> None:
        # may run on any thread at any time: queue_release only appends to a deque
        try:
            if not self._released:
                self._released = True
                self._cluster.refcount.queue_release(self.where, self.rrid)
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
        """Run an owner-side operation (``refops``) on the owner."""
        c = self._cluster
        if self.where == c.myid:
            return f(*args)
        return c.calls.call_fetch(self.where, f, args)


def _new(
    cls: type[_RemoteRef],
    cluster: Cluster,
    where: int,
    rrid: RRID,
    *,
    value: Any = _NOTHING,
    released: bool = False,
) -> Any:
    """A handle object, not yet in the table of handles (every constructor comes here)."""
    obj = cls.__new__(cls)
    obj._prepare()
    obj._init(cluster, where, rrid, released)
    if value is not _NOTHING:
        obj._finish(value, None)  # type: ignore[attr-defined]  # new: nobody waits on it yet
    return obj


def _rebuild(
    cls: type[_RemoteRef], where: int, whence: int, id: int, counted: bool = True
) -> _RemoteRef:
    """Unpickle a handle: one object per reference per process."""
    c = current_cluster()  # the cluster decoding this message (see scope)
    rrid = RRID(whence, id)

    def reuse(existing: Any) -> bool:
        # a released handle is dead unless it is a Future that keeps its value
        return type(existing) is cls and (
            not existing._released or getattr(existing, "_value", _NOTHING) is not _NOTHING
        )

    obj, made = c.refcount.get_or_make(rrid, reuse, lambda: _new(cls, c, where, rrid))
    if not made:
        if counted:
            # the sender counted one more handle for us; we keep using the one we have
            c.refcount.queue_release(where, rrid)
        return obj  # type: ignore[no-any-return]
    if not counted:
        c.refcount.add_handle(where, rrid, make_storage=False)
    return obj  # type: ignore[no-any-return]
