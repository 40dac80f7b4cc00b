"""``wait_for_workers(n, timeout)``: block until the cluster has at least ``n`` workers.

Workers that join by themselves (``ElasticManager``) arrive when they arrive; a script waits
for enough of them before it starts its work. ``n`` counts every worker in ``workers()``,
however it was added (as Julia's elastic clusters count ``nworkers()``).
"""

from __future__ import annotations

import time

from . import timeouts
from .cluster import current_cluster

__all__ = ["wait_for_workers"]

_POLL = 0.02


def wait_for_workers(n: int, timeout: float | None = None) -> list[int]:
    """Block until at least ``n`` workers are in ``workers()``; return ``workers()`` then.

    ``n`` counts all workers (those added by ``addprocs`` too), not only those that joined an
    ``ElasticManager``. ``timeout`` in seconds; ``None`` waits for ever.

    Raises:
        TypeError: ``n`` is not an int, or ``timeout`` not a number of seconds or ``None``.
        ValueError: ``n`` is negative, or ``timeout`` is negative or NaN.
        RuntimeError: called on a worker.
        TimeoutError: fewer than ``n`` workers after ``timeout`` seconds; the message says how
            many there were.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"wait_for_workers: n is an int, not {type(n).__name__}")
    if n < 0:
        raise ValueError(f"wait_for_workers: n must be >= 0, not {n}")
    timeout = timeouts.check_timeout(timeout)
    at = timeouts.deadline(timeout)
    c = current_cluster()
    if c.myid != 1:
        raise RuntimeError("wait_for_workers runs on the master (process 1)")
    while True:
        ids = [p for p in c.registry.worker_ids() if p != 1]
        if len(ids) >= n:
            return c.registry.worker_ids()
        left = timeouts.remaining(at)
        if left is not None and left <= 0:
            raise TimeoutError(
                f"wait_for_workers: {len(ids)} of {n} workers joined within "
                f"{timeouts.seconds(timeout)} s (workers: {ids})"
            )
        time.sleep(_POLL if left is None else min(_POLL, left))
