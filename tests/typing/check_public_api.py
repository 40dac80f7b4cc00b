"""What a type checker sees of the public API: checked by ``mypy --strict``, never run.

``.ci/run`` runs ``mypy --config-file tests/typing/mypy.ini`` (strict) on this file and on
``examples/``. Each ``assert_type`` states the type mypy must infer; a wrong call is marked
``# type: ignore[...]`` and strict mode's ``warn_unused_ignores`` fails the check if the call is
no longer an error. pytest does not collect this file (its name does not start with ``test_``);
running it would start no workers, but it is not meant to run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import pydistributed.joblib
from pydistributed import (
    Channel,
    Future,
    RemoteChannel,
    Task,
    WorkerPool,
    addprocs,
    async_,
    default_worker_pool,
    fetch,
    fetchfrom,
    put,
    remote,
    remote_do,
    remotecall,
    remotecall_fetch,
    remotecall_wait,
    rmprocs,
    spawn,
    spawnat,
    take,
    wait,
    workers,
)

if sys.version_info >= (3, 11):
    from typing import assert_type
else:  # typing_extensions comes with mypy
    from typing_extensions import assert_type


def score(x: int, scale: float = 1.0, *, label: str = "") -> float:
    return x * scale


def pair(a: str, b: bytes) -> tuple[str, bytes]:
    return a, b


def check_processes() -> None:
    assert_type(addprocs(2), list[int])
    assert_type(addprocs(2, restrict=True, dir="/tmp", exeflags=("-X", "dev")), list[int])
    assert_type(addprocs(2, topology="master_worker", lazy=False, env={"A": "1"}), list[int])
    assert_type(addprocs(["host1", ("host2", 2)], tunnel=True, max_parallel=4), list[int])
    assert_type(addprocs(["host1"], shell="csh", ssh="ssh", bootstrap=True), list[int])
    addprocs(2, topology="ring")  # type: ignore[call-overload]
    addprocs(2, tunnel=True)  # type: ignore[call-overload]
    assert_type(workers(), list[int])
    assert_type(rmprocs(2, 3, waitfor=0), "Task[None] | None")


def check_remote_calls(pool: WorkerPool) -> None:
    assert_type(remotecall(score, 2, 3), Future[float])
    assert_type(remotecall(score, pool, 3, 2.0, label="x"), Future[float])
    assert_type(remotecall_fetch(score, 2, 3), float)
    assert_type(remotecall_fetch(pair, default_worker_pool(), "a", b"b"), tuple[str, bytes])
    assert_type(remotecall_wait(score, 2, 3), Future[float])
    assert_type(remote_do(score, 2, 3), None)
    assert_type(remotecall_fetch(lambda: "s", 2), str)
    # the arguments are checked against f's parameters
    remotecall_fetch(score, 2, "three")  # type: ignore[arg-type]
    remotecall_fetch(score, 2, 3, labl="x")  # type: ignore[call-arg]
    remotecall(score, "2", 3)  # type: ignore[arg-type]
    assert_type(spawnat(2, score, 3), Future[float])
    assert_type(spawnat("any", pair, "a", b"b"), Future[tuple[str, bytes]])
    assert_type(spawn(score, 3), Future[float])
    assert_type(fetchfrom(2, score, 3), float)
    f: Callable[[int, float], float] = remote(score)
    assert_type(f(3, 2.0), float)
    assert_type(remote(score, pool)(3), float)
    assert_type(async_(score, 3), Task[float])


def check_references() -> None:
    fut = remotecall(score, 2, 3)
    assert_type(fut.fetch(), float)
    assert_type(fetch(fut), float)
    assert_type(fut.fetch(timeout=1.0), float)
    assert_type(fetch(fut, 1.0), float)
    assert_type(wait(fut), Future[float])
    assert_type(fetch(42), int)  # not a reference: returned as it is
    empty: Future[int] = Future(2)
    assert_type(put(empty, 5), Future[int])

    rc: RemoteChannel[str] = RemoteChannel(lambda: Channel[str](8), 2)
    assert_type(rc.take(), str)
    assert_type(take(rc), str)
    assert_type(rc.fetch(timeout=1.0), str)
    assert_type(fetch(rc), str)
    assert_type(put(rc, "v"), RemoteChannel[str])
    assert_type(wait(rc, 1.0), RemoteChannel[str])

    ch = Channel[int](4)
    ch.put(1)
    ch.put("one")  # type: ignore[arg-type]
    assert_type(ch.take(), int)
    assert_type(take(ch), int)
    assert_type(fetch(ch), int)
    for v in ch:
        assert_type(v, int)
    assert_type(Future[int], type[Future[int]])  # generic at runtime too


def check_tasks() -> None:
    t = async_(pair, "a", b"b")
    assert_type(t, Task[tuple[str, bytes]])
    assert_type(fetch(t), tuple[str, bytes])
    assert_type(wait(t), Task[tuple[str, bytes]])


def check_joblib() -> None:
    assert_type(pydistributed.joblib.NAME, str)
    assert_type(pydistributed.joblib.register(), None)
