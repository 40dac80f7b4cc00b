"""tunnel=True: workers listen on their host's loopback; the master reaches each through an
``ssh -L`` forward that ends with the worker."""

from __future__ import annotations

import os
import socket
import time

import pytest

from pydistributed import RemoteException, addprocs, remotecall_fetch, rmprocs
from pydistributed.cluster import current_cluster
from pydistributed.managers.ssh import SSHManager

from .conftest import NetnsHosts, Sshd, wait_gone


def _where() -> tuple[str, int, list[str]]:
    from pydistributed.cluster import current_cluster as cc

    info = cc().registry.get(cc().myid)
    host = info.host if info is not None else ""
    return socket.gethostname(), os.getpid(), [str(host)]


def _ask(other: int) -> int:
    from pydistributed import remotecall_fetch as rf

    return rf(os.getpid, other)  # type: ignore[no-any-return]


def test_tunnelled_workers_on_two_hosts(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    h1, h2 = netns_hosts.addresses
    manager = SSHManager([f"root@{h1}", (f"root@{h2}", 2)])
    pids = addprocs(manager, tunnel=True, topology="master_worker", **sshd.kw)
    cleanup_workers += pids
    seen = {p: remotecall_fetch(_where, p) for p in pids}
    assert sorted(name for name, _, _ in seen.values()) == sorted(
        [netns_hosts.names[0], netns_hosts.names[1], netns_hosts.names[1]]
    )
    forwards = {}
    for p in pids:
        # each listens on its own host's loopback, which this host cannot reach directly
        assert current_cluster().registry.get(p).host == "127.0.0.1"  # type: ignore[union-attr]
        tunnel = manager.tunnel_of(p)
        assert tunnel is not None and tunnel.process is not None
        assert tunnel.process.poll() is None
        forwards[p] = tunnel.process
    assert len({t.pid for t in forwards.values()}) == 3
    # a worker-to-worker call is refused (master_worker)
    with pytest.raises(RemoteException, match="ValueError"):
        remotecall_fetch(_ask, pids[1], pids[2])
    first = pids[0]
    rmprocs(first, waitfor=10)
    assert wait_gone(seen[first][1], 5), "the remote worker still runs"
    assert wait_gone(forwards[first].pid, 5), "its forward still runs"
    assert manager.tunnel_of(first) is None
    assert all(forwards[p].poll() is None for p in pids[1:])  # the others' stay
    assert [remotecall_fetch(lambda: 1, p) for p in pids[1:]] == [1, 1]


def test_a_tunnelled_worker_cut_off_exits_by_itself(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    """Its link is loopback to its host's sshd, which keeps it up after the cut: it exits
    because the master's heartbeats stop arriving (heartbeat.TUNNEL_SILENCE), and the master
    removes it when its ssh forward gives up."""
    from pydistributed import workers
    from pydistributed.heartbeat import TUNNEL_SILENCE

    from .test_dead_links import SLACK, cut

    h1, h2 = netns_hosts.addresses
    pids = addprocs([f"root@{h1}", f"root@{h2}"], tunnel=True, topology="master_worker", **sshd.kw)
    cleanup_workers += pids
    seen = {p: remotecall_fetch(_where, p) for p in pids}
    (w2,) = [p for p in pids if seen[p][0] == netns_hosts.names[1]]
    ospid = seen[w2][1]
    start = time.monotonic()
    with cut(netns_hosts, 1, "link"):
        assert wait_gone(ospid, TUNNEL_SILENCE + SLACK + 2), "the cut-off worker still runs"
        exited = time.monotonic() - start
        while w2 in workers() and time.monotonic() - start < 30:
            time.sleep(0.05)
        removed = time.monotonic() - start
        assert w2 not in workers()
    print(f"\nFIGURE tunnel idle cut: worker exited {exited:.1f} s, removed {removed:.1f} s")
    assert exited >= TUNNEL_SILENCE - 1  # it waited for the silence, not less
    assert removed < 15
    (w1,) = [p for p in pids if p != w2]
    assert remotecall_fetch(lambda: 1, w1) == 1  # the other host is not affected
