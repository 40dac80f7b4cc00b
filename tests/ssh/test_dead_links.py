"""Dead links: a namespace host cut off the network (an nft rule that drops everything inside
it, or its bridge port down), idle and with a call in flight. The master notices within
``PYDIST_LINK_TIMEOUT`` + ~1 s (keepalive for idle links, the heartbeat's look at the kernel's
acknowledgements for links with data in flight): pending calls raise ProcessExitedException,
the worker leaves ``workers()``, and ``pmap`` with retries completes on the other host. A
worker that is only busy (a C call holding the GIL) is not taken for dead."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pydistributed import (
    ProcessExitedException,
    addprocs,
    pmap,
    remotecall,
    remotecall_fetch,
    workers,
)
from tests.conftest import end_workers

from .conftest import NetnsHosts, Sshd, wait_gone

LINK_TIMEOUT = 8.0  # PYDIST_LINK_TIMEOUT's default
SLACK = 3.0  # the heartbeat's tick, retransmission timing, a loaded test machine


def _run(*args: str) -> None:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")


@contextmanager
def cut(netns: NetnsHosts, index: int, how: str) -> Iterator[None]:
    """Host ``index`` cut off while the block runs; connected again after it, always."""
    name, veth = netns.names[index], netns.vethnames[index]
    table = f"pdcut{os.getpid()}"
    if how == "nft":
        _run("ip", "netns", "exec", name, "nft", "add", "table", "inet", table)
        try:
            for hook in ("input", "output"):
                _run(
                    "ip", "netns", "exec", name, "nft", "add", "chain", "inet", table, hook,
                    f"{{ type filter hook {hook} priority 0 ; policy drop ; }}",
                )  # fmt: skip
        except BaseException:
            _run("ip", "netns", "exec", name, "nft", "delete", "table", "inet", table)
            raise
    elif how == "nft-here":
        # on this side: what the host sends arrives here and is dropped, unacknowledged
        address = netns.addresses[index]
        _run("nft", "add", "table", "inet", table)
        try:
            for hook, match in (("input", "saddr"), ("output", "daddr")):
                _run(
                    "nft", "add", "chain", "inet", table, hook,
                    f"{{ type filter hook {hook} priority 0 ; policy accept ; }}",
                )  # fmt: skip
                _run("nft", "add", "rule", "inet", table, hook, "ip", match, address, "drop")
        except BaseException:
            _run("nft", "delete", "table", "inet", table)
            raise
    else:
        _run("ip", "link", "set", veth, "down")
    try:
        yield
    finally:
        if how == "nft":
            _run("ip", "netns", "exec", name, "nft", "delete", "table", "inet", table)
        elif how == "nft-here":
            _run("nft", "delete", "table", "inet", table)
        else:
            _run("ip", "link", "set", veth, "up")


def _hostname_pids(pids: list[int]) -> dict[int, tuple[str, int]]:
    return {p: remotecall_fetch(lambda: (socket.gethostname(), os.getpid()), p) for p in pids}


@pytest.fixture
def two_hosts(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> Iterator[tuple[list[int], list[int]]]:
    """Workers on h1 (two) and h2 (one): ``(on_h1, on_h2)``; every remote process they
    started is gone after the test (killed by OS pid if it did not exit)."""
    h1, h2 = netns_hosts.addresses
    pids = addprocs([(f"root@{h1}", 2), f"root@{h2}"], **sshd.kw)
    cleanup_workers += pids
    where = _hostname_pids(pids)
    on1 = [p for p in pids if where[p][0] == netns_hosts.names[0]]
    on2 = [p for p in pids if where[p][0] == netns_hosts.names[1]]
    assert len(on1) == 2 and len(on2) == 1, where
    try:
        yield on1, on2
    finally:
        end_workers([p for p in pids if p in workers()])
        for _, ospid in where.values():
            if not wait_gone(ospid, 15):
                print(f"FIGURE teardown: worker os pid {ospid} still there, killed")
                os.kill(ospid, signal.SIGKILL)
                wait_gone(ospid, 5)


def _wait_removed(pid: int, limit: float) -> float:
    start = time.monotonic()
    while pid in workers():
        if time.monotonic() - start > limit:
            raise AssertionError(f"worker {pid} still in workers() {limit:g} s after the cut")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.parametrize("how", ["nft", "link"])
def test_idle_link_cut(
    netns_hosts: NetnsHosts, two_hosts: tuple[list[int], list[int]], how: str
) -> None:
    on1, on2 = two_hosts
    (w2,) = on2
    client = _ssh_client(w2)
    with cut(netns_hosts, 1, how):
        took = _wait_removed(w2, LINK_TIMEOUT + SLACK)
        assert wait_gone(client, 10), f"the ssh client {client} of a cut worker still runs"
        print(f"\nFIGURE idle {how}: removed {took:.2f} s after the cut")
        with pytest.raises(ProcessExitedException):
            remotecall_fetch(os.getpid, w2)
    # the other host is not affected
    assert [remotecall_fetch(lambda: 3, p) for p in on1] == [3, 3]


def _ssh_client(pid: int) -> int:
    """The os pid of the local ssh client of SSH worker ``pid``."""
    from pydistributed.cluster import current_cluster

    info = current_cluster().registry.get(pid)
    assert info is not None and info.process is not None
    return int(info.process.pid)


# With a call in flight the cut is an nft rule only: on this machine kind, `ip link set up`
# of the cut host's bridge port sometimes stays in uninterruptible sleep while this process
# holds a socket with unacknowledged data across that port (seen 3 times in ~25 runs; it
# returned when the test process was killed), which would hang the test, not the library.
@pytest.mark.parametrize("how", ["nft"])
def test_cut_with_calls_in_flight(
    netns_hosts: NetnsHosts, two_hosts: tuple[list[int], list[int]], how: str
) -> None:
    on1, on2 = two_hosts
    (w2,) = on2
    client = _ssh_client(w2)
    running = remotecall(time.sleep, w2, 60)  # sent and acknowledged: the link is idle
    time.sleep(0.3)
    with cut(netns_hosts, 1, how):
        start = time.monotonic()
        sent = remotecall(lambda: b"x" * 10, w2)  # sent after the cut: never acknowledged
        # more than the buffers hold: this send blocks until the link is found dead, and
        # then raises (or, had it fitted after all, its Future does)
        futs = [sent, running]
        try:
            futs.append(remotecall(len, w2, b"y" * (16 << 20)))
        except ProcessExitedException:
            pass
        for fut in futs:
            with pytest.raises(ProcessExitedException):
                fut.fetch(timeout=LINK_TIMEOUT + SLACK + 5)  # type: ignore[call-arg]
        took = time.monotonic() - start
        print(f"\nFIGURE in flight {how}: ProcessExitedException {took:.2f} s after the cut")
        assert took < LINK_TIMEOUT + SLACK, took
        # the send that raised may be a moment ahead of the worker's deregistration
        _wait_removed(w2, 2)
        # its ssh session, stuck on the dead link, is ended too (KILL_WAIT after it left)
        assert wait_gone(client, 10), f"the ssh client {client} of a cut worker still runs"
    assert [remotecall_fetch(lambda: 4, p) for p in on1] == [4, 4]


def test_a_worker_cut_off_while_sending_exits(
    netns_hosts: NetnsHosts, two_hosts: tuple[list[int], list[int]]
) -> None:
    """The worker side: its master's kernel no longer acknowledges what it sends (a large
    result; the cut is on the master's side, so the worker's packets leave its host): it closes
    the master's connection and exits within PYDIST_LINK_TIMEOUT, instead of retransmitting for
    ~15 minutes."""
    on1, on2 = two_hosts
    (w2,) = on2
    ospid = remotecall_fetch(os.getpid, w2)

    def result_later() -> bytes:
        time.sleep(1.0)
        return b"r" * (64 << 20)

    # remotecall_fetch: the worker sends the result by itself when it is ready (after the cut)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(remotecall_fetch, result_later, w2)
    time.sleep(0.3)  # the call has arrived (and was acknowledged) before the cut
    with cut(netns_hosts, 1, "nft-here"):
        start = time.monotonic()
        with pytest.raises(ProcessExitedException):
            fut.result(timeout=LINK_TIMEOUT + SLACK + 5)
        pool.shutdown()
        assert wait_gone(ospid, LINK_TIMEOUT + SLACK + 2), "the cut-off worker still runs"
        took = time.monotonic() - start
        print(f"\nFIGURE worker cut off while sending: exited {took:.2f} s after the cut")
    assert [remotecall_fetch(lambda: 5, p) for p in on1] == [5, 5]


def test_pmap_with_retries_completes_on_the_other_host(
    netns_hosts: NetnsHosts, two_hosts: tuple[list[int], list[int]]
) -> None:
    on1, on2 = two_hosts

    def work(x: int) -> tuple[int, str]:
        time.sleep(0.2)
        return x * x, socket.gethostname()

    with cut(netns_hosts, 1, "nft"):
        start = time.monotonic()
        out = pmap(work, range(30), retry_delays=[0.1] * 3)
        took = time.monotonic() - start
    assert [v for v, _ in out] == [x * x for x in range(30)]
    assert {host for _, host in out} == {netns_hosts.names[0]}  # on1's host only
    assert all(p in workers() for p in on1)
    assert on2[0] not in workers()
    assert took < LINK_TIMEOUT + SLACK + 30 * 0.2, took


def test_a_busy_worker_is_not_taken_for_dead(
    sshd: Sshd, netns_hosts: NetnsHosts, cleanup_workers: list[int]
) -> None:
    """A remote worker in a C call that holds the GIL for longer than the link timeout, while
    the master sends it more than its socket buffers hold: its kernel still answers, so the
    link is alive; the call and the data arrive."""
    h1 = netns_hosts.addresses[0]
    (w,) = addprocs([f"root@{h1}"], **sshd.kw)
    cleanup_workers.append(w)

    def hold_the_gil(seconds: int) -> int:
        import ctypes

        return int(ctypes.PyDLL(None).sleep(seconds))  # PyDLL: the GIL stays held

    busy = remotecall(hold_the_gil, w, int(LINK_TIMEOUT + 4))
    time.sleep(0.5)
    payload = remotecall(len, w, b"z" * (32 << 20))  # fills the buffers: the window closes
    assert busy.fetch() == 0  # type: ignore[call-arg]
    assert payload.fetch() == 32 << 20  # type: ignore[call-arg]
    assert w in workers()


def test_link_silence_only_on_kept_alive_links_with_data_waiting() -> None:
    from pydistributed.sockets import link_silence, set_socket_options

    a, b = socket.socketpair()  # AF_UNIX
    with a, b:
        assert link_silence(a) is None
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=5)
        conn, _ = server.accept()
        with client, conn:
            assert link_silence(client) is None  # loopback: no keepalive
            set_socket_options(client, remote=True)
            assert link_silence(client) is None  # nothing waits for an acknowledgement
            client.sendall(b"x")
            time.sleep(0.1)
            assert link_silence(client) is None  # acknowledged at once
    assert link_silence(None) is None
