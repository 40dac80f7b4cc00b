"""A worker becomes visible (``workers()``, pools, ``pmap``) only once it has joined.

The master used to enter a new worker in its table before sending it ``JoinPGRP``; a call sent
meanwhile (a ``pmap`` feeder taking the newcomer from the default pool) reached the worker
before its ``JoinPGRP``, and the worker dropped the connection (``addprocs`` failed with
"Broken pipe" or "Bad file descriptor").
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from pydistributed import LocalManager, addprocs, myid, pmap, remotecall_fetch, sockets, workers
from tests.conftest import end_workers, in_thread, wait_until

STALL = 1.0  # seconds each write to the stalling link waits


class _StallingWriter:
    """Outgoing stream of a link whose writes from ``addprocs``'s setup threads (the master's
    ``pydist-setup`` threads, which tell the others about a newcomer) wait ``STALL`` s while
    ``stall`` is set. ``stalled`` counts them: a test asserts that the fault was injected."""

    def __init__(self, sock: socket.socket, stall: threading.Event) -> None:
        self.sock = None  # not a plain socket: no TLS, no scatter-gather
        self._sock = sock
        self._stall = stall
        self.stalled = 0

    def write(self, data: Any) -> None:
        if self._stall.is_set() and threading.current_thread().name == "pydist-setup":
            self.stalled += 1
            time.sleep(STALL)
        self._sock.sendall(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._sock.close()


class StallingLinkManager(LocalManager):
    """FAULT INJECTOR: a local worker whose link from the master stalls each write while
    ``stall`` is set. When a later worker joins, the master tells this one about it (a
    ``PeerUpdate``) between entering the newcomer and sending it ``JoinPGRP``: the stall holds
    the master right there, a window that is otherwise a few microseconds wide."""

    def __init__(self, stall: threading.Event) -> None:
        super().__init__(1)
        self.stall = stall
        self.writers: list[_StallingWriter] = []

    def connect(self, pid: int, config: Any) -> tuple[Any, Any]:
        sock = sockets.connect_tcp(config.host, config.port, 30)
        self.writers.append(_StallingWriter(sock, self.stall))
        return sock.makefile("rb"), self.writers[-1]

    def stalled(self) -> int:
        return sum(w.stalled for w in self.writers)


def test_a_joining_worker_is_not_visible_before_it_has_joined() -> None:
    stall = threading.Event()
    manager = StallingLinkManager(stall)
    (slow,) = addprocs(manager)
    added: list[int] = []
    try:
        stall.set()
        t, out = in_thread(lambda: addprocs(1))
        # the newcomer, as soon as anything shows it: a call to it must work
        wait_until(lambda: len(workers()) == 2, 30, what="the new worker to be listed")
        new = max(workers())
        added.append(new)
        assert remotecall_fetch(myid, new) == new
        t.join(30)
        assert out == [[new]], out
        assert manager.stalled() >= 1  # the master was held inside addprocs
        stall.clear()
        assert sorted(pmap(lambda _: myid(), range(20))) != []  # everyone still serves
        assert remotecall_fetch(myid, slow) == slow
    finally:
        stall.clear()
        end_workers([slow, *added])
