"""Julia's own Distributed test suite, ported: channels and large values (test/distributed_exec.jl,
from "Testing buffered and unbuffered reads" to "Test isempty(::RemoteChannel)", and the
channel issues #29932 and #33972).

Each test names the Julia testset, comment or issue it ports.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import (
    Channel,
    ChannelClosedError,
    RemoteChannel,
    async_,
    fetch,
    fetchfrom,
    isready,
    myid,
    put,
    remotecall_fetch,
    spawnat,
    take,
)
from tests.integration._julia import T, four_workers

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def four() -> Iterator[list[int]]:
    yield from four_workers()


# -- what the workers run ------------------------------------------------------------------


def iteration_take(ch: Any) -> int:
    count = 0
    for _ in ch:
        count += 1
    return count


def iteration_collect(ch: Any) -> int:
    return len(list(ch))


def iteration_put(ch: Any, total: int) -> None:
    for i in range(1, total + 1):
        ch.put(i, timeout=T)
    ch.close()


# -- tests -----------------------------------------------------------------------------------


def test_buffered_and_unbuffered_reads(four: list[int]) -> None:
    # "Testing buffered  and unbuffered reads"; "large number of small requests" (10000 in
    # Julia, 2000 here); "test parallel sends of large arrays from multiple tasks"
    other = four[0]
    a = [1] * 10**6
    assert remotecall_fetch(lambda x: x, other, a) == a
    s = ["".join(random.choices(string.ascii_letters, k=8)) for _ in range(10**5)]
    assert remotecall_fetch(lambda x: x, other, s) == s
    assert [remotecall_fetch(myid, other) for _ in range(2000)] == [other] * 2000

    def sender() -> str:
        for _ in range(10):
            arr = [random.random() for _ in range(2 * 10**5)]
            if remotecall_fetch(lambda x: x, other, arr) != arr:
                return "ERROR"
        return "OK"

    tasks = [async_(sender) for _ in range(10)]
    assert [t.fetch(timeout=60) for t in tasks] == ["OK"] * 10


def _check_channel(c: Any) -> None:
    assert c.isopen() is True
    put(c, 1, timeout=T)
    put(c, "Hello", timeout=T)
    put(c, 5.0, timeout=T)
    assert isready(c) is True
    assert c.isopen() is True
    assert fetch(c, timeout=T) == 1
    assert fetch(c, timeout=T) == 1  # Should not have been popped previously
    assert take(c, timeout=T) == 1
    assert take(c, timeout=T) == "Hello"
    assert fetch(c, timeout=T) == 5.0
    assert take(c, timeout=T) == 5.0
    assert isready(c) is False
    assert c.isopen() is True
    c.close()
    assert c.isopen() is False


def test_channel(four: list[int]) -> None:
    # "function test_channel(c)" on Channel(10) and RemoteChannel(()->Channel(10))
    _check_channel(Channel(10))
    _check_channel(RemoteChannel(lambda: Channel(10)))
    _check_channel(RemoteChannel(lambda: Channel(10), four[0]))


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_iteration(four: list[int], kind: str) -> None:
    # "test channel iterations": test_iteration(in_c, out_c)
    if kind == "local":
        in_c: Any = Channel(10)
        out_c: Any = Channel(10)
    else:
        in_c = RemoteChannel(lambda: Channel(10))
        out_c = RemoteChannel(lambda: Channel(10))

    def pump() -> None:
        for v in in_c:
            put(out_c, v, timeout=T)

    t = async_(pump)
    assert in_c.isopen() is True
    put(in_c, 1, timeout=T)
    assert take(out_c, timeout=T) == 1
    put(in_c, "Hello", timeout=T)
    in_c.close()
    assert take(out_c, timeout=T) == "Hello"
    assert in_c.isopen() is False
    with pytest.raises(ChannelClosedError):  # Julia: InvalidStateException
        put(in_c, "foo", timeout=T)
    t.wait(timeout=T)
    assert t.done()


def test_iteration_across_processes(four: list[int]) -> None:
    # "test_iteration_take / test_iteration_collect / test_iteration_put", both directions
    other = four[0]
    ch: Any = RemoteChannel(lambda: Channel(1))
    t = async_(iteration_put, ch, 10)
    assert fetchfrom(other, iteration_take, ch) == 10
    t.wait(timeout=T)
    ch = RemoteChannel(lambda: Channel(1))
    t = async_(iteration_put, ch, 10)
    assert fetchfrom(other, iteration_collect, ch) == 10
    t.wait(timeout=T)
    # now reverse
    ch = RemoteChannel(lambda: Channel(1))
    f = spawnat(other, iteration_put, ch, 10)
    assert iteration_take(ch) == 10
    f.wait(timeout=T)
    ch = RemoteChannel(lambda: Channel(1))
    f = spawnat(other, iteration_put, ch, 10)
    assert iteration_collect(ch) == 10
    f.wait(timeout=T)


def test_isready_does_not_modify_channel(four: list[int]) -> None:
    # "Test isempty(::RemoteChannel)": Python has isready, not isempty; it must not take
    chan: Channel[int] = Channel(1)
    chan.put(1, timeout=T)
    remotechan: RemoteChannel[int] = RemoteChannel(lambda: chan)
    assert isready(remotechan)
    assert isready(chan)
    assert remotecall_fetch(lambda: isready(remotechan), four[0])
    assert isready(chan)


def test_issue_29932_unbuffered_large_array(four: list[int]) -> None:
    # "Github issue #29932": large arrays through an unbuffered RemoteChannel
    from pydistributed import Channel, RemoteChannel, async_

    rc: RemoteChannel[list[float]] = RemoteChannel(lambda: Channel(0))

    def producer() -> None:
        largev = [0.0] * (2**17 + 1)
        for i in range(1, 11):
            largev[0] = float(i)
            rc.put(list(largev), timeout=T)

    t = async_(producer)

    def consumer(rc: Any) -> str:
        for i in range(1, 11):
            if rc.take(timeout=T)[0] != float(i):
                raise RuntimeError("Failed")
        return "OK"

    assert remotecall_fetch(consumer, four[0], rc) == "OK"
    t.wait(timeout=T)


def test_issue_33972_closed_channel_take_releases(four: list[int]) -> None:
    # "github issue 33972": a take on a closed unbuffered channel must not leave it locked
    from pydistributed import Channel, ChannelClosedError, RemoteChannel

    rc: RemoteChannel[int] = RemoteChannel(lambda: Channel(0), four[0])
    rc.close()
    with pytest.raises(ChannelClosedError):
        rc.take(timeout=T)
    with pytest.raises(ChannelClosedError):  # again, at once: nothing held from the first
        rc.take(timeout=T)
    assert remotecall_fetch(lambda r: r.isopen(), four[0], rc) is False
