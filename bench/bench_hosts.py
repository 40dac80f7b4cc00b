"""W1 and W3 to a worker on another host (a network-namespace host reached over a veth and a
bridge, as in tests/ssh), each beside the raw-socket baseline over the same link in the same
run: a builtin called by reference (``abs``: the worker cannot import this file), and a
plain Python process in that namespace answering on a plain TCP socket
(``_rawpeer.py``).

Run as root (it builds the namespace hosts and an sshd, like the SSH tests)::

    python -m pytest bench/bench_hosts.py -q -s -p no:cacheprovider

It prints ``FIGURE`` lines: medians over rounds, each round running both contenders.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pydistributed import addprocs, remotecall_fetch, rmprocs
from tests.ssh.conftest import NetnsHosts, Sshd, netns_hosts, sshd  # noqa: F401 (fixtures)

BENCH = Path(__file__).resolve().parent
ROUNDS = 7
W1_CALLS = 300
W3_BYTES = 100_000_000


def _raw_peer(
    netns: NetnsHosts, index: int, mode: str, size: int
) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """A raw peer in namespace host ``index`` connected to a socket of ours; (socket, process)."""
    bridge_ip = netns.addresses[index].rsplit(".", 1)[0] + ".254"
    with socket.create_server((bridge_ip, 0)) as server:
        server.settimeout(30)
        port = server.getsockname()[1]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns.names[index], sys.executable,
             str(BENCH / "_rawpeer.py"), "tcp", f"{bridge_ip}:{port}", mode, str(size)],
        )  # fmt: skip
        try:
            conn, _ = server.accept()
        except BaseException:
            proc.kill()
            proc.wait(10)
            raise
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.settimeout(60)
    return conn, proc


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionError("closed")
        got += k
    return bytes(buf)


def _end(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    sock.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_w1_w3_to_a_namespace_host(sshd: Sshd, netns_hosts: NetnsHosts) -> None:  # noqa: F811
    h1 = netns_hosts.addresses[0]
    (w,) = addprocs([f"root@{h1}"], **sshd.kw)
    peers: list[tuple[socket.socket, subprocess.Popen[bytes]]] = []
    try:
        peers.append(_raw_peer(netns_hosts, 0, "echo", 8))
        peers.append(_raw_peer(netns_hosts, 0, "sink", W3_BYTES))
        (echo, _), (sink, _) = peers
        ours_w1, raw_w1, ours_w3, raw_w3 = [], [], [], []
        arr = np.ones(W3_BYTES // 8)
        data = arr.tobytes()
        for _ in range(50):
            remotecall_fetch(abs, w, 1)
        for _ in range(ROUNDS):
            t = time.perf_counter()
            for _ in range(W1_CALLS):
                remotecall_fetch(abs, w, 1)
            ours_w1.append((time.perf_counter() - t) / W1_CALLS)
            t = time.perf_counter()
            for _ in range(W1_CALLS):
                echo.sendall(b"12345678")
                _recv_exactly(echo, 8)
            raw_w1.append((time.perf_counter() - t) / W1_CALLS)
            t = time.perf_counter()
            assert remotecall_fetch(np.sum, w, arr) == W3_BYTES // 8
            ours_w3.append(W3_BYTES / (time.perf_counter() - t) / 1e9)
            t = time.perf_counter()
            sink.sendall(data)
            _recv_exactly(sink, 8)
            raw_w3.append(W3_BYTES / (time.perf_counter() - t) / 1e9)
        m = statistics.median
        print(
            f"\nFIGURE W1 namespace host: pydistributed {m(ours_w1) * 1e6:.0f} us, raw TCP "
            f"{m(raw_w1) * 1e6:.0f} us, {m(ours_w1) / m(raw_w1):.2f}x raw"
            f"\nFIGURE W3 namespace host: pydistributed {m(ours_w3):.2f} GB/s, raw TCP "
            f"{m(raw_w3):.2f} GB/s, {m(ours_w3) / m(raw_w3):.2f}x raw"
            f" (medians of {ROUNDS} rounds; cpus {os.cpu_count()})"
        )
    finally:
        for sock, proc in peers:
            _end(sock, proc)
        rmprocs(w, waitfor=10)
