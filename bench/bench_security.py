"""The costs of connection security: W1 and W3 over each kind of link, and a flood of hostile
connections. Not a test: it prints figures, measured in one process, side by side.

Run from the repository root (``PYTHONPATH=src``; point it at another tree's ``src`` to measure
that tree the same way)::

    python bench/bench_security.py [--quick] [--skip-flood]

Links measured:

- **local**: a local worker as ``addprocs`` makes it (the Unix-socket twin, checked by the
  kernel: no frame tags);
- **tcp**: the same worker reached over loopback TCP (as a remote host would be): frame tags;
- **tls**: loopback TCP in TLS (``PYDIST_TLS=all``): no tags, TLS records.

``BENCH_LINKS=local,tcp`` picks the links. For each: W1, the median of block means of
``remotecall_fetch(identity, w, 1)`` in us; W3, a 100 MB float64 array to the worker and its
sum back, in GB/s (best of the repetitions). The flood: 2000 TCP connections that send nothing,
opened at once to a worker: the master's round trip to it while they are open, whether the
worker's own code can still open a file, and how long until the worker holds none of them.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _w1(w: int, blocks: int, per_block: int) -> float:
    from _funcs import identity

    from pydistributed import remotecall_fetch

    for _ in range(100):
        remotecall_fetch(identity, w, 1)
    means = []
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(per_block):
            remotecall_fetch(identity, w, 1)
        means.append((time.perf_counter() - t) / per_block * 1e6)
    return statistics.median(means)


def _w3(w: int, reps: int) -> float:
    import numpy as np
    from _funcs import array_sum

    from pydistributed import remotecall_fetch

    a = np.ones(100_000_000 // 8)
    remotecall_fetch(array_sum, w, a)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        remotecall_fetch(array_sum, w, a)
        best = min(best, time.perf_counter() - t)
    return a.nbytes / best / 1e9


def _tcp_manager() -> Any:
    from pydistributed import LocalManager, sockets

    class TcpOnly(LocalManager):
        def connect(self, pid: int, config: Any) -> Any:
            return sockets.socket_streams(sockets.connect_tcp(config.host, config.port, 30))

    return TcpOnly(1)


def links(quick: bool) -> list[tuple[str, float, float]]:
    from pydistributed import addprocs, rmprocs

    blocks, per_block, reps = (5, 200, 3) if quick else (9, 400, 5)
    rows = []
    for name in os.environ.get("BENCH_LINKS", "local,tcp,tls").split(","):
        os.environ["PYDIST_TLS"] = "all" if name == "tls" else "off"
        (w,) = addprocs(1) if name == "local" else addprocs(_tcp_manager())
        try:
            rows.append((name, _w1(w, blocks, per_block), _w3(w, reps)))
        finally:
            rmprocs(w, waitfor=10)
    os.environ["PYDIST_TLS"] = "off"
    return rows


def _opens_a_file() -> str:
    try:
        with open(os.devnull):
            return "yes"
    except OSError as e:
        return f"no ({e.strerror})"


def flood(n: int = 2000) -> tuple[float, float, str, float]:
    """(seconds to open ``n`` idle connections, master's round trip meanwhile in ms, whether
    the worker's own code can open a file meanwhile, seconds until the worker holds none of
    them)."""
    from _funcs import identity

    from pydistributed import addprocs, remotecall_fetch, rmprocs
    from pydistributed.cluster import current_cluster

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, n + 1000)), hard))
    (w,) = addprocs(1)
    info = current_cluster().registry.get(w)
    assert info is not None and info.host and info.port and info.ospid
    base = len(os.listdir(f"/proc/{info.ospid}/fd"))
    socks = []
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect((info.host, info.port))
            except BlockingIOError:
                pass
            socks.append(s)
        opened = time.perf_counter() - t0
        t = time.perf_counter()
        remotecall_fetch(identity, w, 1)
        rtt = (time.perf_counter() - t) * 1e3
        opens = remotecall_fetch(_opens_a_file, w)
        while len(os.listdir(f"/proc/{info.ospid}/fd")) > base + 2:
            time.sleep(0.01)
            if time.perf_counter() - t0 > 60:
                break
        rid = time.perf_counter() - t0
    finally:
        for s in socks:
            s.close()
        rmprocs(w, waitfor=10)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return opened, rtt, opens, rid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--skip-flood", action="store_true")
    args = p.parse_args()
    import pydistributed

    print(f"pydistributed from {os.path.dirname(pydistributed.__file__)}")
    for name, w1, w3 in links(args.quick):
        print(f"  {name:6s} W1 {w1:7.1f} us   W3 {w3:5.2f} GB/s")
    if not args.skip_flood:
        opened, rtt, opens, rid = flood()
        print(
            f"  flood: 2000 idle connections opened in {opened:.2f} s; round trip meanwhile "
            f"{rtt:.1f} ms; the worker's code opens a file meanwhile: {opens}; the worker "
            f"held none of them after {rid:.1f} s"
        )


if __name__ == "__main__":
    main()
