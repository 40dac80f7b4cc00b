"""Two ``Cluster`` objects in one process, a master and a worker, over a ``socketpair()``.

The whole middle layer runs for real on both sides (handshake, JoinPGRP, dispatch, calls,
reference counting, the life cycle), but no process is started: the master admits the worker
through a small ``ClusterManager`` whose ``connect`` hands out one end of the pair, and the
worker serves the other end with ``serve_streams``. Every thread of each cluster must resolve
``current_cluster()`` to its own cluster, and the process's default cluster is never touched:
this file uses the cluster objects only, never the top-level functions.
"""

from __future__ import annotations

import atexit
import operator
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import cluster as cluster_module
from pydistributed import sockets
from pydistributed.cluster import Cluster, current_cluster
from pydistributed.errors import ProcessExitedException, RemoteException
from pydistributed.ids import RRID
from pydistributed.managers.base import ClusterManager, WorkerConfig
from pydistributed.messages import RefCount
from pydistributed.remoteref import Future

COOKIE = "two-clusters-in-one-process"
WAIT = 10.0


class SocketPairManager(ClusterManager):
    """Launches nothing: announces one worker that is reached through ``end``, and records
    what the master tells it (written against the public manager interface only)."""

    def __init__(self, end: socket.socket) -> None:
        self.end = end
        self.params: dict[str, Any] = {}
        self.events: queue.Queue[tuple[int, str]] = queue.Queue()

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        self.params = dict(params)
        with launch_ntfy:
            launched.append(WorkerConfig())  # no host/port: connect() knows the way
            launch_ntfy.notify_all()

    def connect(self, pid: int, config: WorkerConfig) -> tuple[Any, Any]:
        return sockets.socket_streams(self.end)

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        self.events.put((pid, op))


class ExitRecorder:
    """Stands in for the worker's ``Server.exit``, which would end the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        with self._cond:
            self.codes.append(code)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = WAIT) -> list[int]:
        """The codes, once there are at least ``n`` of them."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.codes) >= n, timeout):
                raise AssertionError(f"the worker did not exit {n} time(s) within {timeout} s")
            return list(self.codes)


class Pair:
    def __init__(
        self, master: Cluster, worker: Cluster, exits: ExitRecorder, manager: SocketPairManager
    ) -> None:
        self.master = master
        self.worker = worker
        self.exits = exits
        self.manager = manager


@pytest.fixture
def pair() -> Iterator[Pair]:
    default_before = cluster_module._default
    master = Cluster(1, cookie=COOKIE)
    worker = Cluster(0, cookie=COOKIE, role="worker")
    # The only fake of this file. A worker ends its process when the master's connection
    # closes (``Server.exit`` is ``os._exit``); here that process is pytest's, so the worker's
    # exit only records its code. It injects nothing into the code under test: the worker
    # still runs every step up to that call.
    exits = ExitRecorder()
    worker.server.exit = exits
    master_end, worker_end = socket.socketpair()
    worker.serve_streams(*sockets.socket_streams(worker_end))
    manager = SocketPairManager(master_end)
    try:
        assert master.lifecycle.add_workers(manager, {}, master.cookie) == [2]
    except BaseException:
        master_end.close()
        worker_end.close()
        atexit.unregister(master.lifecycle.shutdown)
        raise
    try:
        yield Pair(master, worker, exits, manager)
    finally:
        _teardown(master, worker, exits)
        assert cluster_module._default is default_before


def _teardown(master: Cluster, worker: Cluster, exits: ExitRecorder) -> None:
    """Close the master's connection; the worker must see it and exit (recorded) with 0."""
    before = len(exits.codes)
    mpeer = master.connections.lookup(2)
    wpeer = worker.connections.lookup(1)
    master.connections.drop(2, "test over")
    try:
        if wpeer is not None:  # the worker was still connected: it must notice and exit
            assert exits.wait_for(before + 1)[before:] == [0]
        for peer in (mpeer, wpeer):
            if peer is not None and peer.thread is not None:
                peer.thread.join(WAIT)
                assert not peer.thread.is_alive()
        assert master.registry.worker_ids() == [1] and master.registry.is_dead(2)
        assert master.registry.infos() == []  # so the exit hook has nobody to tell
    finally:
        # add_workers registered the master's shutdown to run at interpreter exit. With the
        # worker gone it would do nothing, and the worker's exit only records anyway: nothing
        # here can call os._exit. Unregister it all the same, so that this test's cluster
        # does not live until pytest exits.
        atexit.unregister(master.lifecycle.shutdown)


# -- functions the worker runs (importable: they travel by reference) ---------------------


def fail(x: Any) -> Any:
    raise ValueError(f"bad value {x!r}")


def cluster_identity() -> tuple[int, int, str]:
    """Which cluster the thread that runs this call works for."""
    c = current_cluster()
    return id(c), c.myid, c.registry.role


def ask_back(timeout: float) -> tuple[int, tuple[int, int, str]]:
    """On the worker: this thread's cluster, and the master's answer to the same question."""
    c = current_cluster()
    return id(c), c.calls.call_fetch(1, cluster_identity, (), {}, timeout=timeout)


def stored_value(key: tuple[int, int]) -> Any:
    """On the worker: the value stored under ``key`` (within WAIT), or None if none."""
    slot = current_cluster().refs.lookup(key)
    return None if slot is None else slot.fetch(WAIT)


# -- the tests ------------------------------------------------------------------------------


def test_the_worker_joins_as_process_2(pair: Pair) -> None:
    master, worker = pair.master, pair.worker
    assert worker.myid == 2 and worker.registry.role == "worker"
    assert master.myid == 1 and master.registry.role == "master"
    assert master.registry.worker_ids() == [2] and master.registry.proc_ids() == [1, 2]
    assert worker.registry.is_alive(1) and worker.registry.is_alive(2)
    # a worker on a custom transport (no listening address) lists itself too, as Julia does
    assert worker.registry.proc_ids() == [1, 2] and worker.registry.worker_ids() == [2]
    assert worker.registry.procs_on_host(2) == [1, 2]
    assert worker.server.joined.is_set()
    info = master.registry.get(2)
    assert info is not None and info.ospid == os.getpid()  # JoinComplete: the same process
    assert info.manager is pair.manager
    assert pair.manager.params["cookie"] == COOKIE  # the manager got the cookie to hand on
    assert pair.manager.events.get(timeout=WAIT) == (2, "register")
    assert pair.exits.codes == []


def test_call_fetch(pair: Pair) -> None:
    assert pair.master.calls.call_fetch(2, operator.add, (1, 2), timeout=WAIT) == 3
    big = bytes(range(256)) * 4096  # 1 MiB: out of band both ways
    assert pair.master.calls.call_fetch(2, operator.add, (big, b"!"), timeout=WAIT) == big + b"!"
    got = pair.master.calls.call_fetch(2, lambda *a, **k: (a, k), (1,), {"x": 2}, timeout=WAIT)
    assert got == ((1,), {"x": 2})


def test_a_remote_error_names_the_worker(pair: Pair) -> None:
    with pytest.raises(RemoteException) as info:
        pair.master.calls.call_fetch(2, fail, ("q",), timeout=WAIT)
    err = info.value
    assert err.pid == 2 and str(err).startswith("On worker 2:")
    assert isinstance(err.captured.exc, ValueError) and str(err.captured.exc) == "bad value 'q'"
    assert pair.master.calls.call_fetch(2, operator.neg, (5,), timeout=WAIT) == -5  # still up


def test_each_clusters_threads_resolve_their_own_cluster(pair: Pair) -> None:
    master, worker = pair.master, pair.worker
    assert master.calls.call_fetch(2, cluster_identity, timeout=WAIT) == (
        id(worker),
        2,
        "worker",
    )
    # the worker calls back into the master from within a call: each side runs the
    # function on its own threads, and each finds its own cluster
    mine, theirs = master.calls.call_fetch(2, ask_back, (WAIT,), timeout=3 * WAIT)
    assert mine == id(worker)
    assert theirs == (id(master), 1, "master")


def test_a_future_style_call(pair: Pair) -> None:
    master, worker = pair.master, pair.worker
    # what remotecall does, on this master rather than the process's default cluster
    rrid = RRID(master.myid, master.refcount.next_id())
    assert master.calls.call(2, rrid, operator.mul, (6, 7), {}) is None  # sent, not run here
    fut = Future._for_call(master, 2, rrid)
    assert fut.fetch(timeout=WAIT) == 42
    assert fut.fetch(timeout=WAIT) == 42  # cached here now
    # fetched: the master released its handle, and the worker frees the storage
    deadline = time.monotonic() + WAIT
    while worker.refs.lookup(rrid) is not None:
        assert time.monotonic() < deadline, "the worker kept the storage of a fetched Future"
        time.sleep(0.01)


def test_a_call_stored_on_the_worker_and_released_by_hand(pair: Pair) -> None:
    master, worker = pair.master, pair.worker
    rrid = RRID(master.myid, master.refcount.next_id())
    master.calls.call(2, rrid, fail, ("later",), {})
    value = master.calls.call_fetch(2, stored_value, (tuple(rrid),), timeout=2 * WAIT)
    error = value.error()  # a refstore.Failure, pickled back as it is
    assert isinstance(error, RemoteException) and error.pid == 2
    assert worker.refs.clients(rrid) == {1: 1}
    master.connections.get(2).send(RefCount(dels=((rrid.whence, rrid.id, 1),)))
    master.calls.call_fetch(2, operator.add, (0, 0), timeout=WAIT)  # after the notice
    assert worker.refs.lookup(rrid) is None


def test_call_wait(pair: Pair) -> None:
    master, worker = pair.master, pair.worker
    rrid = RRID(master.myid, master.refcount.next_id())
    master.calls.call_wait(2, rrid, operator.mul, (3, 5), {})
    slot = worker.refs.lookup(rrid)
    assert slot is not None and slot.isready() and slot.fetch(0) == 15


def test_closing_the_masters_connection_ends_the_worker_with_code_0(pair: Pair) -> None:
    master = pair.master
    master.connections.drop(2, "test over")
    assert pair.exits.wait_for(1) == [0]
    assert master.registry.is_dead(2) and master.registry.worker_ids() == [1]
    assert pair.manager.events.get(timeout=WAIT) == (2, "register")
    assert pair.manager.events.get(timeout=WAIT) == (2, "deregister")
    assert pair.manager.events.get(timeout=WAIT) == (2, "finalize")
    with pytest.raises(ProcessExitedException) as info:
        master.calls.call_fetch(2, operator.add, (1, 2), timeout=WAIT)
    assert info.value.worker_id == 2
    assert pair.worker.connections.lookup(1) is None


def test_the_masters_exit_hook_tells_the_worker_to_exit(pair: Pair) -> None:
    # what would run at interpreter exit if the worker were still there: an Exit message,
    # which the worker obeys (here: records)
    pair.master.lifecycle.shutdown()
    assert pair.exits.wait_for(1) == [0]
