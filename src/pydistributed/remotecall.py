"""Remote calls: ``remotecall``, ``remotecall_fetch``, ``remotecall_wait``, ``remote_do``.

Each takes the function first, then where it runs (a process id, or a worker pool), then the
function's arguments; keyword arguments go to the function. Calls from one process to one
other are delivered in the order they were made; the receiver may run them concurrently.
A call from a process to itself passes the objects themselves, without a copy.

Where a call may go instead of a pid is a :class:`WorkerSource` (the base of every worker
pool): the call form takes a free worker from it, makes the call there through
:meth:`WorkerSource.call_on` (which a pool may use to prepare the function, as ``CachingPool``
does), and gives the worker back: at once, or, for ``remotecall``, once its Future is done::

    remotecall_fetch(f, pool, x)
      pid = pool.take()
      pool.call_on(pid, fetch_on, f, (x,), {})     -> fetch_on(pid, f, (x,), {})
      pool.put(pid)
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import runtime
from .errors import RemoteException
from .ids import RRID, check_pid

if TYPE_CHECKING:
    from .remoteref import Future

__all__ = [
    "CallForm",
    "WorkerSource",
    "do_on",
    "fetch_on",
    "remote_do",
    "remotecall",
    "remotecall_fetch",
    "remotecall_wait",
    "start_on",
    "wait_on",
]

P = ParamSpec("P")
T = TypeVar("T")

CallForm = Callable[[int, Any, tuple[Any, ...], dict[str, Any]], Any]
"""One of the four call forms on a given pid: ``form(pid, f, args, kwargs)``."""

_WHERE = "a process id or a worker pool"


class WorkerSource(abc.ABC):
    """What the call forms accept in place of a pid: a source of free workers (a pool)."""

    @abc.abstractmethod
    def take(self, timeout: float | None = None) -> int:
        """Wait for a free worker, mark it busy and return its id."""

    @abc.abstractmethod
    def put(self, pid: int) -> Any:
        """Give back worker ``pid``, taken before."""

    def call_on(
        self, pid: int, form: CallForm, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Make the call ``form`` of ``f`` on worker ``pid``, taken from this source.

        The default sends ``f`` as it is; a source may send something else in its place (a
        cache entry of ``f``: ``CachingPool``).
        """
        return form(pid, f, args, kwargs)


# -- the four call forms on one process -------------------------------------------------------


def fetch_on(pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``remotecall_fetch`` on ``pid``."""
    return runtime.current_cluster().calls.call_fetch(pid, f, args, kwargs)


def start_on(pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future:
    """``remotecall`` on ``pid``."""
    c = runtime.current_cluster()
    rrid = RRID(c.myid, c.refcount.next_id())
    c.calls.call(pid, rrid, f, args, kwargs)
    from .remoteref import Future
    from .tasks import register_sync

    return register_sync(Future._for_call(c, pid, rrid))


def wait_on(pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future:
    """``remotecall_wait`` on ``pid``."""
    c = runtime.current_cluster()
    rrid = RRID(c.myid, c.refcount.next_id())
    from .remoteref import Future

    fut = Future._for_call(c, pid, rrid)
    try:
        c.calls.call_wait(pid, rrid, f, args, kwargs)
    except RemoteException:
        raise  # it ran there and failed: the handle goes, and releases the stored failure
    except BaseException:
        fut._released = True  # the call never reached the owner: nothing to release
        raise
    return fut


def do_on(pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``remote_do`` on ``pid``."""
    runtime.current_cluster().calls.remote_do(pid, f, args, kwargs)


def _put_back_when_done(source: WorkerSource, pid: int, fut: Future) -> None:
    try:
        fut.wait()
    except BaseException:  # only the waiting matters here; the caller sees the error
        pass
    finally:
        source.put(pid)


def _route(
    where: Any, form: CallForm, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Make the call ``form`` on ``where``: a pid, or a free worker of a source (a pool)."""
    if not isinstance(where, WorkerSource):
        return form(check_pid(where, _WHERE), f, args, kwargs)
    pid = where.take()
    if form is not start_on:
        try:
            return where.call_on(pid, form, f, args, kwargs)
        finally:
            where.put(pid)
    try:
        fut = where.call_on(pid, form, f, args, kwargs)
    except BaseException:
        where.put(pid)
        raise
    # the worker stays busy until the call is done: a local task waits, then gives it back
    from .tasks import Task

    Task(_put_back_when_done, where, pid, fut).start()
    return fut


# -- the public call forms ---------------------------------------------------------------------


def remotecall(
    f: Callable[P, T], id_or_pool: int | WorkerSource, /, *args: P.args, **kwargs: P.kwargs
) -> Future[T]:
    """Start ``f(*args, **kwargs)`` on a process; return a :class:`Future` of its result.

    Raises:
        pickle.PicklingError: ``f`` or an argument could not be pickled (nothing was sent).
        ProcessExitedException: the process has exited.
    """
    if type(id_or_pool) is int:
        return start_on(id_or_pool, f, args, kwargs)
    return _route(id_or_pool, start_on, f, args, kwargs)  # type: ignore[no-any-return]


def remotecall_fetch(
    f: Callable[P, T], id_or_pool: int | WorkerSource, /, *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run ``f(*args, **kwargs)`` on a process and return its value, in one message each way.

    Raises:
        RemoteException: ``f`` raised there (``str()`` starts with ``On worker N:``).
        pickle.PicklingError: ``f`` or an argument could not be pickled (nothing was sent).
        ProcessExitedException: the process has exited, or exits before answering.
    """
    if type(id_or_pool) is int:
        return runtime.current_cluster().calls.call_fetch(id_or_pool, f, args, kwargs)
    return _route(id_or_pool, fetch_on, f, args, kwargs)


def remotecall_wait(
    f: Callable[P, T], id_or_pool: int | WorkerSource, /, *args: P.args, **kwargs: P.kwargs
) -> Future[T]:
    """Run ``f`` on a process, wait until it is done, and return the :class:`Future` of it.

    Faster than ``wait(remotecall(...))``: one message each way.

    Raises:
        RemoteException: ``f`` raised there (as Julia's ``remotecall_wait`` does).
        pickle.PicklingError: ``f`` or an argument could not be pickled (nothing was sent).
        ProcessExitedException: the process has exited, or exits before answering.
    """
    if type(id_or_pool) is int:
        return wait_on(id_or_pool, f, args, kwargs)
    return _route(id_or_pool, wait_on, f, args, kwargs)  # type: ignore[no-any-return]


def remote_do(
    f: Callable[P, object], id_or_pool: int | WorkerSource, /, *args: P.args, **kwargs: P.kwargs
) -> None:
    """Run ``f`` on a process and return at once; its result is dropped.

    An error of ``f`` is logged on that process (logger ``pydistributed``, on its standard
    error unless configured otherwise; a local worker's stderr reaches the master's).
    """
    if type(id_or_pool) is int:
        do_on(id_or_pool, f, args, kwargs)
        return
    _route(id_or_pool, do_on, f, args, kwargs)
