"""Every topology, worker to worker: ``all_to_all`` lazy and eager, ``custom`` (a connected
pair calls each other in both directions), ``master_worker`` (a clear error). The worker with
the higher id always dials (``peerlinks.py``), so two first calls at once make one connection.
Across hosts, the same is tested in tests/ssh/test_topologies_across_hosts.py."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pydistributed import (
    LocalManager,
    RemoteException,
    addprocs,
    myid,
    remotecall,
    remotecall_fetch,
)
from pydistributed.cluster import current_cluster
from pydistributed.managers.base import WorkerConfig
from tests.conftest import end_workers, python_stdout


def _links_to(pid: int) -> int:
    """On a worker: how many open sockets it has to the process of worker ``pid`` (local
    workers talk over Unix sockets: ``SO_PEERCRED`` names the process at the other end)."""
    import os
    import socket
    import struct

    from tests.conftest import open_sockets

    ospid = remotecall_fetch(os.getpid, pid)
    count = 0
    for s in open_sockets():
        with s:
            if s.family == socket.AF_UNIX:
                try:
                    raw = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                except OSError:
                    continue
                count += struct.unpack("3i", raw)[0] == ospid
    return count


def _call_at_once(a: int, b: int) -> tuple[int, int]:
    """``a`` calls ``b`` while ``b`` calls ``a``, both for the first time."""
    gate = threading.Barrier(2, timeout=30)

    def first_call(x: int, y: int) -> Any:
        gate.wait()
        return remotecall(lambda: remotecall_fetch(myid, y), x)

    out: list[Any] = [None, None]

    def run(i: int, x: int, y: int) -> None:
        out[i] = first_call(x, y)

    threads = [
        threading.Thread(target=run, args=(0, a, b)),
        threading.Thread(target=run, args=(1, b, a)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out[0].fetch(timeout=30), out[1].fetch(timeout=30)


@pytest.mark.parametrize("lazy", [True, False])
def test_all_to_all_two_first_calls_at_once_make_one_connection(
    add_workers: Any, lazy: bool
) -> None:
    for _ in range(3):  # a race: a few pairs
        a, b = add_workers(2, lazy=lazy)
        assert _call_at_once(a, b) == (b, a)
        assert remotecall_fetch(_links_to, a, b) == 1
        assert remotecall_fetch(_links_to, b, a) == 1
        # and more calls both ways go over it
        for x, y in ((a, b), (b, a)):
            many = remotecall_fetch(lambda y=y: [remotecall_fetch(myid, y) for _ in range(20)], x)
            assert many == [y] * 20
        assert remotecall_fetch(_links_to, a, b) == 1


def test_the_lower_id_calls_first_and_the_higher_dials(add_workers: Any) -> None:
    a, b = add_workers(2)
    assert a < b
    assert remotecall_fetch(lambda: remotecall_fetch(myid, b), a) == b
    assert remotecall_fetch(_links_to, a, b) == 1
    assert remotecall_fetch(_links_to, b, a) == 1


class _Ring(LocalManager):
    """Local workers in a chain: worker with ident i is connected to ident i-1 (its
    ``connect_idents``), as a manager for a custom topology would say."""

    def __init__(self, np: int, first: int = 0) -> None:
        super().__init__(np)
        self.next_ident = first

    def launch(
        self, params: dict[str, Any], launched: list[WorkerConfig], launch_ntfy: threading.Condition
    ) -> None:
        mine: list[WorkerConfig] = []
        super().launch(params, mine, threading.Condition())
        for config in mine:
            config.ident = self.next_ident
            config.connect_idents = [self.next_ident - 1] if self.next_ident else []
            self.next_ident += 1
        with launch_ntfy:
            launched.extend(mine)
            launch_ntfy.notify_all()


@pytest.fixture
def ring() -> Any:
    added: list[int] = []

    def add(np: int, first: int, **kw: Any) -> list[int]:
        """The new workers' pids in the order of their idents (workers launched together are
        admitted, and numbered, in any order)."""
        pids = addprocs(_Ring(np, first), topology="custom", **kw)
        added.extend(pids)
        registry = current_cluster().registry
        ident = {}
        for p in pids:
            info = registry.get(p)
            assert info is not None and info.config is not None
            ident[p] = info.config.ident
        return sorted(pids, key=lambda p: ident[p])

    yield add
    end_workers(added)


@pytest.mark.parametrize("lazy", [True, False])
def test_custom_connected_pairs_call_both_ways(ring: Any, lazy: bool) -> None:
    w0, w1, w2 = ring(3, 0, lazy=lazy)  # idents 0, 1, 2: 1 lists 0, 2 lists 1; any pids
    who = lambda x, y: remotecall_fetch(lambda: remotecall_fetch(myid, y), x)  # noqa: E731
    # the listed side and the other side, both directions, including a first call that goes
    # from the older worker (it did not list the newer one) to the newer one
    assert who(w0, w1) == w1
    assert who(w1, w0) == w0
    assert who(w2, w1) == w1
    assert who(w1, w2) == w2
    assert remotecall_fetch(_links_to, w1, w2) == 1
    # not connected: a clear error, both ways
    for x, y in ((w0, w2), (w2, w0)):
        with pytest.raises(RemoteException, match=r"has no connection to process .*custom"):
            who(x, y)


def test_custom_first_calls_at_once_make_one_connection(ring: Any) -> None:
    a, b = ring(2, 0)
    assert _call_at_once(a, b) == (b, a)
    assert remotecall_fetch(_links_to, a, b) == 1
    assert remotecall_fetch(_links_to, b, a) == 1


def test_custom_workers_added_later_connect_to_earlier_ones(ring: Any) -> None:
    (w0,) = ring(1, 0)
    (w1,) = ring(1, 1)  # lists ident 0
    assert remotecall_fetch(lambda: remotecall_fetch(myid, w1), w0) == w1
    assert remotecall_fetch(lambda: remotecall_fetch(myid, w0), w1) == w0


def test_master_worker_refuses_both_ways_with_the_topology_named(add_workers: Any) -> None:
    a, b = add_workers(2, topology="master_worker")
    for x, y in ((a, b), (b, a)):
        with pytest.raises(RemoteException, match=r"has no connection to process .*master_worker"):
            remotecall_fetch(lambda y=y: remotecall_fetch(myid, y), x)


def _map_on_worker(batch_size: Any, stream: bool) -> Any:
    """On a worker: pmap (or imap) over the default pool, the master's."""
    from pydistributed import imap, pmap

    if stream:
        return list(imap(lambda x: x + 1, range(6), batch_size=batch_size))
    return pmap(lambda x: x + 1, range(6), batch_size=batch_size)


@pytest.mark.parametrize(("batch_size", "stream"), [(1, False), (2, False), ("auto", True)])
def test_a_map_on_a_master_worker_worker_fails_at_once_and_leaves_the_pool_whole(
    add_workers: Any, batch_size: Any, stream: bool
) -> None:
    """Its pool's other workers cannot be reached from it: the map raises the topology's
    ValueError (it spun for ever: each worker taken, found unreachable, put back, taken
    again), and every worker is back in the pool."""
    from pydistributed import default_worker_pool, pmap

    ws = add_workers(3, topology="master_worker")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = remotecall_fetch(_map_on_worker, ws[0], batch_size, stream)
        except BaseException as e:
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the map on the worker hung"
    err = box.get("error")
    assert isinstance(err, RemoteException), box
    assert "has no connection to process" in str(err) and "master_worker" in str(err)
    pool = default_worker_pool()
    assert sorted(pool.workers) == sorted(ws)
    assert pmap(lambda x: x * 2, range(8), pool=pool) == [x * 2 for x in range(8)]


def test_a_worker_that_cannot_connect_back_says_why_at_once() -> None:
    # workers added after the cookie changed cannot authenticate to those added before: the
    # one that asked learns why from the one that could not connect back, through the master,
    # at once (it waited 20 s for the connection, then called that live worker exited)
    code = (
        "import time\n"
        "from pydistributed import RemoteException, addprocs, cluster_cookie, myid\n"
        "from pydistributed import remotecall_fetch\n"
        "(a,) = addprocs(1)\n"
        "cluster_cookie('another-cookie-of-16')\n"
        "(b,) = addprocs(1)\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    remotecall_fetch(lambda b: remotecall_fetch(myid, b), a, b)\n"
        "except RemoteException as e:\n"
        "    first = str(e).split(chr(10))[0]\n"
        "    print(type(e.captured.exc).__name__, time.monotonic() - t < 10)\n"
        "    print('authentication failed' in first, f'process {b}' in first)\n"
        "print(remotecall_fetch(myid, b) == b)\n"
    )
    assert python_stdout(code, timeout=90).split("\n")[:3] == [
        "ConnectionError True",
        "True True",
        "True",
    ]
