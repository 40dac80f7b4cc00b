"""Topologies across two hosts with their own addresses: eager and lazy ``all_to_all`` (two
first calls at once between hosts make one connection), and ``custom`` (a connected pair on
two hosts calls both ways; an unconnected pair gets a clear error)."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from pydistributed import RemoteException, SSHManager, addprocs, myid, remotecall, remotecall_fetch
from pydistributed.managers.base import WorkerConfig

from .conftest import NetnsHosts, Sshd


def _tcp_links_to(address: str) -> int:
    """On a worker: its open TCP connections to ``address`` (another host)."""
    from tests.conftest import open_sockets

    count = 0
    for s in open_sockets():
        with s:
            try:
                count += s.type == socket.SOCK_STREAM and s.getpeername()[0] == address
            except (OSError, IndexError, TypeError):
                pass
    return count


def _by_host(pids: list[int], netns: NetnsHosts) -> tuple[int, int]:
    names = {p: remotecall_fetch(socket.gethostname, p) for p in pids}
    a = next(p for p in pids if names[p] == netns.names[0])
    b = next(p for p in pids if names[p] == netns.names[1])
    return a, b


def _calls(x: int, y: int) -> Any:
    return remotecall_fetch(lambda: [remotecall_fetch(myid, y) for _ in range(5)], x)


def test_eager_all_to_all_across_hosts(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    h1, h2 = netns_hosts.addresses
    pids = addprocs([f"root@{h1}", f"root@{h2}"], lazy=False, **sshd.kw)
    cleanup_workers += pids
    a, b = _by_host(pids, netns_hosts)
    # connected at join, before any call between them: the newer one dialed the older one
    newer, newer_peer_host = (a, h2) if a > b else (b, h1)
    assert remotecall_fetch(_tcp_links_to, newer, newer_peer_host) == 1
    assert _calls(a, b) == [b] * 5
    assert _calls(b, a) == [a] * 5
    assert remotecall_fetch(_tcp_links_to, a, h2) == 1
    assert remotecall_fetch(_tcp_links_to, b, h1) == 1


def test_two_first_calls_at_once_across_hosts_make_one_connection(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    h1, h2 = netns_hosts.addresses
    pids = addprocs([f"root@{h1}", f"root@{h2}"], **sshd.kw)  # lazy
    cleanup_workers += pids
    a, b = _by_host(pids, netns_hosts)
    assert remotecall_fetch(_tcp_links_to, a, h2) == 0
    gate = threading.Barrier(2, timeout=30)
    futs: list[Any] = [None, None]

    def first(i: int, x: int, y: int) -> None:
        gate.wait()
        futs[i] = remotecall(lambda: remotecall_fetch(myid, y), x)

    threads = [
        threading.Thread(target=first, args=(0, a, b)),
        threading.Thread(target=first, args=(1, b, a)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert futs[0].fetch(timeout=60) == b and futs[1].fetch(timeout=60) == a
    assert remotecall_fetch(_tcp_links_to, a, h2) == 1
    assert remotecall_fetch(_tcp_links_to, b, h1) == 1


class _Listed(SSHManager):
    """SSH workers with idents in launch order; each lists the idents in ``links[ident]``."""

    def __init__(self, machines: list[Any], links: dict[int, list[int]]) -> None:
        super().__init__(machines)
        self.links = links

    def launch(
        self, params: dict[str, Any], launched: list[WorkerConfig], launch_ntfy: threading.Condition
    ) -> None:
        mine: list[WorkerConfig] = []
        super().launch(params, mine, threading.Condition())
        for i, config in enumerate(mine):
            config.ident = i
            config.connect_idents = self.links.get(i, [])
        with launch_ntfy:
            launched.extend(mine)
            launch_ntfy.notify_all()


def test_custom_topology_across_hosts(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    h1, h2 = netns_hosts.addresses
    # ident 0 on h1, ident 1 on h2, ident 2 on h2; 1 lists 0; 2 lists nobody
    manager = _Listed([f"root@{h1}", (f"root@{h2}", 2)], {1: [0]})
    pids = addprocs(manager, topology="custom", **sshd.kw)
    cleanup_workers += pids
    from pydistributed.cluster import current_cluster

    reg = current_cluster().registry
    by_ident = {reg.get(p).config.ident: p for p in pids}  # type: ignore[union-attr]
    w0, w1, w2 = by_ident[0], by_ident[1], by_ident[2]

    assert _calls(w0, w1) == [w1] * 5  # across hosts, from the side that did not list
    assert _calls(w1, w0) == [w0] * 5
    for x, y in ((w0, w2), (w2, w0), (w1, w2)):
        with pytest.raises(RemoteException, match=r"has no connection to process .*custom"):
            _calls(x, y)
