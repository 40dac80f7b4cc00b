"""Large arrays to and from local workers as shared memory (``shm.py``), with real workers.

A local worker is reached through its Unix-socket twin: a large out-of-band buffer arrives as
a private mapping of a sealed memfd (``/memfd:pydist-shm`` in ``/proc/<pid>/maps``), an
ordinary writable numpy array, unmapped when the array is freed. Opt-in (``PYDIST_SHM=1``, set for
every test here); ``PYDIST_SHM=0`` and TCP links take the socket.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import numpy as np
import pytest

import pydistributed as pd
from pydistributed import shm, sockets

from . import _shm_helpers as h

pytestmark = pytest.mark.skipif(not shm.supported(), reason="memfd and SCM_RIGHTS (Linux)")


@pytest.fixture(autouse=True)
def shm_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared memory is opt-in (``PYDIST_SHM=1``): on for these tests, in the master and in
    the workers they start (inherited)."""
    monkeypatch.setenv("PYDIST_SHM", "1")


TIMEOUT = 120


def _big() -> np.ndarray:
    return np.random.default_rng(7).random(12_500_000)  # 100 MB


def test_100mb_round_trip_is_shared_memory_and_freed(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    a = _big()
    want = h.digest(a)
    got, backed, writable, kind = pd.remotecall_fetch(h.describe, w, a)
    assert (got, backed, writable, kind) == (want, True, True, "ndarray")
    # kept on the worker past its call, then dropped: the mapping goes with it
    pd.remotecall_fetch(h.keep, w, a)
    assert pd.remotecall_fetch(h.drop_kept, w) == [False]
    assert pd.remotecall_fetch(h.mapping_count, w) == 0
    # and back: the master's copy is shared memory too, freed with the array
    b = pd.remotecall_fetch(h.ones, w, 12_500_000)
    assert b.shape == (12_500_000,) and float(b.sum()) == 12_500_000.0
    address = h.address_of(b)
    assert h.memfd_backed(address)
    b[0] = 5.0  # ordinary and writable (the page is copied)
    del b
    gc.collect()
    assert not h.memfd_backed(address)


def test_sender_changes_after_the_send_are_not_seen(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    a = _big()
    want = h.digest(a)
    fut = pd.remotecall(h.describe, w, a)  # returns once the call is sent
    a[:] = 0.0
    assert fut.fetch(timeout=TIMEOUT)[:2] == (want, True)


def test_200_transfers_leave_no_descriptors_or_mappings(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    a = np.arange(2**18, dtype=np.float64)  # 2 MiB, each way
    pd.remotecall_fetch(h.describe, w, a)
    gc.collect()
    mine, theirs = h.fd_count(), pd.remotecall_fetch(h.fd_count, w)
    for i in range(200):
        a[0] = i
        back = pd.remotecall_fetch(np.copy, w, a)
        assert back[0] == i
        del back
    gc.collect()
    assert h.fd_count() == mine
    assert pd.remotecall_fetch(h.fd_count, w) == theirs
    assert h.mapping_count() == 0 and pd.remotecall_fetch(h.mapping_count, w) == 0


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


def test_an_array_sent_back_unchanged_is_not_copied_again(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    a = _big()
    before = pd.remotecall_fetch(h.shm_stats, w)
    back = pd.remotecall_fetch(h.identity, w, a)
    after = pd.remotecall_fetch(h.shm_stats, w)
    assert after == {"copied": before["copied"], "forwarded": before["forwarded"] + 1}
    assert h.digest(back) == h.digest(a) and h.memfd_backed(h.address_of(back))
