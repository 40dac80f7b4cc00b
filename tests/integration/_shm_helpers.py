"""Functions for workers of ``test_shared_memory.py``, importable by reference."""

from __future__ import annotations

import gc
import hashlib
import os
from typing import Any

_kept: list[Any] = []


_NAMES = ("memfd:pydist-shm", "memfd:pydist-pool ")  # sealed frames, and a link's pool


def memfd_backed(address: int) -> bool:
    """Whether ``address`` lies in a mapping of one of pydistributed's shared-memory frames."""
    with open("/proc/self/maps") as f:
        for line in f:
            if not any(name in line for name in _NAMES):
                continue
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False


def address_of(a: Any) -> int:
    return int(a.__array_interface__["data"][0])


def digest(a: Any) -> str:
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()


def describe(a: Any) -> tuple[str, bool, bool, str]:
    """What a worker got: its digest, whether it is memfd-backed, writable, its type."""
    return digest(a), memfd_backed(address_of(a)), bool(a.flags.writeable), type(a).__name__


def keep(a: Any) -> int:
    _kept.append(a)
    return address_of(a)


def drop_kept() -> list[bool]:
    """Drop what :func:`keep` kept: whether each address is still memfd-backed afterwards."""
    addresses = [address_of(a) for a in _kept]
    _kept.clear()
    gc.collect()
    return [memfd_backed(x) for x in addresses]


def ones(n: int) -> Any:
    import numpy as np

    return np.ones(n)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def mapping_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(any(name in line for name in _NAMES) for line in f)


def identity(a: Any) -> Any:
    return a


def shm_stats() -> dict[str, int]:
    from pydistributed import shm, shmpool

    return {**shm.stats, **shmpool.stats}


def digests_of_kept() -> list[str]:
    return [digest(a) for a in _kept]


def write_kept(i: int, value: float) -> str:
    _kept[i][:] = value
    return digest(_kept[i])


def keep_and_sleep(a: Any, seconds: float) -> None:
    import time

    _kept.append(a)
    time.sleep(seconds)


def sum_of(a: Any) -> float:
    return float(a.sum())


def split_copies() -> int:
    """How many copies this process made on two CPUs (``parcopy``)."""
    from pydistributed import parcopy

    return parcopy.stats["split"]


def link_macs(pid: int) -> tuple[bool, bool] | None:
    """This process's link to ``pid``: whether its tags (in, out) take large frames through
    Poly1305; None when the link carries no tags (a Unix socket, TLS)."""
    from pydistributed import runtime

    peer = runtime.current_cluster().connections.lookup(pid)
    assert peer is not None
    if peer.mac_in is None:
        return None
    out = peer.writer.mac
    assert out is not None
    return peer.mac_in.bulk, out.bulk
