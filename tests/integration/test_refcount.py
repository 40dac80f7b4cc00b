"""Distributed reference counting: the owner frees a reference once no process holds it.

Releases are batched (every 50 ms), so the checks poll the owner's table with a deadline.
Functions that workers run live at module level here: workers import this module by name.
"""

from __future__ import annotations

import copy
import gc
import os
import pickle
import signal
import sys
import types
from collections.abc import Callable
from typing import Any

import pytest

from pydistributed import (
    RRID,
    CachingPool,
    Channel,
    CompositeException,
    Future,
    RemoteChannel,
    RemoteException,
    channel_from_id,
    clear,
    fetch,
    remotecall,
    remotecall_fetch,
    remoteref_id,
)
from pydistributed.cluster import current_cluster
from tests.conftest import wait_until
from tests.conftest import worker_ospid as ospid
from tests.integration._helpers import stored

AddWorkers = Callable[..., list[int]]

# -- what the workers run ---------------------------------------------------------------

_kept: dict[str, Any] = {}


def nrefs() -> int:
    """How many references this process stores (its owner table)."""
    return len(current_cluster().refs)


def clients(rrid: RRID) -> dict[int, int]:
    """Who holds ``rrid`` here, by process, as this (owner) process counts them."""
    return {p: n for p, n in current_cluster().refs.clients(rrid).items() if n}


def keep(name: str, obj: Any) -> int:
    """Hold ``obj`` here under ``name``; return ``id(obj)``, to tell objects apart."""
    _kept[name] = obj
    return id(obj)


def drop(*names: str) -> None:
    for name in names:
        _kept.pop(name, None)
    gc.collect()


def kept_is(name: str, obj: Any) -> bool:
    return _kept[name] is obj


def kept(name: str) -> Any:
    return _kept[name]


def take_kept(name: str) -> Any:
    return _kept[name].take(timeout=10)


def fetch_kept(name: str) -> Any:
    return fetch(_kept[name], timeout=10)


def collect(obj: Any) -> None:
    _kept.setdefault("seen", []).append(obj)


def all_one_object() -> bool:
    seen = _kept["seen"]
    return all(x is seen[0] for x in seen)


def send_to_many_times(obj: Any, to: int, n: int) -> None:
    for _ in range(n):
        remotecall_fetch(collect, to, obj)


def keep_unpickled(name: str, blob: bytes) -> None:
    _kept[name] = pickle.loads(blob)


def drop_a_canary(owner: int) -> RRID:
    """Make a Future stored on ``owner`` and drop it at once; return its id."""
    canary = Future(owner)
    rrid = remoteref_id(canary)
    del canary  # its release is queued here, behind every release queued here before
    return rrid


def pass_on(name: str, to: int) -> None:
    """Send what is kept under ``name`` to process ``to``, which keeps it too."""
    remotecall_fetch(keep, to, name, _kept[name])


def make_futures(owner: int, n: int) -> int:
    """Make ``n`` empty Futures stored on ``owner`` and keep them here."""
    _kept["futures"] = [Future(owner) for _ in range(n)]
    return n


def churn_channels(n: int, size: int) -> int:
    """Make ``n`` RemoteChannels here, each holding its own ``size`` bytes, and drop them.

    Returns the most channels alive at once.
    """
    refs = current_cluster().refs
    most = 0
    for i in range(n):
        rc = RemoteChannel()
        rc.put(b"\x01" * size)
        del rc
        if i % 50 == 49:
            # The releases go in batches every 50 ms: wait for them when more than 400 are
            # due, so that the most memory in use at once (which the allocator may keep as
            # its high-water mark) is the same in every round.
            most = max(most, len(refs))
            wait_until(lambda: len(refs) <= 400, timeout=60, interval=0.002, what="the releases")
    return most


def set_globals(mod: str = "__main__", **values: Any) -> None:
    module = sys.modules.get(mod)
    if module is None:
        module = sys.modules[mod] = types.ModuleType(mod)
    for k, v in values.items():
        setattr(module, k, v)


def get_globals(names: list[str], mod: str = "__main__") -> dict[str, Any]:
    module = sys.modules[mod]
    return {n: getattr(module, n, "<absent>") for n in names}


def make_frozen_module(name: str) -> None:
    """A module that refuses to set ``locked`` (a module attribute that cannot be set)."""

    class Frozen(types.ModuleType):
        def __setattr__(self, key: str, value: Any) -> None:
            if key == "locked":
                raise AttributeError("locked is read-only")
            super().__setattr__(key, value)

    module = Frozen(name)
    module.__dict__.update(locked=1, free=2)
    sys.modules[name] = module


def make_final_module(name: str) -> None:
    """A module with a constant, annotated ``typing.Final`` (also as a string)."""
    module = types.ModuleType(name)
    exec(
        "from typing import Final\nLIMIT: Final = 3\nRATE: 'Final[float]' = 0.5\nplain: int = 4\n",
        module.__dict__,
    )
    sys.modules[name] = module


# -- helpers ----------------------------------------------------------------------------


def eventually(check: Callable[[], Any], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``check()`` until true; fail after ``timeout`` seconds."""
    wait_until(check, timeout=timeout, interval=0.02, what=what or repr(check))


def releases_applied(pid: int, owner: int) -> None:
    """Wait until ``owner`` has applied every release that ``pid`` had queued for it.

    Releases go out in batches, in order, and nothing signals a batch: a canary Future made
    for ``owner`` on ``pid`` and dropped at once is freed on ``owner`` only after them.
    """
    # the canary's add must reach the owner before the checks below (one connection)
    assert pid in (1, owner)
    rrid = drop_a_canary(owner) if pid == 1 else remotecall_fetch(drop_a_canary, pid, owner)
    if owner == 1:
        eventually(lambda: not stored(rrid), what="the canary released")
    else:
        eventually(lambda: not remotecall_fetch(stored, owner, rrid), what="the canary released")


def table_size(pid: int) -> int:
    return int(remotecall_fetch(nrefs, pid))


def trim_malloc() -> None:
    """Give free heap memory back to the OS (glibc), so that RSS shows what is alive.

    Freed 1 MB blocks may stay in malloc's heap (its mmap threshold grows after frees, and a
    small block at the top of the heap stops trimming): that is the allocator's choice, not
    a leak, and it varies with timing.
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_mb(ospid: int) -> float:
    with open(f"/proc/{ospid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- the figures of the issue ------------------------------------------------------------


def test_100k_futures_made_on_a_worker_and_dropped_leave_the_owner_empty(
    two_workers: list[int],
) -> None:
    a, b = two_workers
    assert remotecall_fetch(make_futures, a, b, 100_000) == 100_000
    eventually(lambda: table_size(b) == 100_000, what="the owner stores all 100,000")
    remotecall_fetch(drop, a, "futures")
    eventually(lambda: table_size(b) == 0, timeout=20, what="the owner's table empties")
    assert table_size(a) == 0


def test_worker_memory_stays_flat_over_rounds_of_1mb_remotechannels(
    add_workers: AddWorkers,
) -> None:
    (w,) = add_workers(1)
    pid = ospid(w)
    rss: list[float] = []
    most: list[int] = []
    for _ in range(10):
        most.append(remotecall_fetch(churn_channels, w, 10_000, 1 << 20))
        eventually(lambda: table_size(w) == 0, what="every channel freed")
        remotecall_fetch(trim_malloc, w)
        rss.append(rss_mb(pid))
    # Each round allocates (and must free) 10 GB. The allocator may keep the high-water mark
    # of what was alive at once (paced to at most 450 channels: a few hundred MB), but
    # nothing may grow from round to round.
    assert max(most) <= 450, most
    assert max(rss) < 1500, (rss, most)
    assert max(rss[4:]) - max(rss[:4]) < 64, (rss, most)


def test_remote_handles_made_and_dropped_by_the_master_leave_no_trace(
    two_workers: list[int],
) -> None:
    w = two_workers[0]
    for _ in range(3):
        chans = [RemoteChannel(w) for _ in range(200)]
        futs = [remotecall(len, w, b"x" * 1000) for _ in range(200)]
        assert table_size(w) == 400
        assert sum(fetch(f) for f in futs[:100]) == 100_000
        del chans, futs
        eventually(lambda: table_size(w) == 0, what="all freed")


# -- the paths a reference travels -------------------------------------------------------


def test_future_sent_master_to_a_to_b_and_dropped_everywhere_is_freed(
    add_workers: AddWorkers,
) -> None:
    owner, a, b = add_workers(3)
    f = remotecall(lambda: "value", owner)
    rrid = remoteref_id(f)
    remotecall_fetch(keep, a, "f", f)
    remotecall_fetch(pass_on, a, "f", b)
    eventually(lambda: remotecall_fetch(clients, owner, rrid) == {1: 1, a: 1, b: 1})
    del f
    gc.collect()
    remotecall_fetch(drop, a, "f")
    eventually(lambda: remotecall_fetch(clients, owner, rrid) == {b: 1})
    assert remotecall_fetch(fetch_kept, b, "f") == "value"  # fetched: released
    eventually(lambda: table_size(owner) == 0, what="freed on its owner")
    remotecall_fetch(drop, b, "f")
    assert table_size(owner) == 0


def test_remotechannel_sent_master_to_a_to_b_and_dropped_everywhere_is_freed(
    add_workers: AddWorkers,
) -> None:
    owner, a, b = add_workers(3)
    rc = RemoteChannel(lambda: Channel(10), owner)
    rc.put("from the master")
    remotecall_fetch(keep, a, "rc", rc)
    remotecall_fetch(pass_on, a, "rc", b)
    assert remotecall_fetch(take_kept, b, "rc") == "from the master"
    rrid = remoteref_id(rc)
    eventually(lambda: remotecall_fetch(clients, owner, rrid) == {1: 1, a: 1, b: 1})
    remotecall_fetch(drop, b, "rc")
    remotecall_fetch(drop, a, "rc")
    eventually(lambda: remotecall_fetch(clients, owner, rrid) == {1: 1})
    del rc
    gc.collect()
    eventually(lambda: table_size(owner) == 0, what="freed on its owner")


def test_a_reference_received_twice_is_one_object(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(b)
    fut = Future(b)
    first = remotecall_fetch(keep, a, "rc", rc)
    assert remotecall_fetch(kept_is, a, "rc", rc)  # a second message, the same object
    assert remotecall_fetch(keep, a, "rc2", rc) == first
    remotecall_fetch(keep, a, "fut", fut)
    assert remotecall_fetch(kept_is, a, "fut", fut)
    # and here: what comes back is what we sent
    assert remotecall_fetch(lambda x: x, a, rc) is rc
    assert remotecall_fetch(kept, a, "fut") is fut
    # the extra handles were released again: one per process
    rc_id, fut_id = remoteref_id(rc), remoteref_id(fut)
    eventually(lambda: remotecall_fetch(clients, b, rc_id) == {1: 1, a: 1})
    eventually(lambda: remotecall_fetch(clients, b, fut_id) == {1: 1, a: 1})
    remotecall_fetch(drop, a, "rc", "rc2", "fut")
    del rc, fut
    gc.collect()
    eventually(lambda: table_size(b) == 0)


def test_a_reference_received_from_two_processes_at_once_is_one_object(
    add_workers: AddWorkers,
) -> None:
    a, b, c = add_workers(3)
    rc = RemoteChannel(a)
    for _ in range(3):
        calls = [remotecall(send_to_many_times, w, rc, c, 100) for w in (a, b)]
        calls.append(remotecall(send_to_many_times, 1, rc, c, 100))
        for call in calls:
            call.fetch(timeout=60)
        assert remotecall_fetch(all_one_object, c)
    rc_id = remoteref_id(rc)
    eventually(lambda: remotecall_fetch(clients, a, rc_id) == {1: 1, c: 1})


def test_references_survive_being_sent_back_to_their_owner(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(w)
    fut = Future(w)
    # the owner gets handles to its own storage, uses them locally, and drops them
    assert remotecall_fetch(lambda r: (r.put(1), r.take())[1], w, rc) == 1
    remotecall_fetch(lambda f: f.put("set by the owner") and None, w, fut)
    remotecall_fetch(keep, w, "rc", rc)
    remotecall_fetch(drop, w, "rc")
    releases_applied(w, w)  # whatever the owner released of its own handles
    # still there for the master
    rc.put(2)
    assert rc.take(timeout=10) == 2
    assert fut.fetch(timeout=10) == "set by the owner"
    # a channel made on a worker comes back to the master and goes back again
    rc2 = remotecall_fetch(lambda: RemoteChannel(lambda: Channel(5)), w)
    assert rc2.where == w and rc2.whence == w
    assert remotecall_fetch(lambda r: r.put("x") and None, w, rc2) is None
    assert rc2.take(timeout=10) == "x"
    del rc, fut, rc2
    gc.collect()
    eventually(lambda: table_size(w) == 0)


def test_a_fetched_future_caches_its_value_and_releases_the_remote_copy(
    two_workers: list[int],
) -> None:
    w = two_workers[0]
    f = remotecall(lambda: list(range(1000)), w)
    assert table_size(w) == 1
    assert f.fetch(timeout=10) == list(range(1000))
    eventually(lambda: table_size(w) == 0, what="the remote copy released")
    assert f.isready() and f.fetch() == list(range(1000))
    # the cached value travels with the Future, so a third process needs no owner
    assert remotecall_fetch(lambda g: g.fetch(), two_workers[1], f) == list(range(1000))
    # also after a put from here
    g = Future(w)
    g.put("mine")
    eventually(lambda: table_size(w) == 0)
    assert g.fetch() == "mine"


def test_remoteref_id_and_channel_from_id(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(7), w)
    rrid = remoteref_id(rc)
    assert rrid == RRID(1, rc.id) and hash(rrid) == hash((1, rc.id))
    assert remotecall_fetch(lambda r: channel_from_id(r).size, w, rrid) == 7
    with pytest.raises(KeyError):
        channel_from_id(rrid)  # valid only where the channel lives
    local = RemoteChannel(lambda: Channel(3))
    assert channel_from_id(remoteref_id(local)).size == 3
    fut = Future()
    assert channel_from_id(remoteref_id(fut)) is not None  # a Future's storage too
    with pytest.raises(TypeError):
        remoteref_id(object())  # type: ignore[arg-type]
    assert remotecall_fetch(stored, w, rrid)
    del rc
    gc.collect()
    eventually(lambda: not remotecall_fetch(stored, w, rrid), what="channel_from_id raises")
    lrrid = remoteref_id(local)
    del local
    gc.collect()
    eventually(lambda: not stored(lrrid), what="channel_from_id raises here")


def test_handles_of_a_dead_worker_are_released_on_the_other_owners(
    add_workers: AddWorkers,
) -> None:
    doomed, other = add_workers(2)
    on_master = RemoteChannel()
    on_other = RemoteChannel(other)
    fut_on_other = Future(other)
    remotecall_fetch(keep, doomed, "a", on_master)
    remotecall_fetch(keep, doomed, "b", on_other)
    remotecall_fetch(keep, doomed, "c", fut_on_other)
    master_rrid, other_rrid, fut_rrid = map(remoteref_id, (on_master, on_other, fut_on_other))
    eventually(lambda: clients(master_rrid) == {1: 1, doomed: 1})
    eventually(lambda: remotecall_fetch(clients, other, other_rrid) == {1: 1, doomed: 1})
    os.kill(ospid(doomed), signal.SIGKILL)
    eventually(lambda: clients(master_rrid) == {1: 1}, what="dropped here")
    eventually(
        lambda: remotecall_fetch(clients, other, other_rrid) == {1: 1},
        what="dropped on the other worker",
    )
    eventually(lambda: remotecall_fetch(clients, other, fut_rrid) == {1: 1})
    del on_master, on_other, fut_on_other
    gc.collect()
    eventually(lambda: table_size(other) == 0)
    eventually(lambda: not stored(master_rrid))


def test_copies_and_pickles_made_by_hand_keep_the_count(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(w)
    fut = Future(w)
    assert copy.copy(rc) is rc and copy.deepcopy([rc])[0] is rc and copy.copy(fut) is fut
    assert pickle.loads(pickle.dumps(rc)) is rc
    assert pickle.loads(pickle.dumps(fut)) is fut
    releases_applied(1, w)  # nothing was released
    assert remotecall_fetch(clients, w, remoteref_id(rc)) == {1: 1}
    assert remotecall_fetch(clients, w, remoteref_id(fut)) == {1: 1}
    # a pickle made by hand and unpickled elsewhere: the receiver announces itself
    blob = pickle.dumps(rc)
    remotecall_fetch(keep_unpickled, two_workers[1], "rc", blob)
    rc_id = remoteref_id(rc)
    eventually(lambda: remotecall_fetch(clients, w, rc_id) == {1: 1, two_workers[1]: 1})
    remotecall_fetch(drop, two_workers[1], "rc")
    rc.put(5)
    assert rc.take(timeout=10) == 5
    del rc, fut
    gc.collect()
    eventually(lambda: table_size(w) == 0)


def test_local_references_are_freed_with_or_without_workers() -> None:
    before = nrefs()
    refs: list[Any] = [Future() for _ in range(500)]
    refs += [RemoteChannel() for _ in range(500)]
    for r in refs[:500]:
        r.put(1)
    assert nrefs() == before + 1000
    del refs, r
    gc.collect()
    eventually(lambda: nrefs() == before, what="all freed here")


# -- clear -----------------------------------------------------------------------------


def test_clear_sets_existing_globals_to_none_on_the_workers(two_workers: list[int]) -> None:
    a, b = two_workers
    for w in two_workers:
        remotecall_fetch(set_globals, w, t_x=[1, 2], t_y="y", t_z=3)
    assert clear(["t_x", "t_y", "t_missing"]) is None  # default: every worker
    for w in two_workers:
        got = remotecall_fetch(get_globals, w, ["t_x", "t_y", "t_z", "t_missing"])
        assert got == {"t_x": None, "t_y": None, "t_z": 3, "t_missing": "<absent>"}
    clear("t_z", b)  # one name, one pid
    assert remotecall_fetch(get_globals, a, ["t_z"]) == {"t_z": 3}
    assert remotecall_fetch(get_globals, b, ["t_z"]) == {"t_z": None}
    # another module, by name or as a module; a module not loaded there has nothing
    remotecall_fetch(set_globals, a, "t_clear_mod", v=1, u=2)
    clear(("v",), [a, b], mod="t_clear_mod")
    assert remotecall_fetch(get_globals, a, ["v", "u"], "t_clear_mod") == {"v": None, "u": 2}
    with pytest.raises(TypeError):
        clear([1], a)  # type: ignore[list-item]


def test_clear_on_the_master_too() -> None:
    mod = types.ModuleType("t_clear_master")
    mod.big = list(range(10))  # type: ignore[attr-defined]
    sys.modules[mod.__name__] = mod
    try:
        clear("big", 1, mod=mod)
        assert mod.big is None  # type: ignore[attr-defined]
    finally:
        del sys.modules[mod.__name__]


def test_clear_frees_what_a_global_held(two_workers: list[int]) -> None:
    rc = RemoteChannel()
    remotecall_fetch(lambda r: set_globals(held=r), two_workers[0], rc)
    rrid = remoteref_id(rc)
    eventually(lambda: clients(rrid) == {1: 1, two_workers[0]: 1})
    clear("held", two_workers[0])
    eventually(lambda: clients(rrid) == {1: 1}, what="the worker's handle released")


def test_clear_raises_for_constants_and_clears_the_rest(two_workers: list[int]) -> None:
    a, b = two_workers
    for w in two_workers:
        remotecall_fetch(make_final_module, w, "t_final")
        remotecall_fetch(make_frozen_module, w, "t_frozen")
    with pytest.raises(CompositeException) as info:
        clear(["LIMIT", "RATE", "plain"], mod="t_final")
    errors = info.value.exceptions
    assert len(errors) == 2 and {e.pid for e in errors} == {a, b}
    for e in errors:
        assert isinstance(e, RemoteException) and isinstance(e.captured.exc, AttributeError)
        assert "'LIMIT' is a constant" in str(e) and "'RATE' is a constant" in str(e)
    assert remotecall_fetch(get_globals, a, ["LIMIT", "RATE", "plain"], "t_final") == {
        "LIMIT": 3,
        "RATE": 0.5,
        "plain": None,
    }
    with pytest.raises(CompositeException, match="1 of the processes") as info2:
        clear(["locked", "free"], b, mod="t_frozen")
    assert "read-only" in str(info2.value.exceptions[0])
    assert remotecall_fetch(get_globals, b, ["locked", "free"], "t_frozen") == {
        "locked": 1,
        "free": None,
    }


def test_clear_of_a_caching_pool_clears_it_and_returns_it() -> None:
    class CountingPool(CachingPool):
        cleared = 0

        def clear(self) -> CountingPool:
            self.cleared += 1
            super().clear()
            return self

    pool = CountingPool([])
    assert clear(pool) is pool and pool.cleared == 1
