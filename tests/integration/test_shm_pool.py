"""The shared-memory pool of local links (``shmpool.py``) with real workers over real sockets:
a worker holding many arrays (the caps, every array intact), writes by a user to a received
array, a result held past its connection's end, and a worker killed while it holds arrays."""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import pydistributed as pd
from pydistributed import ProcessExitedException, parcopy, shm, shmpool
from tests.conftest import worker_ospid

from . import _shm_helpers as h

pytestmark = pytest.mark.skipif(not shm.supported(), reason="memfd and SCM_RIGHTS (Linux)")

TIMEOUT = 120
MiB = 1 << 20


@pytest.fixture(autouse=True)
def shm_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_SHM", "1")


def _call(f: Callable[..., Any], w: int, *args: Any) -> Any:
    return pd.remotecall(f, w, *args).fetch(timeout=TIMEOUT)


def _arrays(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random(2 * MiB // 8) for _ in range(n)]


def test_a_worker_holding_many_arrays(add_workers: Callable[..., list[int]]) -> None:
    (w,) = add_workers(1)
    sources = _arrays(shmpool.SLOTS + 6, 1)
    for a in sources:
        _call(h.keep, w, a)
    want = [h.digest(a) for a in sources]
    assert _call(h.digests_of_kept, w) == want
    # the worker writes to one of them: only that one changes, on the worker only
    changed = _call(h.write_kept, w, 3, -2.0)
    want[3] = changed
    assert h.digest(sources[3]) != changed
    # more traffic both ways while they are held
    for a in _arrays(4, 2):
        assert _call(h.describe, w, a)[:2] == (h.digest(a), True)
        back = _call(np.copy, w, a)
        assert h.digest(back) == h.digest(a)
    assert _call(h.digests_of_kept, w) == want
    # freed: the memfds are used again, and free ones beyond the cap are closed
    _call(h.drop_kept, w)
    created = shmpool.stats["created"]
    for a in _arrays(3, 3):
        assert _call(h.describe, w, a)[:2] == (h.digest(a), True)
    assert shmpool.stats["created"] == created
    assert _call(h.mapping_count, w) <= shmpool.FREE_COUNT + 3


def test_a_result_held_past_the_workers_end_stays_valid(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    results = [_call(h.ones, w, 2 * MiB // 8) for _ in range(3)]
    assert all(h.memfd_backed(h.address_of(r)) for r in results)
    pd.rmprocs([w], waitfor=30)
    for r in results:
        assert float(r.sum()) == 2 * MiB // 8
    results[0][:] = 3.0  # still this process's memory
    assert float(results[0].sum()) == 3 * (2 * MiB // 8)
    address = h.address_of(results[1])
    del results, r
    gc.collect()
    assert not h.memfd_backed(address)


def test_a_worker_killed_while_holding_arrays(add_workers: Callable[..., list[int]]) -> None:
    gc.collect()
    fds = h.fd_count()
    doomed, other = add_workers(2)
    a = _arrays(1, 4)[0]
    for _ in range(3):
        _call(h.keep, doomed, a)
    # calls in flight both ways (arguments going, results coming) when it dies
    futs = [pd.remotecall(np.copy, doomed, a) for _ in range(20)]
    fut = pd.remotecall(h.keep_and_sleep, doomed, a, 60.0)
    os.kill(worker_ospid(doomed), signal.SIGKILL)
    for f in futs:
        try:
            assert h.digest(f.fetch(timeout=TIMEOUT)) == h.digest(a)
        except ProcessExitedException:
            pass
    with pytest.raises(ProcessExitedException):
        fut.fetch(timeout=TIMEOUT)
    # the other link is unaffected
    assert _call(h.sum_of, other, a) == float(a.sum())
    pd.rmprocs([other], waitfor=30)
    deadline = time.monotonic() + 30
    while h.fd_count() > fds and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.2)
    assert h.fd_count() <= fds  # both links' pools were closed with them


@pytest.mark.skipif(parcopy._CPUS < 2, reason="one CPU: copies never split")
def test_large_arrays_are_copied_on_two_cpus_both_ways(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    rng = np.random.default_rng(7)
    big = rng.random(3 * parcopy.SPLIT_MIN // 8 + 5)  # not a multiple of a page
    ro = big.copy()
    ro.flags.writeable = False  # a read-only source splits too
    here = parcopy.stats["split"]
    there = _call(h.split_copies, w)
    for a in (big, ro):
        assert _call(h.describe, w, a)[:2] == (h.digest(a), True)
        back = _call(np.copy, w, a)
        assert h.digest(back) == h.digest(a)
    assert parcopy.stats["split"] == here + 4  # each array went out twice
    assert _call(h.split_copies, w) == there + 2  # and came back once
