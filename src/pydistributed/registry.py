"""The worker table: who is in the cluster, who has left, and who this process is. No I/O.

Every process keeps one :class:`Registry`. The master's lists the workers it admitted; a
worker's lists the workers it may call (the master sends the table on joining, then updates),
and itself. Ids are never reused: a process that leaves is remembered as *dead* for good, so a
call to it raises ``ProcessExitedException`` instead of "no such process", and a late update
that names it does not bring it back.

Readers never touch the sets themselves: they ask :meth:`Registry.is_alive`,
:meth:`Registry.worker_ids` and the like. Writers take the lock; a query that is one lookup in
a dict or a set (``is_alive``, ``is_dead``, ``get``) does not, since such a lookup is atomic
and a pool asks it twice per call of a ``pmap``; a query that walks the table takes the lock.
:attr:`Registry.epoch` grows by one on every change of membership (a join, an exit), so that a
reader that caches a view of the table (the default worker pool) can tell cheaply whether it is
stale.
"""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any

from .managers.base import ClusterManager
from .sockets import is_loopback, primary_ip

if TYPE_CHECKING:
    from .managers.workerconfig import WorkerConfig

__all__ = ["TOPOLOGIES", "Registry", "WorkerInfo"]

TOPOLOGIES = ("all_to_all", "master_worker", "custom")


class WorkerInfo:
    """One entry of the worker table.

    ``host``/``port`` are where the worker listens (what other processes connect to);
    ``config`` and ``manager`` are the master's record of how it was launched (None on
    workers); ``exited`` is set once it has left the cluster.
    """

    __slots__ = ("config", "exited", "host", "manager", "ospid", "pid", "port", "removing")

    def __init__(
        self,
        pid: int,
        host: str | None = None,
        port: int | None = None,
        config: WorkerConfig | None = None,
        manager: ClusterManager | None = None,
    ) -> None:
        self.pid = pid
        self.host = host
        self.port = port
        self.config = config
        self.manager = manager
        self.ospid: int | None = None
        self.exited = threading.Event()
        self.removing = False  # rmprocs asked it to go: its exit is not a crash

    @property
    def process(self) -> Any:
        """The launcher's handle of the worker's process (a ``Popen``), if it gave one."""
        return self.config.process if self.config is not None else None

    def __repr__(self) -> str:
        return f"<WorkerInfo pid={self.pid} at {self.host}:{self.port} ospid={self.ospid}>"


def host_key(host: str | None) -> str:
    """A key under which names of the same host compare equal (this host: ``"localhost"``)."""
    if host is None or is_loopback(host):
        return "localhost"
    try:
        if host in (socket.gethostname(), socket.getfqdn(), primary_ip()):
            return "localhost"
    except OSError:
        pass
    return host


class Registry:
    """This process's id and role, and the table of the other processes it knows."""

    def __init__(self, myid: int, role: str) -> None:
        self.myid = myid
        self.role = role  # "master" or "worker"
        self.topology = "all_to_all"
        self.master_host = "localhost"  # as the master's table names it (workers only)
        self.epoch = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._workers: dict[int, WorkerInfo] = {}
        self._joining: dict[int, WorkerInfo] = {}  # the master's: connected, not joined yet
        self._keys: dict[int, bytes] = {}  # a worker's: the secret it shares with each worker
        self._dead: set[int] = set()
        self._removed: set[int] = set()
        self._next_pid = 2

    def __repr__(self) -> str:
        return f"<Registry myid={self.myid} {self.role} workers={self.worker_ids()}>"

    # -- queries ---------------------------------------------------------------------------

    def get(self, pid: int) -> WorkerInfo | None:
        return self._workers.get(pid)

    def infos(self) -> list[WorkerInfo]:
        """A snapshot of the table's entries."""
        with self._lock:
            return list(self._workers.values())

    def pair_key(self, pid: int, timeout: float = 0.0) -> bytes | None:
        """A worker: the secret it shares with worker ``pid``, waiting up to ``timeout``
        seconds for the master to tell it (a new worker may call before the master's update
        arrives); None if it is not known by then, or ``pid`` has left."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._keys or pid in self._dead, timeout)
            return None if pid in self._dead else self._keys.get(pid)

    def is_alive(self, pid: int) -> bool:
        """Whether ``pid`` is this process, the master, or a worker in the table (not gone)."""
        if pid in self._dead:
            return False
        return pid == self.myid or pid == 1 or pid in self._workers

    def is_dead(self, pid: int) -> bool:
        """Whether ``pid`` has left the cluster (for good: ids are never reused)."""
        return pid in self._dead

    def was_removed(self, pid: int) -> bool:
        """Whether ``pid`` left because ``rmprocs`` removed it."""
        with self._lock:
            return pid in self._removed

    def was_assigned(self, pid: int) -> bool:
        """On the master: whether ``pid`` was ever given to a worker."""
        with self._lock:
            return 1 < pid < self._next_pid

    def check_exists(self, pid: int, what: str) -> int:
        """``pid`` if it is, or was, a process of the cluster as far as this process can tell:
        the master knows every id; a worker may not know of all the others, and refuses none.

        Raises:
            ValueError: on the master, ``pid`` was never a process's id (``what`` names the
                argument in the message).
        """
        if self.myid == 1 and pid != 1 and not self.was_assigned(pid):
            raise ValueError(f"{what}: no process with id {pid}")
        return pid

    def worker_ids(self) -> list[int]:
        """Ids of the workers (``[1]`` when there are none, as in Julia)."""
        with self._lock:
            ids = sorted(p for p in self._workers if p != 1)
        return ids or [1]

    def proc_ids(self) -> list[int]:
        """Ids of every process: the master and the workers."""
        with self._lock:
            return sorted({1, *self._workers})

    def procs_on_host(self, pid: int) -> list[int]:
        """Processes on the same host as ``pid`` (by the address workers are reached at).

        Raises:
            ValueError: no process ``pid`` is known here.
        """
        with self._lock:
            table = {1: self.master_host if self.myid != 1 else "localhost"}
            for p, info in self._workers.items():
                table[p] = info.host or "localhost"
        if pid not in table:
            raise ValueError(f"no process with id {pid}")
        key = host_key(table[pid])
        return sorted(p for p, h in table.items() if host_key(h) == key)

    # -- changes ---------------------------------------------------------------------------

    def assign_pid(self) -> int:
        """On the master: the id of the next worker (never reused)."""
        with self._lock:
            pid = self._next_pid
            self._next_pid += 1
            return pid

    def admit(self, info: WorkerInfo) -> list[WorkerInfo]:
        """On the master: ``info`` is joining; returns the other workers, joined or joining.

        A joining worker is not in the table yet (nothing lists it, no call goes to it): it
        enters with :meth:`joined`, once it has answered its ``JoinPGRP``. Before that, a
        call could reach it ahead of its ``JoinPGRP``, which it would refuse.
        """
        with self._lock:
            # those joining too: each will know the other, whichever joins first
            known = [*self._workers.values(), *self._joining.values()]
            others = [w for w in known if w.pid != info.pid]
            self._joining[info.pid] = info
            return others

    def joined(self, pid: int) -> bool:
        """On the master: the joining worker ``pid`` has joined: into the table. False if it
        left meanwhile."""
        with self._lock:
            info = self._joining.pop(pid, None)
            if info is None or pid in self._dead:
                return False
            self._workers[pid] = info
            self.epoch += 1
            self._changed.notify_all()
            return True

    def learn(
        self,
        entries: tuple[tuple[int, str | None, int | None], ...],
        keys: tuple[tuple[int, bytes], ...] = (),
    ) -> None:
        """A worker: enter the ``(pid, host, port)`` of workers it was told about, and the
        ``(pid, key)`` secrets it shares with workers (a process already known to be dead stays
        out)."""
        with self._lock:
            for pid, host, port in entries:
                if pid not in self._dead:
                    self._workers[pid] = WorkerInfo(pid, host, port)
            for pid, key in keys:
                if pid not in self._dead:
                    self._keys[pid] = key
            self.epoch += 1
            self._changed.notify_all()

    def join(self, myid: int, topology: str, master_host: str) -> None:
        """A worker: take the id and settings the master gave on joining."""
        with self._lock:
            self.myid = myid
            self.topology = topology
            self.master_host = master_host or "localhost"
            self.epoch += 1

    def mark_removing(self, pid: int) -> WorkerInfo | None:
        """On the master: ``rmprocs`` is removing ``pid``; its exit will not be a crash."""
        with self._lock:
            info = self._workers.get(pid)
            if info is not None and pid not in self._dead:
                self._removed.add(pid)
                info.removing = True
            return info

    def mark_lost(self, pid: int) -> None:
        """``pid``'s connection has closed and its removal is under way on another thread:
        dead from now on (no pool hands it out), though :meth:`remove` still has its entry."""
        with self._lock:
            if pid not in self._dead:
                self._dead.add(pid)
                self.epoch += 1
                self._changed.notify_all()

    def remove(self, pid: int) -> WorkerInfo | None:
        """``pid`` has left: out of the table, dead for good. Its entry, if it had one."""
        with self._lock:
            info = self._workers.pop(pid, None) or self._joining.pop(pid, None)
            self._keys.pop(pid, None)
            self._dead.add(pid)
            self.epoch += 1
            self._changed.notify_all()
            return info
