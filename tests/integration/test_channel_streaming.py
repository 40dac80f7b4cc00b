"""A RemoteChannel's streaming mode (``rc.stream()``): order, credit and capacity,
backpressure, errors at the next operation, the death of either side, fairness.
"""

from __future__ import annotations

import glob
import math
import os
import signal
import threading
import time
from typing import Any

import pytest

from pydistributed import (
    Channel,
    ProcessExitedException,
    RemoteChannel,
    RemoteException,
    channel_from_id,
    remotecall,
    remotecall_fetch,
    remoteref_id,
)
from pydistributed.errors import ChannelClosedError
from tests.conftest import in_thread, wait_until
from tests.conftest import worker_ospid as ospid

# -- what the workers run ---------------------------------------------------------------


def stream_tagged(rc: RemoteChannel, tag: Any, n: int) -> int:
    """Stream ``(tag, 0) .. (tag, n-1)`` into ``rc``."""
    with rc.stream() as s:
        for i in range(n):
            s.put((tag, i), timeout=60)
    return n


def stream_forever(rc: RemoteChannel, tag: Any) -> None:
    """Stream ``(tag, i)`` until killed (each put waits for room at most 60 s)."""
    with rc.stream() as s:
        i = 0
        while True:
            s.put((tag, i), timeout=60)
            i += 1


def take_n(rc: RemoteChannel, n: int) -> list[Any]:
    return [rc.take(timeout=30) for _ in range(n)]


def n_avail(rrid: Any) -> int:
    return int(channel_from_id(rrid).n_avail())


def _by_tag(items: list[tuple[Any, int]]) -> dict[Any, list[int]]:
    out: dict[Any, list[int]] = {}
    for tag, i in items:
        out.setdefault(tag, []).append(i)
    return out


# -- order, credit, capacity ----------------------------------------------------------------


def test_order_is_kept_per_producer_with_several_producers(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(8))  # on the master
    n = 1500
    producers = [remotecall(stream_tagged, w, rc, w, n) for w in (a, b)]
    got = [rc.take(timeout=30) for _ in range(2 * n)]
    assert [p.fetch(timeout=30) for p in producers] == [n, n]
    per = _by_tag(got)
    assert per == {a: list(range(n)), b: list(range(n))}
    with pytest.raises(TimeoutError):
        rc.take(timeout=0.05)  # nothing more, nothing twice


def test_from_the_master_to_a_worker_and_between_workers(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(16), a)
    consumer = remotecall(take_n, b, rc, 500)
    assert stream_tagged(rc, "m", 500) == 500
    assert consumer.fetch(timeout=30) == [("m", i) for i in range(500)]


def test_credit_follows_the_channel_size(two_workers: list[int]) -> None:
    w = two_workers[0]
    cases = [
        (RemoteChannel(w), 1),
        (RemoteChannel(lambda: Channel(0), w), 1),
        (RemoteChannel(lambda: Channel(5), w), 5),
        (RemoteChannel(lambda: Channel(100_000), w), 1024),
        (RemoteChannel(lambda: Channel(math.inf), w), 1024),
    ]
    for rc, credit in cases:
        with rc.stream() as s:
            assert s.credit == credit


def test_capacity_is_respected_at_the_owner(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(5), a)
    producer = remotecall(stream_tagged, b, rc, "p", 200)
    seen: list[int] = []
    taken: list[Any] = []
    while len(taken) < 200:
        seen.append(remotecall_fetch(n_avail, a, remoteref_id(rc)))
        taken.append(rc.take(timeout=30))
    assert producer.fetch(timeout=30) == 200
    assert taken == [("p", i) for i in range(200)]
    assert max(seen) <= 5  # the owner's channel never held more than its size
    assert max(seen) == 5  # and the producer did fill it


def test_unbuffered_channel_hands_over_only_to_a_taker(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(0), w)
    with rc.stream() as s:
        assert s.credit == 1
        s.put("x", timeout=5)
        with pytest.raises(TimeoutError):
            s.flush(timeout=0.5)  # no taker: not stored
        assert remotecall_fetch(n_avail, w, remoteref_id(rc)) == 1  # one putter waits
        assert rc.take(timeout=10) == "x"
        s.flush(timeout=10)


def test_a_stream_on_a_local_channel_is_the_plain_put() -> None:
    rc = RemoteChannel(lambda: Channel(3))
    obj = {"k": 1}
    with rc.stream() as s:
        s.put(obj)
        s.put(2)
    assert rc.take(timeout=1) is obj and rc.take(timeout=1) == 2
    with pytest.raises(ValueError, match="closed ChannelStream"):
        s.put(3)


# -- backpressure ---------------------------------------------------------------------------


def test_backpressure_blocks_a_fast_producer_and_resumes(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(2), w)
    s = rc.stream()
    accepted = 0
    with pytest.raises(TimeoutError):
        for i in range(100):
            s.put(i, timeout=0.5)
            accepted += 1
    # the channel (2), a batch waiting for room (<= credit 2), and a full buffer here (2)
    assert 2 <= accepted <= 2 + 2 * 2
    assert remotecall_fetch(n_avail, w, remoteref_id(rc)) == 2
    t, out = in_thread(lambda: [s.put(i, timeout=30) for i in range(accepted, 50)])
    got = [rc.take(timeout=30) for _ in range(50)]
    t.join(30)
    assert not t.is_alive() and not isinstance(out[0], BaseException), out
    s.close(timeout=30)
    assert got == list(range(50))


# -- errors at the next operation -------------------------------------------------------------


def test_closed_channel_raises_at_the_next_flush_and_loses_nothing_put_before(
    two_workers: list[int],
) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(100), w)
    s = rc.stream()
    for i in range(50):
        s.put(i, timeout=10)
    s.flush(timeout=10)
    rc.close()
    try:
        s.put(50, timeout=10)  # may find the channel closed at once, or carry the news later
    except ChannelClosedError:
        pass
    with pytest.raises(ChannelClosedError):
        s.flush(timeout=10)
    with pytest.raises(ChannelClosedError):
        s.put(51, timeout=10)  # every later put raises too, and does not accept its value
    assert s.not_stored == [50]
    s.close()  # the error was raised already: not again
    assert list(rc) == list(range(50))  # every value put before the close is there


def test_closed_channel_raises_at_close(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10), w)
    s = rc.stream()
    s.put("before", timeout=10)
    s.flush(timeout=10)
    rc.close()
    s.put("after", timeout=10)
    with pytest.raises(ChannelClosedError):
        s.close(timeout=10)
    assert s.not_stored == ["after"]
    s.close()  # idempotent
    with pytest.raises(ValueError, match="closed ChannelStream"):
        s.put("again")
    assert list(rc) == ["before"]
    with pytest.raises(ChannelClosedError):
        rc.stream()  # a stream cannot open on a closed channel


def test_unpicklable_value_raises_and_is_reported(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10), w)
    s = rc.stream()
    s.put(1, timeout=10)
    s.flush(timeout=10)
    lock = __import__("threading").Lock()
    with pytest.raises(Exception, match="lock"):
        s.put(lock, timeout=10)
        s.flush(timeout=10)
    assert s.not_stored == [lock]
    assert rc.take(timeout=10) == 1


def test_owner_killed_mid_stream_raises_at_the_next_operation(two_workers: list[int]) -> None:
    doomed = two_workers[0]
    rc = RemoteChannel(lambda: Channel(4), doomed)
    s = rc.stream()
    with pytest.raises(TimeoutError):  # nobody takes: the producer ends up blocked
        for i in range(100):
            s.put(i, timeout=0.5)
    os.kill(ospid(doomed), signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(ProcessExitedException):
        for i in range(100):
            s.put(i, timeout=30)
        s.flush(timeout=30)
    assert time.monotonic() - start < 20
    assert s.not_stored  # the values it never confirmed, in order
    assert s.not_stored == sorted(s.not_stored)
    with pytest.raises(ProcessExitedException):
        s.flush(timeout=5)


def test_killed_producer_neither_wedges_the_channel_nor_takes_others_room(
    two_workers: list[int],
) -> None:
    doomed, other = two_workers
    rc = RemoteChannel(lambda: Channel(4))  # on the master
    ch = channel_from_id(remoteref_id(rc))
    remotecall(stream_forever, doomed, rc, "doomed")
    wait_until(lambda: ch.n_avail() == 4, timeout=30, what="the doomed producer to fill it")
    assert rc.take(timeout=10) == ("doomed", 0)
    os.kill(ospid(doomed), signal.SIGKILL)
    survivor = remotecall(stream_tagged, other, rc, "other", 300)
    got = []
    while len([x for x in got if x[0] == "other"]) < 300:
        got.append(rc.take(timeout=30))
    assert survivor.fetch(timeout=30) == 300
    per = _by_tag(got)
    assert per["other"] == list(range(300))
    assert per.get("doomed", []) == list(range(1, 1 + len(per.get("doomed", []))))
    rc.put("still works", timeout=5)
    assert rc.take(timeout=5) == "still works"


# -- fairness -------------------------------------------------------------------------------


def test_two_producers_share_a_full_channel_fairly(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(4))  # on the master
    ch = channel_from_id(remoteref_id(rc))
    pa = remotecall(stream_tagged, a, rc, "a", 400)
    wait_until(lambda: ch.n_avail() == 4, timeout=30, what="producer a to fill the channel")
    pb = remotecall(stream_tagged, b, rc, "b", 400)
    got = [rc.take(timeout=30) for _ in range(20)]
    time.sleep(0.5)  # b has joined: both wait for room now
    for _ in range(200):  # a slow consumer: both producers keep waiting for room
        got.append(rc.take(timeout=30))
        time.sleep(0.003)
    window = [tag for tag, _ in got[20:]]
    while len(got) < 800:
        got.append(rc.take(timeout=30))
    assert [pa.fetch(timeout=30), pb.fetch(timeout=30)] == [400, 400]
    # first come, first served: each gets about every other free slot (a batch takes what
    # is free when its turn comes, so not strictly alternating)
    assert window.count("a") >= 70 and window.count("b") >= 70, window
    per = _by_tag(got)
    assert per == {"a": list(range(400)), "b": list(range(400))}


# -- a consumer that takes values ahead ------------------------------------------------------


def consume_all(rc: RemoteChannel) -> list[Any]:
    with rc.consume() as c:
        return list(c)


def consume_one_then_hang(rc: RemoteChannel, path: str) -> None:
    with rc.consume(ahead=1) as c:
        value = c.take(timeout=30)
        with open(path, "w") as f:
            f.write(repr(value))
        time.sleep(120)  # killed meanwhile


def test_consumers_get_every_value_once_in_channel_order(two_workers: list[int]) -> None:
    a, b = two_workers
    rc = RemoteChannel(lambda: Channel(16))  # on the master
    consumers = [remotecall(consume_all, w, rc) for w in (a, b)]
    for i in range(1000):
        rc.put(i, timeout=30)
    rc.close()
    got = [c.fetch(timeout=60) for c in consumers]
    assert sorted(got[0] + got[1]) == list(range(1000))  # nothing lost, nothing twice
    assert all(g == sorted(g) for g in got)  # each in channel order


def test_closing_a_consumer_gives_back_the_value_taken_ahead(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10), w)
    for i in range(5):
        rc.put(i, timeout=10)
    with rc.consume(ahead=1) as c:
        assert c.take(timeout=10) == 0
        wait_until(lambda: remotecall_fetch(n_avail, w, remoteref_id(rc)) == 3, timeout=10)
    assert remotecall_fetch(n_avail, w, remoteref_id(rc)) == 4  # 1 is back
    assert [rc.take(timeout=10) for _ in range(4)] == [1, 2, 3, 4]  # at the front
    with pytest.raises(ValueError, match="closed ChannelConsumer"):
        c.take()
    with rc.consume() as c:  # a consumer closed while its take waits: nothing is taken
        with pytest.raises(TimeoutError):
            c.take(timeout=0.3)
    rc.put("later", timeout=10)
    assert rc.take(timeout=10) == "later"


def test_a_killed_consumer_loses_nothing(two_workers: list[int], tmp_path: Any) -> None:
    doomed = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10))  # on the master
    ch = channel_from_id(remoteref_id(rc))
    for i in range(5):
        rc.put(i, timeout=10)
    path = str(tmp_path / "got")
    remotecall(consume_one_then_hang, doomed, rc, path)
    wait_until(lambda: os.path.exists(path) and ch.n_avail() == 3, timeout=30)
    with open(path) as f:
        assert f.read() == "0"  # 0 is the consumer's; 1 was taken ahead
    os.kill(ospid(doomed), signal.SIGKILL)
    wait_until(lambda: ch.n_avail() == 4, timeout=30, what="1 to come back")
    assert [rc.take(timeout=10) for _ in range(4)] == [1, 2, 3, 4]


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()


def consume_some_then_hang(rc: RemoteChannel, path: str, n: int, ahead: int) -> None:
    with rc.consume(ahead=ahead) as c:
        for _ in range(n):
            value = c.take(timeout=30)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, f"{value}\n".encode())
            os.close(fd)
        time.sleep(120)  # killed meanwhile


def consume_slowly(rc: RemoteChannel, ahead: int) -> list[Any]:
    got = []
    with rc.consume(ahead=ahead) as c:
        for v in c:
            got.append(v)
            time.sleep(0.002)
    return got


def test_a_consumer_keeps_values_ahead_and_closing_gives_them_back(
    two_workers: list[int],
) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10), w)
    for i in range(10):
        rc.put(i, timeout=10)
    with rc.consume(ahead=4) as c:
        assert c.take(timeout=10) == 0  # the first request asks for one
        # the next asks for 4 at once: 1..4 are leased here
        wait_until(lambda: remotecall_fetch(n_avail, w, remoteref_id(rc)) == 5, timeout=10)
        assert [c.take(timeout=10) for _ in range(2)] == [1, 2]
    assert remotecall_fetch(n_avail, w, remoteref_id(rc)) == 7  # 3 and 4 are back
    assert [rc.take(timeout=10) for _ in range(7)] == list(range(3, 10))  # at the front


def test_a_request_takes_at_most_half_the_channel(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(8), w)
    for i in range(8):
        rc.put(i, timeout=10)
    with rc.consume(ahead=100) as c:
        assert c.take(timeout=10) == 0
        wait_until(lambda: remotecall_fetch(n_avail, w, remoteref_id(rc)) == 3, timeout=10)
        assert remotecall_fetch(n_avail, w, remoteref_id(rc)) == 3  # 4 more, not all 7
    assert [rc.take(timeout=10) for _ in range(7)] == list(range(1, 8))


def test_a_consumer_without_a_used_mark_keeps_one_value_ahead(
    two_workers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydistributed import channelconsumer

    class NoShm:  # a fake, to inject a fault: no /dev/shm here (or a read-only one)
        def __init__(self) -> None:
            raise OSError("no /dev/shm (injected)")

    monkeypatch.setattr(channelconsumer, "UsedMark", NoShm)
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10), w)
    for i in range(10):
        rc.put(i, timeout=10)
    with rc.consume(ahead=4) as c:
        assert [c.take(timeout=10) for _ in range(3)] == [0, 1, 2]
        wait_until(lambda: remotecall_fetch(n_avail, w, remoteref_id(rc)) == 6, timeout=10)
        assert remotecall_fetch(n_avail, w, remoteref_id(rc)) == 6  # only 3 is ahead
    assert [rc.take(timeout=10) for _ in range(7)] == list(range(3, 10))


def test_consume_rejects_a_bad_ahead() -> None:
    rc = RemoteChannel(lambda: Channel(4))
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="ahead"):
            rc.consume(ahead=bad)  # type: ignore[arg-type]


def test_a_killed_consumer_gives_back_exactly_the_values_it_never_returned(
    two_workers: list[int], tmp_path: Any
) -> None:
    doomed = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10))  # on the master
    ch = channel_from_id(remoteref_id(rc))
    for i in range(10):
        rc.put(i, timeout=10)
    path = str(tmp_path / "got")
    remotecall(consume_some_then_hang, doomed, rc, path, 2, 4)
    # 0 (first request), then 1..4 in one request; 0 and 1 returned, 2..4 leased
    wait_until(lambda: _lines(path) == ["0", "1"] and ch.n_avail() == 5, timeout=30)
    pid = ospid(doomed)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: ch.n_avail() == 8, timeout=30, what="2, 3, 4 to come back")
    assert [rc.take(timeout=10) for _ in range(8)] == list(range(2, 10))
    assert not glob.glob(f"/dev/shm/pydist-lease-{pid}-*")  # the owner removed its mark


@pytest.mark.parametrize("ahead", [1, 4, 8])
def test_every_value_once_across_consumers_with_one_killed_midway(
    two_workers: list[int], tmp_path: Any, ahead: int
) -> None:
    doomed, survivor = two_workers
    n = 300
    rc = RemoteChannel(lambda: Channel(16))  # on the master
    path = str(tmp_path / "doomed")
    remotecall(consume_some_then_hang, doomed, rc, path, 20, ahead)
    alive = remotecall(consume_slowly, survivor, rc, ahead)
    done = threading.Event()

    def feed() -> None:
        for i in range(n):
            rc.put(i, timeout=60)
        done.set()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    wait_until(lambda: len(_lines(path)) == 20, timeout=60)
    os.kill(ospid(doomed), signal.SIGKILL)
    assert done.wait(60)
    feeder.join(10)
    rc.close()
    theirs = [int(v) for v in _lines(path)]
    ours = alive.fetch(timeout=60)
    assert sorted(theirs + ours) == list(range(n))  # nothing lost, nothing twice
    assert theirs == sorted(theirs)  # in channel order (the survivor's has the given back)


def test_take_more_leaves_one_value_per_waiting_taker() -> None:
    ch: Channel[int] = Channel(10)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(ch.take(timeout=10)), daemon=True)
    t.start()
    wait_until(lambda: ch._takers == 1, timeout=10)
    for i in range(3):
        ch.put(i, timeout=1)
    more = ch._take_more(10, None)
    t.join(10)
    assert len(more) == 2 and sorted(more + got) == [0, 1, 2]


def stream_slowly_with_linger(rc: RemoteChannel, n: int, linger: float) -> int:
    with rc.stream(linger=linger) as s:
        for i in range(n):
            s.put(i, timeout=30)
            time.sleep(0.002)
    return n


def test_linger_delivers_everything_in_order(two_workers: list[int]) -> None:
    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(16))  # on the master
    producer = remotecall(stream_slowly_with_linger, w, rc, 60, 0.02)
    assert [rc.take(timeout=30) for _ in range(60)] == list(range(60))
    assert producer.fetch(timeout=30) == 60
    s = RemoteChannel(lambda: Channel(4), w).stream(linger=10.0)
    s.put("waits", timeout=5)  # lingers: nothing in flight yet
    s.flush(timeout=10)  # but a flush sends at once
    s.close()
    for bad in (-1, math.inf, math.nan):
        with pytest.raises(ValueError, match="linger"):
            rc.stream(linger=bad)
    for wrong in (True, "1", None):
        with pytest.raises(TypeError, match="linger"):
            rc.stream(linger=wrong)  # type: ignore[arg-type]


def take_one_by_consumer(rc: RemoteChannel) -> Any:
    with rc.consume(ahead=4) as c:
        return c.take(timeout=30)


def test_a_lease_that_cannot_be_kept_gives_its_values_back(
    two_workers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injected with a fake: the owner's lease book fails (any error) after the values
    were taken for a consumer; they go back to the channel, in order, and the consumer gets
    the error."""
    from pydistributed import refstore

    w = two_workers[0]
    rc = RemoteChannel(lambda: Channel(10))  # on the master
    ch = channel_from_id(remoteref_id(rc))
    for i in range(5):
        rc.put(i, timeout=10)

    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("the lease book is broken")

    monkeypatch.setattr(refstore.Leases, "hold", broken)
    with pytest.raises(RemoteException, match="the lease book is broken"):
        remotecall_fetch(take_one_by_consumer, w, rc)
    assert ch.n_avail() == 5
    monkeypatch.undo()
    assert remotecall_fetch(take_one_by_consumer, w, rc) == 0
    wait_until(lambda: ch.n_avail() == 4, timeout=30, what="the values taken ahead to come back")
    assert [rc.take(timeout=10) for _ in range(4)] == [1, 2, 3, 4]
