"""Before authentication a connection costs a worker little, for a short time: one deadline for
the whole handshake, a cap on connections in their handshake (the oldest closed first), no
thread per connection; a listener that survives failures; memory committed only as data
arrives."""

from __future__ import annotations

import os
import resource
import socket
import struct
import time
from typing import Any

import pytest

from pydistributed import remotecall_fetch
from pydistributed.listener import DEADLINE, MAX_PENDING
from tests.conftest import worker_ospid, worker_table
from tests.integration import _helpers as h
from tests.security.conftest import WAIT, FakeMaster, rss_kb, wait_until


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _address(pid: int) -> tuple[str, int]:
    info = worker_table()[pid]
    assert info.host and info.port
    return info.host, info.port


def _open_files(n: int) -> int:
    """On a worker: open ``n`` files at once (user code that needs descriptors)."""
    files = [open(os.devnull) for _ in range(n)]
    for f in files:
        f.close()
    return n


def test_a_slow_handshake_is_dropped_at_its_deadline(add_workers: Any) -> None:
    (w,) = add_workers(1)
    s = socket.create_connection(_address(w), timeout=WAIT)
    start = time.monotonic()
    closed = False
    try:
        # one byte every half second: each read of a per-read timeout would be satisfied
        for byte in b"PYDIST\x00\x02" + b"c" * 32:
            s.sendall(bytes([byte]))
            time.sleep(0.5)
            if time.monotonic() - start > DEADLINE + 3:
                break
    except OSError:
        closed = True
    if not closed:
        s.settimeout(WAIT)
        assert s.recv(100) == b""
    elapsed = time.monotonic() - start
    s.close()
    assert elapsed < DEADLINE + 3, f"held {elapsed:.1f} s"


def test_two_thousand_idle_connections_do_not_lock_the_master_out(add_workers: Any) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"this host allows {hard} open files; the attack needs 2000")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    (w,) = add_workers(1)
    ospid = worker_ospid(w)
    threads_before = _threads(ospid)
    hostile: list[socket.socket] = []
    try:
        start = time.monotonic()
        for _ in range(2000):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(_address(w))
            except BlockingIOError:
                pass
            hostile.append(s)
        opened = time.monotonic() - start
        # while they are all open: the master reaches the worker, and its calls open files
        t0 = time.monotonic()
        assert remotecall_fetch(h.identity, w, 7) == 7
        round_trip = time.monotonic() - t0
        assert remotecall_fetch(_open_files, w, 200) == 200
        # the worker holds at most MAX_PENDING of them, and no thread for any
        assert _open_fds(ospid) < MAX_PENDING + 100
        assert _threads(ospid) <= threads_before + 2
        print(
            f"\n2000 hostile connections opened in {opened:.2f} s; a round trip meanwhile "
            f"{round_trip * 1e3:.1f} ms; worker fds {_open_fds(ospid)}"
        )
    finally:
        for s in hostile:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _fail_next_thread_start() -> None:
    """On a worker: the next Thread.start raises, as under memory pressure (a fault injected
    by hand: it cannot be produced otherwise without starving the whole test machine)."""
    import threading

    real = threading.Thread.start

    def failing(self: threading.Thread) -> None:
        threading.Thread.start = real  # type: ignore[method-assign]
        raise RuntimeError("can't start new thread")

    threading.Thread.start = failing  # type: ignore[method-assign]


def _ask(b: int) -> int:
    from pydistributed import myid

    return int(remotecall_fetch(myid, b))


def test_the_listener_survives_a_failed_thread_start(add_workers: Any) -> None:
    b, a = add_workers(2)  # a has the higher id: a dials b (peerlinks.py)
    remotecall_fetch(_fail_next_thread_start, b)
    # a dials b: b's listener cannot start the connection's thread, drops it, and goes on
    with pytest.raises(Exception, match=r"exited|closed|lost"):
        remotecall_fetch(_ask, a, b)
    assert remotecall_fetch(_ask, a, b) == b  # the next connection works
    assert remotecall_fetch(h.identity, b, 1) == 1


def _limit_files(n: int) -> tuple[int, int]:
    """On a worker: allow only ``n`` more open files; returns the old limits."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (used + n, old[1]))
    return old


def _restore_files(old: tuple[int, int]) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_the_listener_survives_running_out_of_descriptors(
    add_workers: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    a, b = add_workers(2)
    old = remotecall_fetch(_limit_files, b, 3)
    hostile = [socket.create_connection(_address(b), timeout=WAIT) for _ in range(20)]
    err: list[str] = []
    wait_until(
        lambda: err.append(capfd.readouterr().err) or "Too many open files" in "".join(err),
        "b's accept to fail with EMFILE",
    )
    remotecall_fetch(_restore_files, b, old)
    for s in hostile:
        s.close()
    assert remotecall_fetch(_ask, a, b) == b  # b accepts again


def test_a_huge_declared_frame_commits_no_memory(raw_worker: Any) -> None:
    w = raw_worker()
    m = FakeMaster(w)  # an authenticated peer: it knows the cookie
    try:
        m.join()
        before = rss_kb(w.pid)
        header = struct.pack("!Bqqq", 4, 0, 0, 0)  # a RemoteDo...
        body = b"\x80\x05."
        lens = [len(header), len(body), 4 << 30]  # ...with a 4 GiB buffer that never comes
        m.sock.sendall(struct.pack("!I", 3) + struct.pack("!3Q", *lens) + header + body)
        # and 16 MiB of it: when sendall returns, the worker has taken in all but what the
        # socket buffers hold, so it has made the frame's memory and read into it
        m.sock.sendall(b"x" * (16 << 20))
        grown = rss_kb(w.pid) - before
        assert grown < 200_000, f"the worker grew by {grown} kB"
    finally:
        m.close()
    wait_until(lambda: w.proc.poll() is not None, "the worker to exit with its master")
