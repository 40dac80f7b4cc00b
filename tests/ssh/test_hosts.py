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


def test_large_frames_between_hosts_are_authenticated_with_poly1305(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    """Frames of 1 MiB or more over TCP links with frame tags, master to worker and worker
    to worker across hosts: Poly1305 where both sides have it (framemac.py), data intact."""
    import hashlib

    from pydistributed import poly1305

    h1, h2 = netns_hosts.addresses
    pids = addprocs([f"root@{h1}", f"root@{h2}"], **sshd.kw)
    cleanup_workers += pids
    w1, w2 = pids
    payload = bytes(range(256)) * (3 * 2**20 // 256 + 5)  # 3 MiB and a bit
    digest = hashlib.sha256(payload).hexdigest()

    def echo(b: bytes) -> bytes:
        return b

    def via(other: int, b: bytes) -> tuple[str, bool]:
        """On a worker: send ``b`` to ``other`` and back; the digest, and whether this
        worker's link to ``other`` uses Poly1305 both ways."""
        import hashlib as hl

        from pydistributed import remotecall_fetch as rf
        from pydistributed import runtime

        back = rf(echo, other, b)
        peer = runtime.current_cluster().connections.lookup(other)
        assert peer is not None and peer.mac_in is not None and peer.writer.mac is not None
        return hl.sha256(back).hexdigest(), peer.mac_in.bulk and peer.writer.mac.bulk

    from pydistributed import runtime

    for w in pids:
        back = remotecall_fetch(echo, w, payload)
        assert hashlib.sha256(back).hexdigest() == digest
        peer = runtime.current_cluster().connections.lookup(w)
        assert peer is not None and peer.mac_in is not None  # a TCP link: tags
        assert peer.mac_in.bulk == poly1305.available()
    assert remotecall_fetch(via, w1, w2, payload) == (digest, poly1305.available())
