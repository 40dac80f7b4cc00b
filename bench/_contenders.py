"""One contender of one workload, measured in a fresh process of its own.

``run.py`` starts ``python bench/_contenders.py WORKLOAD KEY PARAMS_JSON`` once per contender
and round, so that no contender inherits another's threads, pools or sockets
(``multiprocessing`` forking after pydistributed's reader threads would be unsafe), and so that
a contender that hangs can be killed without harming the others. PARAMS_JSON holds the sample
counts and the CPU placement (``apply_placement``). The last line on standard output is
``BENCH_RESULT {json}`` with ``samples`` (seconds: per-call block means for W1, per-transfer
times for W3) and ``info`` (notes such as the time ``addprocs`` took).
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import _funcs

HERE = os.path.dirname(os.path.abspath(__file__))
RAWPEER = os.path.join(HERE, "_rawpeer.py")
PING_SIZE = 64  # bytes each way in the raw ping-pong
ACK_SIZE = 8
CALL_TIMEOUT_S = 30.0  # any single call of a peer that supports a timeout
RAW_TIMEOUT_S = 30  # kernel-level timeout on every raw socket operation
Result = dict[str, Any]
Params = dict[str, Any]
NOTES: dict[str, Any] = {}  # merged into every result's info


# -- where the processes run ----------------------------------------------------------------------


def descendants(root: int) -> list[int]:
    """Pids of every live descendant of ``root`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[-1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def place(params: Params) -> None:
    """Pin this process's descendants, every thread of them, to the child CPU, if any.

    Called once the contender's workers exist, just before the warm-up; threads they start
    later inherit the pinning. This process pinned itself (all its threads) in ``main``.
    """
    cpu = params.get("child_cpu")
    if cpu is None:
        return
    pinned = 0
    for pid in descendants(os.getpid()):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, {cpu})
                pinned += 1
            except OSError:
                pass
    NOTES["pinned_threads"] = pinned


def apply_placement(params: Params) -> None:
    """``split``: this process on one CPU, the processes it starts on another; ``shared``: all
    on one CPU; ``free``: wherever the scheduler puts them."""
    placement = params.get("placement", "free")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < {"split": 2, "shared": 1}.get(placement, 0):
        placement = "free"
    if placement != "free":
        os.sched_setaffinity(0, {cpus[0]})
    if placement == "split":
        params["child_cpu"] = cpus[1]
    NOTES["placement"] = placement


# -- measuring ----------------------------------------------------------------------------------


def latency_blocks(call: Callable[[], Any], params: Params) -> list[float]:
    """Per-call mean time of each block of calls, after a warm-up."""
    place(params)
    for _ in range(params["warmup"]):
        call()
    samples = []
    for _ in range(params["blocks"]):
        n = params["per_block"]
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        samples.append((time.perf_counter() - t0) / n)
    return samples


def repeated(call: Callable[[], Any], params: Params) -> list[float]:
    """Time of each repetition of one call, after a warm-up."""
    place(params)
    for _ in range(params["warmup"]):
        call()
    samples = []
    for _ in range(params["reps"]):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return samples


def check(got: Any, want: Any, what: str) -> None:
    ok = math.isclose(got, want) if isinstance(want, float) else got == want
    if not ok:
        raise AssertionError(f"{what} returned {got!r}, expected {want!r}")


def make_array(params: Params) -> Any:
    import numpy as np

    return np.arange(params["nbytes"] // 8, dtype=np.float64)


# -- the raw socket peer --------------------------------------------------------------------------


def set_kernel_timeouts(sock: socket.socket, seconds: int) -> None:
    tv = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    size = len(view)
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            raise ConnectionError(f"raw peer closed after {got} of {size} bytes")
        got += n


@contextmanager
def raw_peer(family: str, mode: str, size: int) -> Iterator[socket.socket]:
    """A child process on the other end of a connected socket, ended on exit."""
    tmpdir = None
    if family == "tcp":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{listener.getsockname()[1]}"
    else:
        tmpdir = tempfile.mkdtemp(prefix="pydist-bench-")
        address = os.path.join(tmpdir, "s")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address)
    listener.listen(1)
    listener.settimeout(RAW_TIMEOUT_S)
    child = subprocess.Popen(
        [sys.executable, RAWPEER, family, address, mode, str(size)], stdin=subprocess.DEVNULL
    )
    try:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(None)  # blocking; the kernel timeouts below bound every call
            if family == "tcp":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_kernel_timeouts(sock, RAW_TIMEOUT_S)
            yield sock
    finally:
        listener.close()
        try:
            child.wait(timeout=5)  # it exits on end of file
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)
        if tmpdir is not None:
            if os.path.exists(address):
                os.unlink(address)
            os.rmdir(tmpdir)


# -- W1 latency ---------------------------------------------------------------------------------


def w1_raw(family: str, params: Params) -> Result:
    msg = bytes(range(PING_SIZE))
    buf = bytearray(PING_SIZE)
    view = memoryview(buf)
    with raw_peer(family, "echo", PING_SIZE) as sock:

        def call() -> bytearray:
            sock.sendall(msg)
            recv_exactly(sock, view)
            return buf

        check(bytes(call()), msg, "echo")
        return {"samples": latency_blocks(call, params), "info": {"message_bytes": PING_SIZE}}


def w1_raw_tcp(params: Params) -> Result:
    return w1_raw("tcp", params)


def w1_raw_unix(params: Params) -> Result:
    return w1_raw("unix", params)


def mp_pool(method: str | None, processes: int) -> Any:
    import multiprocessing

    return multiprocessing.get_context(method).Pool(processes)


def w1_mp(method: str | None, params: Params) -> Result:
    pool = mp_pool(method, 1)
    try:
        # apply() is apply_async().get(); spelt out to bound the wait.
        def call() -> Any:
            return pool.apply_async(_funcs.identity, (1,)).get(CALL_TIMEOUT_S)

        check(call(), 1, "Pool.apply")
        return {"samples": latency_blocks(call, params)}
    finally:
        pool.terminate()
        pool.join()


def w1_mp_fork(params: Params) -> Result:
    return w1_mp("fork", params)


def w1_mp_spawn(params: Params) -> Result:
    return w1_mp("spawn", params)


def w1_ppe(params: Params) -> Result:
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(1)
    try:

        def call() -> Any:
            return ex.submit(_funcs.identity, 1).result(CALL_TIMEOUT_S)

        check(call(), 1, "ProcessPoolExecutor.submit")
        return {"samples": latency_blocks(call, params)}
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def w1_loky(params: Params) -> Result:
    from loky import get_reusable_executor

    ex = get_reusable_executor(max_workers=1)
    try:

        def call() -> Any:
            return ex.submit(_funcs.identity, 1).result(CALL_TIMEOUT_S)

        check(call(), 1, "loky submit")
        return {"samples": latency_blocks(call, params)}
    finally:
        ex.shutdown(wait=True)


@contextmanager
def pydist_workers(n: int) -> Iterator[tuple[list[int], float]]:
    from pydistributed import addprocs, rmprocs

    t0 = time.perf_counter()
    ws = addprocs(n)
    startup = time.perf_counter() - t0
    try:
        yield ws, startup
    finally:
        rmprocs(ws, waitfor=10)


def w1_pydist(params: Params) -> Result:
    from pydistributed import remotecall_fetch, workers

    with pydist_workers(1) as (ws, startup):
        w = ws[0]
        check(workers(), ws, "workers()")

        def call() -> Any:
            return remotecall_fetch(_funcs.identity, w, 1)

        check(call(), 1, "remotecall_fetch")
        return {"samples": latency_blocks(call, params), "info": {"addprocs_1_s": startup}}


# -- W3 bandwidth -------------------------------------------------------------------------------


def w3_raw(family: str, mode: str, params: Params) -> Result:
    arr = make_array(params)
    data = memoryview(arr).cast("B")
    ack = bytearray(ACK_SIZE)
    ack_view = memoryview(ack)
    with raw_peer(family, mode, data.nbytes) as sock:

        def call() -> bytearray:
            sock.sendall(data)
            recv_exactly(sock, ack_view)
            return ack

        if mode == "sinksum":
            check(struct.unpack("d", call())[0], float(arr.sum()), "raw sink")
        return {"samples": repeated(call, params)}


def w3_raw_tcp(params: Params) -> Result:
    return w3_raw("tcp", "sink", params)


def w3_raw_tcp_sum(params: Params) -> Result:
    return w3_raw("tcp", "sinksum", params)


def w3_raw_unix(params: Params) -> Result:
    return w3_raw("unix", "sink", params)


def w3_memcpy(params: Params) -> Result:
    import numpy as np

    arr = make_array(params)
    dst = np.empty_like(arr)
    return {"samples": repeated(lambda: np.copyto(dst, arr), params)}


def w3_numpy_sum(params: Params) -> Result:
    arr = make_array(params)
    return {"samples": repeated(lambda: _funcs.array_sum(arr), params)}


def w3_mp_fork(params: Params) -> Result:
    arr = make_array(params)
    want = _funcs.array_sum(arr)
    pool = mp_pool("fork", 1)
    try:

        def call() -> Any:
            return pool.apply_async(_funcs.array_sum, (arr,)).get(CALL_TIMEOUT_S)

        check(call(), want, "Pool.apply(array_sum)")
        return {"samples": repeated(call, params)}
    finally:
        pool.terminate()
        pool.join()


def w3_loky(params: Params) -> Result:
    from loky import get_reusable_executor

    arr = make_array(params)
    want = _funcs.array_sum(arr)
    ex = get_reusable_executor(max_workers=1)
    try:

        def call() -> Any:
            return ex.submit(_funcs.array_sum, arr).result(CALL_TIMEOUT_S)

        check(call(), want, "loky submit(array_sum)")
        return {"samples": repeated(call, params)}
    finally:
        ex.shutdown(wait=True)


def w3_pydist(params: Params) -> Result:
    from pydistributed import remotecall_fetch

    arr = make_array(params)
    want = _funcs.array_sum(arr)
    with pydist_workers(1) as (ws, startup):
        w = ws[0]

        def call() -> Any:
            return remotecall_fetch(_funcs.array_sum, w, arr)

        check(call(), want, "remotecall_fetch(array_sum)")
        return {"samples": repeated(call, params), "info": {"addprocs_1_s": startup}}


def w3_pydist_socket(params: Params) -> Result:
    """W3 through the Unix socket (``PYDIST_SHM=0``; the default is shared memory)."""
    os.environ["PYDIST_SHM"] = "0"
    return w3_pydist(params)


def w3_pydist_tcp(params: Params) -> Result:
    """W3 over TCP (with frame tags): a worker listening on the host's address."""
    from pydistributed import remotecall_fetch, sockets
    from pydistributed.processes import addprocs, rmprocs

    if sockets.is_loopback(sockets.primary_ip()):
        raise RuntimeError("this host has no address but loopback")
    arr = make_array(params)
    want = _funcs.array_sum(arr)
    ws = addprocs(1, restrict=False)
    try:

        def call() -> Any:
            return remotecall_fetch(_funcs.array_sum, ws[0], arr)

        check(call(), want, "remotecall_fetch(array_sum) over TCP")
        return {"samples": repeated(call, params)}
    finally:
        rmprocs(ws, waitfor=10)


CONTENDERS: dict[str, Callable[[Params], Result]] = {
    "w1_raw_tcp": w1_raw_tcp,
    "w1_raw_unix": w1_raw_unix,
    "w1_mp_fork": w1_mp_fork,
    "w1_mp_spawn": w1_mp_spawn,
    "w1_ppe": w1_ppe,
    "w1_loky": w1_loky,
    "w1_pydist": w1_pydist,
    "w3_raw_tcp": w3_raw_tcp,
    "w3_raw_tcp_sum": w3_raw_tcp_sum,
    "w3_raw_unix": w3_raw_unix,
    "w3_memcpy": w3_memcpy,
    "w3_numpy_sum": w3_numpy_sum,
    "w3_mp_fork": w3_mp_fork,
    "w3_loky": w3_loky,
    "w3_pydist_socket": w3_pydist_socket,
    "w3_pydist_tcp": w3_pydist_tcp,
    "w3_pydist": w3_pydist,
}


def main(argv: list[str]) -> int:
    workload, key, params_json = argv
    fn = CONTENDERS[f"{workload.lower()}_{key}"]
    params = json.loads(params_json)
    apply_placement(params)
    result = fn(params)
    result.setdefault("info", {}).update(NOTES)
    sys.stdout.flush()
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
