"""The function cache: ship a function to a worker once, then call it by a short key.

Used by ``CachingPool`` (for the pool's life) and by ``pmap`` (for one map)::

    caller: FunctionCache.call(form, pid, f, ...)        worker pid (while decoding the call)
    ---------------------------------------------        ------------------------------------
    first call to pid:   sends Ship(key, f)   -------->  unpickled: stores f under key, is f
    later calls:         sends Ref(key)       -------->  unpickled: looks key up, is f
    clear():             sends Drop(uid)      -------->  unpickled: drops every key of uid

Storing and looking up happen while the message is decoded, on the connection's reader
thread, so a later call can never overtake the call that ships the function, however the calls
then run; likewise no call sent after a drop can still find the function. A function is marked
as shipped only once its message has been sent, so a reference never goes out ahead of the
function (two threads may then both ship it, which is harmless). A cache that is garbage
collected without ``clear()`` has its workers' entries dropped at the next cache operation of
this process (a finalizer may only queue work, never do I/O).
"""

from __future__ import annotations

import collections
import pickle
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from .cluster import Cluster, ClusterVar, current_cluster
from .errors import ProcessExitedException
from .remotecall import CallForm

__all__ = ["FunctionCache", "cached_keys"]

# On a worker: (cache uid, token) -> function.
_STORED: ClusterVar[dict[tuple[int, int], Any]] = ClusterVar("funccache.stored", dict)
# On the caller: caches garbage collected without clear(): (uid, workers) to drop there.
_DROPS: ClusterVar[collections.deque[tuple[int, set[int]]]] = ClusterVar(
    "funccache.drops", collections.deque
)


class _Ship:
    """A function on its first trip to a worker: unpickled, it is stored in the cache there."""

    __slots__ = ("f", "key")

    def __init__(self, key: tuple[int, int], f: Any) -> None:
        self.key = key
        self.f = f

    def __reduce__(self) -> tuple[Any, ...]:
        return (_store_cached, (self.key, self.f))

    @property
    def _pydist_user_value(self) -> Any:
        """What the user passed (an error message names it, not this wrapper)."""
        return self.f


class _Ref:
    """A function already on the worker: unpickled, it is looked up in the cache there."""

    __slots__ = ("key",)

    def __init__(self, key: tuple[int, int]) -> None:
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_lookup_cached, (self.key,))


class _Drop:
    """Sent to a worker by ``clear()``: unpickled there, it drops the cache ``uid``."""

    __slots__ = ("uid",)

    def __init__(self, uid: int) -> None:
        self.uid = uid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_drop_cached, (self.uid,))


class _Missing:
    """Stands for a function that is not in a worker's cache (cleared while calls were on the
    way): calling it raises an error that says so."""

    def __init__(self, pid: int, key: tuple[int, int]) -> None:
        self.pid = pid
        self.key = key

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"the function {self.key} is not in the cache of process {self.pid}: the pool's "
            "cache was cleared while calls were on the way, or the function failed to "
            "unpickle there on its first call"
        )


# -- the worker's side: run while a message is decoded (the cluster decoding it) ------------


def _store_cached(key: tuple[int, int], f: Any) -> Any:
    _STORED.get(current_cluster())[key] = f
    return f


def _lookup_cached(key: tuple[int, int]) -> Any:
    c = current_cluster()
    f = _STORED.get(c).get(key)
    if f is None:
        return _Missing(c.myid, key)
    return f


def _drop_cached(uid: int) -> None:
    stored = _STORED.get(current_cluster())
    for key in [k for k in list(stored) if k[0] == uid]:
        stored.pop(key, None)


def _ignore(_: Any) -> None:
    """The call that carries a :class:`_Drop`: the work was done while decoding it."""


_ignore._pydist_internal = True  # type: ignore[attr-defined]


def cached_keys(uid: int) -> list[tuple[int, int]]:
    """Run on a worker: the keys the cache ``uid`` holds there (for tests and debugging)."""
    return sorted(k for k in list(_STORED.get(current_cluster())) if k[0] == uid)


cached_keys._pydist_internal = True  # type: ignore[attr-defined]


# -- the calling side ---------------------------------------------------------------------------


class FunctionCache:
    """Which function went to which worker, for the calls made through this cache.

    Functions are held (by identity) until :meth:`clear`.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.uid = uuid.uuid4().int >> 64
        self._lock = threading.Lock()
        self._tokens: dict[int, tuple[Any, int]] = {}
        self._shipped: set[tuple[int, int]] = set()
        self.used: set[int] = set()
        self._next = 1
        _drain_drops(cluster)

    def finalizer(self) -> Callable[[tuple[int, set[int]]], None]:
        """A callable for ``weakref.finalize``: it only appends to a deque (no I/O, no lock)."""
        return _DROPS.get(self.cluster).append

    def _token(self, f: Any) -> int:
        entry = self._tokens.get(id(f))
        if entry is not None and entry[0] is f:
            return entry[1]
        with self._lock:
            entry = self._tokens.get(id(f))
            if entry is not None and entry[0] is f:
                return entry[1]
            token = self._next
            self._next += 1
            self._tokens[id(f)] = (f, token)
            return token

    def call(
        self, form: CallForm, pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Make the call ``form`` of ``f`` on ``pid``, shipping ``f`` there only the first time."""
        sent, token = self.wrap(pid, f)
        if token is None:
            return form(pid, sent, args, kwargs)
        try:
            result = form(pid, sent, args, kwargs)
        except (pickle.PicklingError, ProcessExitedException):
            raise  # nothing went out, or the worker is gone
        except Exception:
            self._mark(pid, token)  # an error from there: the message did go out
            raise
        # (On KeyboardInterrupt the function may or may not have gone out: it is not marked,
        # and simply shipped again next time.)
        self._mark(pid, token)
        return result

    def wrap(self, pid: int, f: Any) -> tuple[Any, int | None]:
        """What to send to ``pid`` in place of ``f``, and the token to pass to :meth:`shipped`
        once it has gone out (None: ``f`` is there already, or ``pid`` is this process)."""
        if pid == self.cluster.myid:
            return f, None
        token = self._token(f)
        key = (self.uid, token)
        if (pid, token) in self._shipped:
            return _Ref(key), None
        return _Ship(key, f), token

    def shipped(self, pid: int, token: int) -> None:
        """The message that carries the function of ``token`` to ``pid`` has gone out."""
        self._mark(pid, token)

    def _mark(self, pid: int, token: int) -> None:
        with self._lock:
            self._shipped.add((pid, token))
            self.used.add(pid)

    def drop_from(self, pid: int) -> None:
        """Drop the functions on worker ``pid`` only (a map that sends it nothing more); a
        later call there ships them again."""
        with self._lock:
            if pid not in self.used:
                return
            self.used.discard(pid)
            self._shipped = {k for k in self._shipped if k[0] != pid}
        _send_drops(self.cluster, self.uid, [pid])

    def clear(self) -> None:
        """Forget every function; drop them on every worker they went to."""
        with self._lock:
            used = sorted(self.used)
            self.used.clear()
            self._shipped.clear()
            self._tokens.clear()
        _send_drops(self.cluster, self.uid, used)
        _drain_drops(self.cluster)


def _send_drops(c: Cluster, uid: int, pids: Iterable[int]) -> None:
    for pid in pids:
        if pid == c.myid or c.registry.is_dead(pid):
            continue
        try:
            # one way, no round trip: the drop happens as the worker decodes the message, in
            # order with the calls this process sends it
            c.calls.remote_do(pid, _ignore, (_Drop(uid),), {})
        except (ProcessExitedException, ValueError):
            pass


def _drain_drops(c: Cluster) -> None:
    """Drop, on the workers, the caches garbage collected without clear()."""
    drops = _DROPS.peek(c)
    while drops:
        try:
            uid, used = drops.popleft()
        except IndexError:
            break
        _send_drops(c, uid, sorted(used))
