"""The state of a worker pool on its home process: members, the queue of free members, and
the pool operations on them.

A pool is a set of worker ids (its *members*) and a first-in, first-out queue of the members
that are free (``free``, with ``queued`` its set, so that a member is queued once). ``take``
waits for a free member and hands it out; ``put`` gives it back. A member that has exited is
never handed out: ``take`` drops a dead member it finds at the head of the queue, ``put`` of a
dead member drops it instead of queueing it, and ``workers``/``wait`` prune them. A ``take``
that waits looks again at the cluster every ``POLL`` seconds, so that it notices a member that
died while it waited (nobody ``put``-s a dead worker back).

The default pool follows the cluster's workers: whenever it is used it compares the worker
table's epoch (``Registry.epoch``, which grows on every join and exit) with the one it last
saw, and adds the new workers, in id order, at the end of its queue. With no workers it hands
out this process (the master) without limit.

No I/O: the worker table is asked, never a process.
"""

from __future__ import annotations

import collections
import threading
import time

from . import timeouts
from .cluster import Cluster

__all__ = ["POLL", "PoolState"]

POLL = 0.1  # how often a blocked take() looks again at the cluster (new or dead workers)


class PoolState:
    """The state of a pool on its home process, and the pool operations on it.

    ``default``: the default pool, which follows the cluster's workers and hands out this
    process (the master) when there are none.
    """

    def __init__(self, cluster: Cluster, default: bool = False) -> None:
        self.cluster = cluster
        self.default = default
        self.cond = threading.Condition(threading.Lock())
        self.members: set[int] = set()
        self.free: collections.deque[int] = collections.deque()
        self.queued: set[int] = set()
        self._synced: set[int] = set()
        self._epoch = -1
        self.had_members = False  # a pool all of whose workers exited is not an empty pool

    def describe(self, name: str) -> str:
        with self.cond:
            members = sorted(self.members)
            free = list(self.free)
        tag = ", default" if self.default else ""
        return f"<{name} workers={members} free={free}{tag}>"

    # -- membership (lock held) ------------------------------------------------------------

    def _alive(self, pid: int) -> bool:
        return self.cluster.registry.is_alive(pid)

    def _refresh(self) -> None:
        """The default pool: take in the cluster's new workers, in id order."""
        if not self.default:
            return
        reg = self.cluster.registry
        epoch = reg.epoch
        if epoch == self._epoch:
            return
        self._epoch = epoch
        for pid in reg.worker_ids():
            if pid not in (1, reg.myid) and pid not in self._synced and reg.is_alive(pid):
                self._synced.add(pid)
                self._add(pid)
        self._prune()

    def _prune(self) -> None:
        """Forget members that have exited."""
        dead = [p for p in self.members if not self._alive(p)]
        for pid in dead:
            self.members.discard(pid)
        if dead:
            self.free = collections.deque(p for p in self.free if p in self.members)
            self.queued.intersection_update(self.members)

    def _add(self, pid: int) -> None:
        self.members.add(pid)
        self.had_members = True
        if pid not in self.queued:
            self.queued.add(pid)
            self.free.append(pid)
            self.cond.notify()

    def _master_works(self) -> bool:
        """The default pool without workers hands out this process (the master)."""
        return self.default and not self.members

    def _wait_for_a_free_worker(self, deadline: float | None, timeout: float | None) -> None:
        """Wait a little for a worker to come free.

        Raises:
            RuntimeError: the pool has no live worker, so none will ever come free.
            TimeoutError: the deadline has passed.
        """
        if not self.members:
            raise RuntimeError("No active worker available in pool")
        wait = POLL
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"no worker of the pool became free within {timeouts.seconds(timeout)} s"
                )
            wait = min(wait, remaining)
        self.cond.wait(wait)

    # -- operations ------------------------------------------------------------------------

    def push(self, pid: int) -> None:
        with self.cond:
            self._add(pid)

    def put(self, pid: int) -> None:
        with self.cond:
            if pid in self.members and pid not in self.queued:
                if self._alive(pid):
                    self.queued.add(pid)
                    self.free.append(pid)
                    self.cond.notify()
                else:
                    self.members.discard(pid)
                    self.cond.notify_all()  # a taker may now find the pool empty

    def take(self, timeout: float | None) -> int:
        deadline = None if timeout is None else timeouts.deadline(timeout)
        with self.cond:
            while True:
                self._refresh()
                while self.free:
                    pid = self.free.popleft()
                    self.queued.discard(pid)
                    if self._alive(pid):
                        return pid
                    self.members.discard(pid)
                self._prune()
                if self._master_works():
                    return self.cluster.myid
                self._wait_for_a_free_worker(deadline, timeout)

    def isready(self) -> bool:
        with self.cond:
            self._refresh()
            return self._master_works() or any(self._alive(p) for p in self.free)

    def wait(self, timeout: float | None) -> None:
        deadline = timeouts.deadline(timeout)
        with self.cond:
            while True:
                self._refresh()
                self._prune()
                if self._master_works() or any(self._alive(p) for p in self.free):
                    return
                self._wait_for_a_free_worker(deadline, timeout)

    def workers(self) -> list[int]:
        with self.cond:
            self._refresh()
            self._prune()
            if self._master_works():
                return [self.cluster.myid]
            return sorted(self.members)
