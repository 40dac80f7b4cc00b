"""RemoteChannels from any process: the channel methods, handles passed around, blocking,
the owner's death, and the jobs/results example.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    Channel,
    Future,
    ProcessExitedException,
    RemoteChannel,
    RemoteException,
    channel_from_id,
    fetch,
    interrupt,
    isready,
    put,
    remote_do,
    remotecall,
    remotecall_fetch,
    remoteref_id,
    take,
    wait,
)
from pydistributed.cluster import current_cluster
from pydistributed.errors import ChannelClosedError
from tests.conftest import in_thread, requests_awaiting, wait_until, worker_table
from tests.conftest import worker_ospid as ospid
from tests.integration import _helpers as h

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# -- what the workers run ---------------------------------------------------------------


def put_all(rc: RemoteChannel, items: list[Any]) -> int:
    for x in items:
        rc.put(x)
    return len(items)


def take_n(rc: RemoteChannel, n: int) -> list[Any]:
    return [rc.take(timeout=30) for _ in range(n)]


def take_one(rc: RemoteChannel, timeout: float | None = None) -> Any:
    return rc.take(timeout)


def drain(rc: RemoteChannel) -> list[Any]:
    return list(rc)


def make_channel_here(size: int) -> RemoteChannel:
    return RemoteChannel(lambda: Channel(size))


def add(a: int, b: int) -> int:
    return a + b


class NotAChannel:
    def put(self, v: Any) -> None: ...


# -- helpers ----------------------------------------------------------------------------


# -- the channel methods ------------------------------------------------------------------


def test_default_is_a_channel_of_one_on_that_process(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(w)
    assert (rc.where, rc.whence) == (w, 1)
    assert remotecall_fetch(lambda r: channel_from_id(r).size, w, remoteref_id(rc)) == 1
    assert not rc.isready() and rc.isopen()
    assert rc.put("a") is rc
    assert rc.isready()
    assert rc.fetch(timeout=5) == "a" and rc.wait(timeout=5) is rc  # not removed
    with pytest.raises(TimeoutError):
        rc.put("b", timeout=0.1)  # full
    assert rc.take(timeout=5) == "a"
    with pytest.raises(TimeoutError):
        rc.take(timeout=0.1)
    with pytest.raises(TimeoutError):
        rc.fetch(timeout=0.1)
    with pytest.raises(TimeoutError):
        rc.wait(timeout=0.1)
    assert RemoteChannel(pid=w).where == w and RemoteChannel(None, w).where == w


def test_factory_channel_close_and_iteration(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10), w)
    for i in range(10):
        rc.put(i, timeout=5)  # room for all ten
    rc.close()
    assert not rc.isopen()
    with pytest.raises(ChannelClosedError):
        rc.put(10)
    assert rc.fetch() == 0
    assert list(rc) == list(range(10))  # what was buffered, then the end
    for op in (rc.take, rc.fetch, rc.wait):
        with pytest.raises(ChannelClosedError):
            op()
    # a closed channel wakes a blocked taker on another process
    rc2 = RemoteChannel(lambda: Channel(10), w)
    draining = remotecall(drain, two_workers[1], rc2)
    put_all(rc2, ["x", "y"])
    rc2.close()
    assert draining.fetch(timeout=10) == ["x", "y"]


def test_factory_errors(two_workers: list[int]) -> None:
    w = two_workers[0]
    with pytest.raises(RemoteException) as info:
        RemoteChannel(NotAChannel, w)
    assert isinstance(info.value.captured.exc, TypeError) and "take()" in str(info.value)
    with pytest.raises(RemoteException, match="ZeroDivisionError"):
        RemoteChannel(lambda: 1 / 0, w)
    with pytest.raises(TypeError):
        RemoteChannel(w, w)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        RemoteChannel("2")  # type: ignore[arg-type]


def test_unbuffered_remote_channel_is_a_rendezvous(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(0), a)
    putting = remotecall(put_all, b, rc, ["hello"])
    wait_until(rc.isready, timeout=10, what="the putter to wait at the channel")
    with pytest.raises(TimeoutError):  # no taker yet: the put does not return
        putting.wait(timeout=0.3)
    assert rc.take(timeout=10) == "hello"
    assert putting.fetch(timeout=10) == 1


def test_local_remote_channel_stores_the_objects_themselves() -> None:
    rc = RemoteChannel(lambda: Channel(2))
    assert rc.where == 1
    obj = {"k": [1]}
    rc.put(obj)
    assert rc.take() is obj


# -- from any process, passed any way -------------------------------------------------


def test_used_from_every_process(two_workers: list[int]) -> None:
    a, b = two_workers
    for owner in (1, a):
        rc = RemoteChannel(lambda: Channel(100), owner)
        assert remotecall_fetch(put_all, b, rc, list(range(20))) == 20  # b -> owner
        assert rc.take(timeout=10) == 0
        consumer = remotecall(take_n, a, rc, 19)
        assert consumer.fetch(timeout=10) == list(range(1, 20))
        rc.put("last")
        assert remotecall_fetch(take_one, b, rc, 10) == "last"


def test_passed_as_argument_return_value_and_in_a_closure(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = remotecall_fetch(make_channel_here, a, 5)  # a return value, made on a
    assert (rc.where, rc.whence) == (a, a)
    rc.put("via the master")
    assert remotecall_fetch(lambda: rc.take(timeout=10), b) == "via the master"  # captured
    nested = {"chans": [rc], "fut": Future(b)}
    assert remotecall_fetch(lambda d: d["chans"][0].put(1) and None, b, nested) is None
    assert rc.take(timeout=10) == 1
    # a RemoteChannel inside a Future's value
    f = remotecall(make_channel_here, b, 3)
    rc_b = fetch(f)
    assert rc_b.where == b
    rc_b.put("in a future")
    assert remotecall_fetch(take_one, a, rc_b, 10) == "in a future"


def test_generic_functions_accept_every_kind_of_reference(two_workers: list[int]) -> None:
    w = two_workers[0]
    for ch in (Channel(1), RemoteChannel(w), RemoteChannel()):
        # Julia's put! returns a RemoteChannel, and a Channel's value
        assert put(ch, "v") is (ch if isinstance(ch, RemoteChannel) else "v")
        assert isready(ch) and fetch(ch) == "v" and fetch(ch, 1) == "v"
        assert wait(ch) is ch and wait(ch, 1) is ch
        assert take(ch) == "v"
        with pytest.raises(TimeoutError):
            take(ch, 0.05)
        with pytest.raises(TimeoutError):
            put(ch, 1, 5)
            put(ch, 2, 0.05)
        assert take(ch, 5) == 1
    for f in (Future(), Future(w)):
        assert put(f, 3) is f and isready(f) and wait(f) is f and fetch(f) == 3


# -- blocking --------------------------------------------------------------------------


def test_a_worker_blocked_in_take_still_serves(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(w)
    started = RemoteChannel(lambda: Channel(11))
    blocked = remotecall(h.signal_then, w, started, take_one, rc)  # on w, on its own channel
    more = [  # and others
        remotecall(h.signal_then, w, started, take_one, RemoteChannel(w), 30) for _ in range(10)
    ]
    for _ in range(11):  # all of them run
        started.take(timeout=10)
    assert not blocked.isready()
    assert remotecall_fetch(add, w, 1, 2) == 3  # it answers calls
    other = RemoteChannel(lambda: Channel(3), w)  # and serves other references
    other.put("x")
    assert other.take(timeout=5) == "x"
    f = Future(w)
    f.put(9)
    assert f.fetch(timeout=5) == 9
    rc.put("go")  # a put from the master unblocks it
    assert blocked.fetch(timeout=10) == "go"
    assert not any(m.isready() for m in more)


def test_interrupting_the_owner_spares_the_operations_it_serves(two_workers: list[int]) -> None:
    owner, other = two_workers
    rc = RemoteChannel(owner)
    before = remotecall_fetch(requests_awaiting, other, owner)
    blocked = remotecall(take_one, other, rc)  # served on the owner, for the other worker
    wait_until(
        lambda: remotecall_fetch(requests_awaiting, other, owner) > before,
        what="the take to be sent to the owner",
    )
    interrupt(owner)  # the owner runs no call of its own: it ignores the interrupt
    with pytest.raises(TimeoutError):  # the served take wakes up (every 0.25 s) meanwhile
        blocked.wait(timeout=0.8)
    rc.put("value")
    assert blocked.fetch(timeout=10) == "value"


def test_streams_many_items_in_order_between_workers(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(16), b)
    n = 2000
    consumer = remotecall(take_n, b, rc, n)
    producer = remotecall(put_all, a, rc, list(range(n)))
    assert producer.fetch(timeout=60) == n
    assert consumer.fetch(timeout=60) == list(range(n))


def test_large_values(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(2), a)
    data = os.urandom(8 << 20)
    rc.put(data)
    assert remotecall_fetch(lambda r: len(r.fetch()), b, rc) == len(data)
    assert rc.take(timeout=10) == data


# -- death ------------------------------------------------------------------------------


def test_blocked_operations_fail_fast_when_the_owner_dies(two_workers: list[int]) -> None:
    doomed, other = two_workers
    empty = RemoteChannel(doomed)
    full = RemoteChannel(doomed)
    full.put("filler")
    here, there = requests_awaiting(doomed), remotecall_fetch(requests_awaiting, other, doomed)
    blocked = [
        in_thread(lambda: empty.take()),
        in_thread(lambda: empty.fetch()),
        in_thread(lambda: empty.wait()),
        in_thread(lambda: empty.take(timeout=30)),
        in_thread(lambda: full.put("more")),
        in_thread(lambda: remotecall_fetch(take_one, other, empty)),
        in_thread(lambda: remotecall_fetch(put_all, other, full, [1])),
    ]
    wait_until(  # all of them are waiting now
        lambda: (
            requests_awaiting(doomed) >= here + 5
            and remotecall_fetch(requests_awaiting, other, doomed) >= there + 2
        ),
        what="seven operations to wait on the doomed owner",
    )
    assert all(not out for _, out in blocked)
    start = time.monotonic()
    os.kill(ospid(doomed), signal.SIGKILL)
    for t, _ in blocked:
        t.join(5)
    elapsed = time.monotonic() - start
    outcomes = [out[0] if out else None for _, out in blocked]
    for e in outcomes[:5]:
        assert isinstance(e, ProcessExitedException) and e.worker_id == doomed, outcomes
    for e in outcomes[5:]:  # raised on the other worker, which reports it
        assert isinstance(e, RemoteException), outcomes
        assert isinstance(e.captured.exc, ProcessExitedException), outcomes
    assert elapsed < 2.0, elapsed
    for op in (empty.take, empty.isready, full.isopen, lambda: full.put(1)):
        with pytest.raises(ProcessExitedException):
            op()
    with pytest.raises(ProcessExitedException):
        RemoteChannel(doomed)


def test_a_dead_taker_does_not_swallow_a_later_value(two_workers: list[int]) -> None:
    doomed = two_workers[0]
    rc = RemoteChannel()  # on the master
    before = remotecall_fetch(requests_awaiting, doomed, 1)
    remote_do(take_one, doomed, rc)  # blocks on the master, for doomed
    wait_until(
        lambda: remotecall_fetch(requests_awaiting, doomed, 1) > before,
        what="the take to be sent to the master",
    )
    os.kill(ospid(doomed), signal.SIGKILL)
    wait_until(lambda: doomed not in worker_table(), timeout=5, what="the death to be noticed")
    # No signal marks the moment the abandoned take gives up (within refops.POLL = 0.25 s of
    # noticing): the test is about a value put after that.
    time.sleep(1.0)
    rc.put("for the living")
    time.sleep(0.3)  # time enough for an abandoned take to grab it
    assert rc.isready()
    assert rc.take(timeout=5) == "for the living"


# -- the example -------------------------------------------------------------------------


def test_jobs_results_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pydistributed", "-p", "2", str(EXAMPLES / "jobs_results.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    done = [
        re.fullmatch(r"(\d+) finished in (\d+\.\d\d) seconds on worker (\d+)", ln) for ln in lines
    ]
    matches = [m for m in done if m]
    assert sorted(int(m[1]) for m in matches) == list(range(1, 13)), proc.stdout
    assert {int(m[3]) for m in matches} <= {2, 3}
    assert all(0 <= float(m[2]) <= 0.1 for m in matches)
    assert re.fullmatch(r"12 jobs on 2 workers in \d+\.\d\d seconds", lines[-1]), proc.stdout


# -- a rendezvous put hands over the value as it was --------------------------------------------


class _SlowToPickle:
    """Pickles what it holds *when pickled*, after a pause: a value encoded after ``put``
    returned shows the producer's later change."""

    def __init__(self, items: list[int]) -> None:
        self.items = items

    def __reduce__(self) -> tuple[Any, ...]:
        time.sleep(0.05)
        return (_SlowToPickle, (list(self.items),))


def _take_n(rc: RemoteChannel, n: int, pause: float) -> list[list[int]]:
    out = []
    for _ in range(n):
        time.sleep(pause)  # with a pause, each put waits for its taker
        out.append(rc.take(timeout=30).items)
    return out


def _has_taker(rc: RemoteChannel) -> bool:
    """Whether a take waits on ``rc``'s channel, which lives here."""
    ch = current_cluster().refs.lookup(rc._key)
    with ch._lock:
        return bool(ch._requests)


@pytest.mark.parametrize("taker_first", [True, False], ids=["taker-waits", "putter-waits"])
def test_an_unbuffered_put_returns_once_the_remote_taker_has_the_value_as_it_was(
    add_workers: Callable[..., list[int]], taker_first: bool
) -> None:
    (w,) = add_workers(1)
    rc = RemoteChannel(lambda: Channel(0))  # owned here; the taker is on the worker
    taken = remotecall(_take_n, w, rc, 4, 0.0 if taker_first else 0.2)
    box = _SlowToPickle([])
    for i in range(4):
        if taker_first:
            wait_until(lambda: _has_taker(rc), 30, what="the taker")
        box.items.append(i)
        rc.put(box, timeout=30)
        box.items.append(-1)  # after put returned: the taker must not see this
    expected = [[0], [0, -1, 1], [0, -1, 1, -1, 2], [0, -1, 1, -1, 2, -1, 3]]
    assert taken.fetch(timeout=30) == expected


def test_an_unbuffered_put_of_a_value_a_remote_taker_cannot_receive_raises_and_loses_nothing(
    add_workers: Callable[..., list[int]],
) -> None:
    (w,) = add_workers(1)
    rc = RemoteChannel(lambda: Channel(0))
    taken = remotecall(lambda c: c.take(timeout=30), w, rc)
    wait_until(lambda: _has_taker(rc), 30, what="the taker")
    with pytest.raises(Exception, match="pickle"):
        rc.put(threading.Lock(), timeout=30)  # a lock cannot be sent
    rc.put("fine", timeout=30)
    assert taken.fetch(timeout=30) == "fine"


@pytest.mark.parametrize(
    ("bad", "error"), [("1", TypeError), (True, TypeError), (math.nan, ValueError)]
)
def test_a_bad_timeout_is_refused_in_the_caller(
    two_workers: list[int], bad: Any, error: type[Exception]
) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(2), w)
    rc.put("there", timeout=10)
    for call in (
        lambda: rc.put("more", bad),
        lambda: put(rc, "more", bad),
        lambda: rc.take(bad),
        lambda: take(rc, bad),
        lambda: rc.fetch(bad),
        lambda: fetch(rc, bad),
        lambda: rc.wait(bad),
        lambda: wait(rc, bad),
    ):
        with pytest.raises(error, match=r"^timeout must be a number of seconds"):
            call()
    assert requests_awaiting(w) == 0
    assert rc.take(timeout=10) == "there" and not rc.isready()  # nothing put, nothing taken
    with pytest.raises(TimeoutError, match=r"Channel.wait timed out after 0\.2 s$"):
        rc.wait(timeout=0.2)  # the owner waits for what is left of it: not 0.19999... s


def test_a_remote_timeout_says_the_callers_timeout(two_workers: list[int]) -> None:
    # the owner waits in slices: the message names the caller's timeout, not the last slice
    rc = RemoteChannel(lambda: Channel(1), two_workers[0])
    for timeout, said in ((1, "1"), (0, "0"), (-1, "0"), (0.3, "0.3")):
        with pytest.raises(TimeoutError, match=rf"^Channel\.take timed out after {said} s$"):
            rc.take(timeout=timeout)
