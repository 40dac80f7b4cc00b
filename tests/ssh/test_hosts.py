"""Workers on two hosts with their own addresses and hostnames (network namespaces)."""

from __future__ import annotations

import socket
import time

from pydistributed import addprocs, remotecall_fetch

from .conftest import NetnsHosts, Sshd


def test_workers_on_two_hosts(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    h1, h2 = netns_hosts.addresses
    start = time.monotonic()
    pids = addprocs([f"root@{h1}", (f"root@{h2}", 2)], **sshd.kw)
    took = time.monotonic() - start
    cleanup_workers += pids
    names = {p: remotecall_fetch(socket.gethostname, p) for p in pids}
    n1, n2 = netns_hosts.names
    assert sorted(names.values()) == [n1, n2, n2], took
    # each worker listens at its host's own address
    from pydistributed.cluster import current_cluster

    for p in pids:
        host = current_cluster().registry.get(p).host  # type: ignore[union-attr]
        assert host == (h1 if names[p] == n1 else h2)
    # worker to worker across the hosts (all_to_all, lazy): h1's worker calls h2's
    w1 = next(p for p in pids if names[p] == n1)
    w2 = next(p for p in pids if names[p] == n2)

    def ask(other: int) -> str:
        from pydistributed import remotecall_fetch as rf

        return rf(socket.gethostname, other)  # type: ignore[no-any-return]

    assert remotecall_fetch(ask, w1, w2) == n2
    assert remotecall_fetch(ask, w2, w1) == n1
