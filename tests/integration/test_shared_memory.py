"""Large arrays to and from local workers as shared memory (``shm.py``), with real workers.

A local worker is reached through its Unix-socket twin: a large out-of-band buffer arrives in
a memfd of the link's pool (``/memfd:pydist-pool`` in ``/proc/<pid>/maps``), an ordinary
writable numpy array; the memfd is used again once the array is freed. On by default
(``PYDIST_SHM=1`` is set for every test here all the same); ``PYDIST_SHM=0`` and TCP links take
the socket. The pool's own cases with real workers: ``test_shm_pool.py``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import numpy as np
import pytest

import pydistributed as pd
from pydistributed import poly1305, shm, shmpool, sockets

from . import _shm_helpers as h

pytestmark = pytest.mark.skipif(not shm.supported(), reason="memfd and SCM_RIGHTS (Linux)")


@pytest.fixture(autouse=True)
def shm_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared memory on (the default; set all the same), in the master and in the workers
    these tests start (inherited)."""
    monkeypatch.setenv("PYDIST_SHM", "1")


TIMEOUT = 120


def _big() -> np.ndarray:
    return np.random.default_rng(7).random(12_500_000)  # 100 MB


def test_100mb_round_trip_is_shared_memory_and_reused(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    a = _big()
    want = h.digest(a)
    got, backed, writable, kind = pd.remotecall_fetch(h.describe, w, a)
    assert (got, backed, writable, kind) == (want, True, True, "ndarray")
    # kept on the worker past its call, then dropped: its memfd is used again
    pd.remotecall_fetch(h.keep, w, a)
    pd.remotecall_fetch(h.drop_kept, w)
    created = shmpool.stats["created"]
    for _ in range(3):
        assert pd.remotecall_fetch(h.describe, w, a)[:2] == (want, True)
    assert shmpool.stats["created"] == created
    # and back: the master's copy is shared memory too
    b = pd.remotecall_fetch(h.ones, w, 12_500_000)
    assert b.shape == (12_500_000,) and float(b.sum()) == 12_500_000.0
    assert h.memfd_backed(h.address_of(b))
    b[0] = 5.0  # ordinary and writable
    assert float(b.sum()) == 12_500_004.0
    del b
    gc.collect()
    back = pd.remotecall_fetch(h.ones, w, 12_500_000)
    assert float(back.sum()) == 12_500_000.0  # the written memfd, filled afresh


def test_sender_changes_after_the_send_are_not_seen(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    a = _big()
    want = h.digest(a)
    fut = pd.remotecall(h.describe, w, a)  # returns once the call is sent
    a[:] = 0.0
    assert fut.fetch(timeout=TIMEOUT)[:2] == (want, True)


def test_200_transfers_stay_within_a_few_descriptors_and_mappings(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    a = np.arange(2**18, dtype=np.float64)  # 2 MiB, each way
    for _ in range(3):  # the pools of both sides are made
        pd.remotecall_fetch(np.copy, w, a)
    gc.collect()
    mine, theirs = h.fd_count(), pd.remotecall_fetch(h.fd_count, w)
    maps, their_maps = h.mapping_count(), pd.remotecall_fetch(h.mapping_count, w)
    created = shmpool.stats["created"]
    for i in range(200):
        a[0] = i
        back = pd.remotecall_fetch(np.copy, w, a)
        assert back[0] == i
        del back
    gc.collect()
    # a second memfd each way when a release comes after the next send (timing): at most
    # two descriptors (the memfd, its mapping's) and one mapping per side and direction
    assert h.fd_count() <= mine + 4 and h.mapping_count() <= maps + 2
    assert pd.remotecall_fetch(h.fd_count, w) <= theirs + 4
    assert pd.remotecall_fetch(h.mapping_count, w) <= their_maps + 2
    assert shmpool.stats["created"] <= created + 1


def test_pydist_shm_0_takes_the_socket(
    add_workers: Callable[..., list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYDIST_SHM", "0")  # the master's links, and the worker's (inherited)
    (w,) = add_workers(1)
    a = _big()
    assert pd.remotecall_fetch(h.describe, w, a) == (h.digest(a), False, True, "ndarray")
    b = pd.remotecall_fetch(h.ones, w, 2**20)
    assert not h.memfd_backed(h.address_of(b)) and float(b.sum()) == 2**20


def test_a_worker_over_tcp_takes_the_socket(add_workers: Callable[..., list[int]]) -> None:
    if sockets.is_loopback(sockets.primary_ip()):
        pytest.skip("this host has no address but loopback: every local link is a Unix socket")
    (w,) = add_workers(1, restrict=False)  # listens on the host's address: a TCP link
    a = _big()
    assert pd.remotecall_fetch(h.describe, w, a) == (h.digest(a), False, True, "ndarray")
    assert os.environ.get("PYDIST_SHM") == "1"
    # the link has tags; its large frames go through Poly1305 both ways (framemac.py)
    bulk = (True, True) if poly1305.available() else (False, False)
    assert h.link_macs(w) == bulk
    assert pd.remotecall_fetch(h.link_macs, w, 1) == bulk
    back = pd.remotecall_fetch(h.identity, w, a)  # a large frame each way, tags checked
    assert h.digest(back) == h.digest(a)
    fortran = np.asfortranarray(np.arange(3 * 2**20 // 8, dtype=np.float64).reshape(512, -1))
    for x in (fortran, fortran[:, ::2], a[::3]):  # F-order, and strided views
        back = pd.remotecall_fetch(h.identity, w, x)
        assert np.array_equal(back, x)
    assert pd.remotecall_fetch(h.identity, w, fortran).flags.f_contiguous


def test_an_array_sent_back_unchanged_goes_through_the_workers_pool(
    add_workers: Callable[..., list[int]],
) -> None:
    """Forwarding a received frame: the worker copies it into its own pool (the master's
    memfd is the master's to reuse)."""
    (w,) = add_workers(1)
    a = _big()
    before = pd.remotecall_fetch(h.shm_stats, w)
    back = pd.remotecall_fetch(h.identity, w, a)
    after = pd.remotecall_fetch(h.shm_stats, w)
    assert after["pooled"] == before["pooled"] + 1
    assert h.digest(back) == h.digest(a) and h.memfd_backed(h.address_of(back))


@pytest.mark.parametrize("link", ["local", "tcp"])
def test_arrays_of_every_size_arrive_writable_both_ways(
    add_workers: Callable[..., list[int]], link: str
) -> None:
    """In-band (under 64 KiB), out-of-band frames under 1 MiB (they arrived read-only), large
    frames, shared memory: an ordinary writable array whatever the size, to a worker and back."""
    if link == "tcp" and sockets.is_loopback(sockets.primary_ip()):
        pytest.skip("this host has no address but loopback: every local link is a Unix socket")
    (w,) = add_workers(1, restrict=link == "local")
    for n in (1_000, 10_000, 32_768, 100_000, 131_071, 200_000, 2_000_000):
        a = np.arange(n, dtype=np.float64)
        assert pd.remotecall_fetch(h.describe, w, a)[::2] == (h.digest(a), True)
        b = pd.remotecall_fetch(h.ones, w, n)
        assert b.flags.writeable, n
        b += 1
        assert float(b.sum()) == 2 * n
