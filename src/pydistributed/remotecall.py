"""Remote calls: ``remotecall``, ``remotecall_fetch``, ``remotecall_wait``, ``remote_do``.

Each takes the function first, then where it runs (a process id, or a worker pool), then the
function's arguments; keyword arguments go to the function. Calls from one process to one
other are delivered in the order they were made; the receiver may run them concurrently.
A call from a process to itself passes the objects themselves, without a copy.
"""

from __future__ import annotations

from typing import Any

from .cluster import current_cluster
from .ids import RRID
from .remoteref import Future
from .tasks import register_sync

__all__ = ["remote_do", "remotecall", "remotecall_fetch", "remotecall_wait"]


def _pid(where: Any) -> int:
    if isinstance(where, bool) or not isinstance(where, int):
        raise TypeError(
            f"a call goes to a process id (int) or a worker pool, not {type(where).__name__}"
        )
    return where


def _is_pool(where: Any) -> bool:
    return hasattr(where, "_pool_call")


def remotecall(f: Any, id_or_pool: Any, /, *args: Any, **kwargs: Any) -> Future:
    """Start ``f(*args, **kwargs)`` on a process; return a :class:`Future` of its result.

    Raises:
        pickle.PicklingError: ``f`` or an argument could not be pickled (nothing was sent).
        ProcessExitedException: the process has exited.
    """
    if _is_pool(id_or_pool):
        return id_or_pool._pool_call("remotecall", f, args, kwargs)  # type: ignore[no-any-return]
    pid = _pid(id_or_pool)
    c = current_cluster()
    rrid = RRID(c.myid, c.rrids.next())
    c.call(pid, rrid, f, args, kwargs)
    return register_sync(Future._for_call(c, pid, rrid))


def remotecall_fetch(f: Any, id_or_pool: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Run ``f(*args, **kwargs)`` on a process and return its value, in one message each way.

    Raises:
        RemoteException: ``f`` raised there (``str()`` starts with ``On worker N:``).
        pickle.PicklingError: ``f`` or an argument could not be pickled (nothing was sent).
        ProcessExitedException: the process has exited, or exits before answering.
    """
    if _is_pool(id_or_pool):
        return id_or_pool._pool_call("remotecall_fetch", f, args, kwargs)
    return current_cluster().call_fetch(_pid(id_or_pool), f, args, kwargs)


def remotecall_wait(f: Any, id_or_pool: Any, /, *args: Any, **kwargs: Any) -> Future:
    """Run ``f`` on a process, wait until it is done, and return the :class:`Future` of it.

    Faster than ``wait(remotecall(...))``: one message each way. An error of ``f`` is raised by
    ``fetch`` on the Future, not here.
    """
    if _is_pool(id_or_pool):
        return id_or_pool._pool_call("remotecall_wait", f, args, kwargs)  # type: ignore[no-any-return]
    pid = _pid(id_or_pool)
    c = current_cluster()
    rrid = RRID(c.myid, c.rrids.next())
    fut = Future._for_call(c, pid, rrid)
    try:
        c.call_wait(pid, rrid, f, args, kwargs)
    except BaseException:
        fut._released = True  # the call never reached the owner: nothing to release
        raise
    return fut


def remote_do(f: Any, id_or_pool: Any, /, *args: Any, **kwargs: Any) -> None:
    """Run ``f`` on a process and return at once; its result is dropped.

    An error of ``f`` is printed on the standard error of that process.
    """
    if _is_pool(id_or_pool):
        id_or_pool._pool_call("remote_do", f, args, kwargs)
        return
    current_cluster().remote_do(_pid(id_or_pool), f, args, kwargs)
