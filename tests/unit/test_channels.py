"""Unit tests of pydistributed.channels: Channel semantics, close, timeouts, concurrency."""

from __future__ import annotations

import ctypes
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import pydistributed
from pydistributed import channels
from pydistributed.channels import AbstractChannel, Channel
from pydistributed.errors import ChannelClosedError

pytestmark = pytest.mark.timeout(30)

# Long enough for a thread to reach its blocking call, short enough to keep the suite fast.
SETTLE = 0.05
JOIN = 5.0


class Runner:
    """Run a callable in a daemon thread and keep its result or exception."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def body() -> None:
            try:
                self.result = fn(*args, **kwargs)
            except BaseException as e:
                self.error = e
            finally:
                self.done.set()

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()

    def join(self) -> Any:
        assert self.done.wait(JOIN), "thread did not finish"
        self.thread.join(JOIN)
        if self.error is not None:
            raise self.error
        return self.result


def wait_until(pred: Callable[[], bool], timeout: float = JOIN) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7, math.inf, float("inf")])
def test_valid_sizes(size: Any) -> None:
    ch = Channel(size)
    assert ch.size == size
    assert ch.isopen()
    assert not ch.isready()
    assert ch.n_avail() == 0


def test_default_size_is_unbuffered() -> None:
    assert Channel().size == 0


@pytest.mark.parametrize("size", [-1, True, False, 1.5, 2.0, -math.inf, math.nan, "3", None])
def test_invalid_sizes(size: Any) -> None:
    with pytest.raises(ValueError):
        Channel(size)


def test_repr() -> None:
    ch = Channel(1)
    assert repr(ch) == "Channel(size=1, avail=0, open)"
    ch.put("x")
    assert repr(ch) == "Channel(size=1, avail=1, open)"
    ch.close()
    assert repr(ch) == "Channel(size=1, avail=1, closed)"
    assert repr(Channel(math.inf)) == "Channel(size=inf, avail=0, open)"


# -- abstract base class ---------------------------------------------------------------------


def test_abstract_channel_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError):
        AbstractChannel()  # type: ignore[abstract]


def test_partial_subclass_cannot_be_instantiated() -> None:
    class Half(AbstractChannel):
        def put(self, value: Any, timeout: float | None = None) -> None:
            pass

    with pytest.raises(TypeError):
        Half()  # type: ignore[abstract]


class ListChannel(AbstractChannel):
    """A minimal user channel: a list, never blocking."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.open = True

    def put(self, value: Any, timeout: float | None = None) -> None:
        if not self.open:
            raise ChannelClosedError("closed")
        self.items.append(value)

    def take(self, timeout: float | None = None) -> Any:
        if not self.items:
            raise ChannelClosedError("closed") if not self.open else TimeoutError()
        return self.items.pop(0)

    def fetch(self, timeout: float | None = None) -> Any:
        if not self.items:
            raise ChannelClosedError("closed") if not self.open else TimeoutError()
        return self.items[0]

    def isready(self) -> bool:
        return bool(self.items)

    def wait(self, timeout: float | None = None) -> None:
        self.fetch(timeout)

    def close(self) -> None:
        self.open = False

    def isopen(self) -> bool:
        return self.open


def test_user_subclass_works_with_iteration() -> None:
    ch = ListChannel()
    for i in range(5):
        ch.put(i)
    ch.close()
    assert isinstance(ch, AbstractChannel)
    assert ch.fetch() == 0
    assert list(ch) == [0, 1, 2, 3, 4]
    assert list(ch) == []


def test_channel_is_an_abstract_channel() -> None:
    assert isinstance(Channel(), AbstractChannel)


# -- rendezvous (size 0) ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, math.inf])
def test_put_returns_the_value_as_the_generic_put_does(size: float) -> None:
    # Julia: put!(c::Channel, v) returns v (its test suite: @test put!(c, 1) == 1)
    ch: Channel[str] = Channel(size)
    value = "v"
    for put in (ch.put, lambda v, timeout: pydistributed.put(ch, v, timeout)):
        got: list[str] = []
        taker = threading.Thread(target=lambda got=got: got.append(ch.take(timeout=JOIN)))
        if size == 0:
            taker.start()  # an unbuffered put returns once taken
        assert put(value, timeout=JOIN) is value
        if size != 0:
            taker.start()
        taker.join(JOIN)
        assert got == ["v"]


def test_rendezvous_put_returns_only_after_take() -> None:
    ch = Channel(0)
    putter = Runner(lambda: ch.put("v", timeout=JOIN))
    time.sleep(SETTLE)
    assert not putter.done.is_set()
    assert ch.isready()
    assert ch.n_avail() == 1
    assert ch.take(timeout=JOIN) == "v"
    putter.join()
    assert not ch.isready()


def test_rendezvous_take_waits_for_put() -> None:
    ch = Channel(0)
    taker = Runner(lambda: ch.take(timeout=JOIN))
    time.sleep(SETTLE)
    assert not taker.done.is_set()
    # A taker is waiting, so even a polling put succeeds: it hands the value over.
    ch.put(42, timeout=0)
    assert taker.join() == 42


def test_rendezvous_poll_without_partner_times_out() -> None:
    ch = Channel(0)
    with pytest.raises(TimeoutError):
        ch.put(1, timeout=0)
    with pytest.raises(TimeoutError):
        ch.take(timeout=0)
    assert not ch.isready()


def test_rendezvous_fetch_peeks_at_offered_value() -> None:
    ch = Channel(0)
    fetcher = Runner(lambda: ch.fetch(timeout=JOIN))
    time.sleep(SETTLE)
    assert not fetcher.done.is_set()
    putter = Runner(lambda: ch.put("peek", timeout=JOIN))
    assert fetcher.join() == "peek"
    # fetch did not take it: the putter is still blocked and the value still offered.
    time.sleep(SETTLE)
    assert not putter.done.is_set()
    assert ch.fetch(timeout=0) == "peek"
    ch.wait(timeout=0)
    assert ch.take(timeout=JOIN) == "peek"
    putter.join()


def test_rendezvous_fifo_among_blocked_putters() -> None:
    ch = Channel(0)
    putters = []
    for i in range(5):
        putters.append(Runner(ch.put, i, timeout=JOIN))
        wait_until(lambda: ch.n_avail() == len(putters))
    assert [ch.take(timeout=JOIN) for _ in range(5)] == [0, 1, 2, 3, 4]
    for p in putters:
        p.join()


def test_rendezvous_timed_out_put_is_never_delivered() -> None:
    ch = Channel(0)
    with pytest.raises(TimeoutError):
        ch.put("stale", timeout=SETTLE)
    assert not ch.isready()
    taker = Runner(lambda: ch.take(timeout=JOIN))
    time.sleep(SETTLE)
    ch.put("fresh", timeout=JOIN)
    assert taker.join() == "fresh"
    with pytest.raises(TimeoutError):
        ch.take(timeout=0)


def test_rendezvous_timed_out_put_in_thread_is_never_delivered() -> None:
    ch = Channel(0)
    putter = Runner(lambda: ch.put("stale", timeout=0.1))
    with pytest.raises(TimeoutError):
        putter.join()
    with pytest.raises(TimeoutError):
        ch.take(timeout=SETTLE)


def test_rendezvous_timed_out_take_leaves_no_request_behind() -> None:
    ch = Channel(0)
    with pytest.raises(TimeoutError):
        ch.take(timeout=SETTLE)
    # A stale request would swallow this value; instead the put has no partner.
    with pytest.raises(TimeoutError):
        ch.put("x", timeout=0)


# -- bounded and unbounded buffers -----------------------------------------------------------


def test_bounded_put_blocks_while_full() -> None:
    ch = Channel(2)
    ch.put(1, timeout=0)
    ch.put(2, timeout=0)
    assert ch.n_avail() == 2
    with pytest.raises(TimeoutError):
        ch.put(3, timeout=SETTLE)
    putter = Runner(lambda: ch.put(3, timeout=JOIN))
    time.sleep(SETTLE)
    assert not putter.done.is_set()
    assert ch.take(timeout=0) == 1
    putter.join()
    assert [ch.take(timeout=0), ch.take(timeout=0)] == [2, 3]


def test_bounded_fetch_and_wait_do_not_remove() -> None:
    ch = Channel(3)
    ch.put("a")
    ch.put("b")
    assert ch.fetch(timeout=0) == "a"
    ch.wait(timeout=0)
    assert ch.n_avail() == 2
    assert ch.take() == "a"


def test_wait_and_fetch_block_until_put() -> None:
    ch = Channel(1)
    waiter = Runner(lambda: ch.wait(timeout=JOIN))
    fetcher = Runner(lambda: ch.fetch(timeout=JOIN))
    time.sleep(SETTLE)
    assert not waiter.done.is_set() and not fetcher.done.is_set()
    ch.put("x")
    assert waiter.join() is None
    assert fetcher.join() == "x"
    assert ch.isready()


def test_unbounded_never_blocks_put() -> None:
    ch = Channel(math.inf)
    for i in range(10_000):
        ch.put(i, timeout=0)
    assert ch.n_avail() == 10_000
    assert [ch.take(timeout=0) for _ in range(10_000)] == list(range(10_000))
    assert not ch.isready()


@pytest.mark.parametrize("size", [1, 3, math.inf])
def test_fifo_order(size: Any) -> None:
    ch = Channel(size)
    out: list[int] = []
    consumer = Runner(lambda: out.extend(ch))
    for i in range(500):
        ch.put(i, timeout=JOIN)
    ch.close()
    consumer.join()
    assert out == list(range(500))


# -- close -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, math.inf])
def test_put_after_close_raises(size: Any) -> None:
    ch = Channel(size)
    ch.close()
    ch.close()  # idempotent
    assert not ch.isopen()
    with pytest.raises(ChannelClosedError):
        ch.put(1, timeout=0)
    for op in (ch.take, ch.fetch, ch.wait):
        with pytest.raises(ChannelClosedError):
            op(timeout=0)


def test_closed_channel_drains_buffer_then_raises() -> None:
    ch = Channel(3)
    ch.put(1)
    ch.put(2)
    ch.close()
    assert ch.isready()
    assert ch.fetch(timeout=0) == 1
    ch.wait(timeout=0)
    assert ch.take(timeout=0) == 1
    assert ch.take(timeout=JOIN) == 2
    for op in (ch.take, ch.fetch, ch.wait):
        with pytest.raises(ChannelClosedError):
            op(timeout=JOIN)


@pytest.mark.parametrize("size", [0, 1, math.inf])
def test_close_wakes_blocked_take_fetch_wait(size: Any) -> None:
    ch = Channel(size)
    blocked = [Runner(op, timeout=JOIN) for op in (ch.take, ch.fetch, ch.wait)]
    time.sleep(SETTLE)
    assert not any(r.done.is_set() for r in blocked)
    ch.close()
    for r in blocked:
        with pytest.raises(ChannelClosedError):
            r.join()


def test_close_wakes_blocked_rendezvous_put_and_withdraws_value() -> None:
    ch = Channel(0)
    putter = Runner(lambda: ch.put("lost", timeout=JOIN))
    wait_until(ch.isready)
    ch.close()
    with pytest.raises(ChannelClosedError):
        putter.join()
    assert not ch.isready()
    with pytest.raises(ChannelClosedError):
        ch.take(timeout=0)


def test_close_wakes_blocked_bounded_put() -> None:
    ch = Channel(1)
    ch.put("kept")
    putter = Runner(lambda: ch.put("lost", timeout=JOIN))
    time.sleep(SETTLE)
    ch.close()
    with pytest.raises(ChannelClosedError):
        putter.join()
    assert list(ch) == ["kept"]


def test_close_then_take_does_not_let_blocked_put_through() -> None:
    # Room appears after close: the blocked put must still fail.
    ch = Channel(1)
    ch.put("kept")
    putter = Runner(lambda: ch.put("lost", timeout=JOIN))
    time.sleep(SETTLE)
    with ch._lock:  # close and take atomically, before the putter can run
        ch.close()
        assert ch.take(timeout=0) == "kept"
    with pytest.raises(ChannelClosedError):
        putter.join()
    assert not ch.isready()


def test_iteration_ends_on_close() -> None:
    ch = Channel(0)
    out: list[Any] = []
    consumer = Runner(lambda: out.extend(ch))
    for i in range(3):
        ch.put(i, timeout=JOIN)
    time.sleep(SETTLE)
    assert not consumer.done.is_set()
    ch.close()
    consumer.join()
    assert out == [0, 1, 2]


# -- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["take", "fetch", "wait"])
def test_timeouts_on_empty_channel(op: str) -> None:
    ch = Channel(1)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        getattr(ch, op)(timeout=0.1)
    assert 0.09 <= time.monotonic() - start < 2.0


@pytest.mark.parametrize("op", ["take", "fetch", "wait"])
def test_negative_timeout_polls(op: str) -> None:
    # as 0 does (threading's waits take a negative timeout so: a deadline may have passed)
    ch = Channel(1)
    with pytest.raises(TimeoutError):
        getattr(ch, op)(timeout=-5)
    ch.put(1, timeout=-1)
    getattr(ch, op)(timeout=-1)
    with pytest.raises(TimeoutError):
        Channel(0).put(1, timeout=-1)


@pytest.mark.parametrize("op", ["take", "fetch", "wait"])
def test_zero_timeout_polls(op: str) -> None:
    ch = Channel(1)
    with pytest.raises(TimeoutError, match=f"Channel.{op} timed out after 0 s"):
        getattr(ch, op)(timeout=0)
    ch.put(1, timeout=0)
    getattr(ch, op)(timeout=0)
    with pytest.raises(TimeoutError):
        Channel(0).put(1, timeout=0)


@pytest.mark.parametrize("op", ["put", "take", "fetch", "wait"])
@pytest.mark.parametrize(
    ("timeout", "error"),
    [("1", TypeError), (True, TypeError), (math.nan, ValueError)],
)
def test_a_bad_timeout_is_refused_before_anything_is_done(
    op: str, timeout: Any, error: type[Exception]
) -> None:
    ch = Channel(1)
    ch.put("there")
    args = ("more",) if op == "put" else ()
    with pytest.raises(error, match=r"^timeout must be a number of seconds"):
        getattr(ch, op)(*args, timeout=timeout)
    with pytest.raises(error, match=r"^timeout must be a number of seconds"):
        getattr(pydistributed, op)(ch, *args, timeout=timeout)
    assert ch.take(timeout=0) == "there" and not ch.isready()  # nothing put, nothing taken


def test_a_timeout_is_printed_with_at_most_three_decimals() -> None:
    with pytest.raises(TimeoutError, match=r"Channel.wait timed out after 0\.05 s$"):
        Channel(1).wait(timeout=0.04999850400199648)


def test_value_arriving_before_deadline_is_taken() -> None:
    ch = Channel(1)
    timer = threading.Timer(SETTLE, ch.put, args=("late",))
    timer.start()
    try:
        assert ch.take(timeout=JOIN) == "late"
    finally:
        timer.cancel()


def test_infinite_timeout_means_forever() -> None:
    ch = Channel(1)
    ch.put(1, timeout=math.inf)
    assert ch.take(timeout=math.inf) == 1


# -- interrupted waiters ---------------------------------------------------------------------


class Injected(Exception):
    pass


def inject(thread: threading.Thread) -> None:
    """Raise ``Injected`` asynchronously in ``thread`` (delivered when it next runs Python)."""
    assert thread.ident is not None
    n = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(Injected)
    )
    assert n == 1


def test_interrupted_rendezvous_put_withdraws_value() -> None:
    ch = Channel(0)
    putter = Runner(lambda: ch.put("interrupted", timeout=JOIN))
    wait_until(ch.isready)
    inject(putter.thread)
    with ch._lock:  # a spurious wakeup lets the thread run, so the exception is delivered
        cond = ch._offers[0].cond
        assert cond is not None
        cond.notify()
    with pytest.raises(Injected):
        putter.join()
    assert not ch.isready()
    with pytest.raises(TimeoutError):
        ch.take(timeout=SETTLE)


def test_interrupted_rendezvous_take_leaves_no_request() -> None:
    ch = Channel(0)
    taker = Runner(lambda: ch.take(timeout=JOIN))
    wait_until(lambda: len(ch._requests) == 1)
    inject(taker.thread)
    with ch._lock:
        ch._requests[0].cond.notify()
    with pytest.raises(Injected):
        taker.join()
    assert not ch._requests
    # A stale request would swallow this value; instead the put finds no partner.
    with pytest.raises(TimeoutError):
        ch.put("x", timeout=0)


def test_taker_interrupted_after_receiving_hands_value_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An interrupt that lands just as the taker wakes up with a value already handed to it:
    # the value goes back to the front of the channel instead of being lost.
    ch = Channel(0)
    real_wait = channels._wait

    def wait_then_interrupt(*args: Any) -> None:
        real_wait(*args)
        if threading.current_thread() is taker.thread:
            raise Injected

    monkeypatch.setattr(channels, "_wait", wait_then_interrupt)
    taker = Runner(lambda: ch.take(timeout=JOIN))
    wait_until(lambda: len(ch._requests) == 1)
    ch.put("handed", timeout=0)  # fills the waiting taker's request and returns
    with pytest.raises(Injected):
        taker.join()
    assert ch.isready()
    assert ch.fetch(timeout=0) == "handed"
    assert ch.take(timeout=0) == "handed"
    assert not ch.isready()


def test_taker_interrupted_after_receiving_hands_value_to_next_taker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ch = Channel(0)
    real_wait = channels._wait
    first: list[Runner] = []

    def wait_then_interrupt(*args: Any) -> None:
        real_wait(*args)
        if first and threading.current_thread() is first[0].thread:
            raise Injected

    monkeypatch.setattr(channels, "_wait", wait_then_interrupt)
    first.append(Runner(lambda: ch.take(timeout=JOIN)))
    wait_until(lambda: len(ch._requests) == 1)
    second = Runner(lambda: ch.take(timeout=JOIN))
    wait_until(lambda: len(ch._requests) == 2)
    ch.put("handed", timeout=0)
    with pytest.raises(Injected):
        first[0].join()
    assert second.join() == "handed"


def test_interrupted_bounded_taker_passes_wakeup_on() -> None:
    ch = Channel(1)
    first = Runner(lambda: ch.take(timeout=JOIN))
    wait_until(lambda: len(ch._not_empty._waiters) == 1)  # type: ignore[attr-defined]
    second = Runner(lambda: ch.take(timeout=JOIN))
    wait_until(lambda: len(ch._not_empty._waiters) == 2)  # type: ignore[attr-defined]
    inject(first.thread)
    start = time.monotonic()
    ch.put("v")  # notify() wakes the first taker, which is interrupted
    with pytest.raises(Injected):
        first.join()
    assert second.join() == "v"
    assert time.monotonic() - start < JOIN / 2  # woken by the passed-on notify, not a timeout


# -- concurrency -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 16, math.inf])
def test_many_producers_and_consumers(size: Any) -> None:
    ch = Channel(size)
    n_producers, n_items, n_consumers = 4, 2000, 3
    received: list[list[Any]] = [[] for _ in range(n_consumers)]

    def produce(p: int) -> None:
        for i in range(n_items):
            ch.put((p, i), timeout=JOIN)

    def consume(c: int) -> None:
        while True:
            try:
                received[c].append(ch.take(timeout=JOIN))
            except ChannelClosedError:
                return

    consumers = [Runner(consume, c) for c in range(n_consumers)]
    producers = [Runner(produce, p) for p in range(n_producers)]
    for producer in producers:
        producer.join()
    ch.close()
    for c in consumers:
        c.join()

    counts = Counter(v for r in received for v in r)
    expected = {(p, i) for p in range(n_producers) for i in range(n_items)}
    assert set(counts) == expected
    assert all(n == 1 for n in counts.values())
    # Each consumer sees each producer's values in the order they were put.
    for r in received:
        for p in range(n_producers):
            seq = [i for (q, i) in r if q == p]
            assert seq == sorted(seq)


def test_concurrent_timeouts_never_lose_or_duplicate() -> None:
    # Rendezvous puts and takes with short timeouts racing each other: every put that
    # returned normally was taken exactly once, and no timed-out put was ever taken.
    ch = Channel(0)
    delivered: list[Any] = []
    taken: list[Any] = []
    lock = threading.Lock()
    stop = threading.Event()

    def produce(p: int) -> None:
        for i in range(300):
            try:
                ch.put((p, i), timeout=0.001)
            except TimeoutError:
                continue
            with lock:
                delivered.append((p, i))

    def consume() -> None:
        while not stop.is_set():
            try:
                v = ch.take(timeout=0.001)
            except TimeoutError:
                continue
            with lock:
                taken.append(v)

    consumers = [Runner(consume) for _ in range(2)]
    producers = [Runner(produce, p) for p in range(3)]
    for p in producers:
        p.join()
    stop.set()
    for c in consumers:
        c.join()
    assert sorted(taken) == sorted(delivered)
    assert len(set(taken)) == len(taken)


def test_put_now_and_take_now_never_wait() -> None:
    # the owner's reading thread runs these (refops._at_once): all or nothing, at once
    ch: Channel[Any] = Channel(2)
    assert ch._put_now([1, 2])
    assert not ch._put_now([3])  # full: nothing put
    assert ch._take_now(lambda v: v != 1, lambda v: v) is None  # not "small": stays
    assert ch._take_now(lambda v: True, lambda v: ("copy", v)) == ("copy", 1)
    assert not ch._put_now([3, 4])  # room for one only: nothing put
    assert ch.take(timeout=1) == 2
    assert ch._take_now(lambda v: True, lambda v: v) is None  # empty
    ch.close()
    assert not ch._put_now([5])  # closed: the usual way raises
    rendezvous: Channel[Any] = Channel(0)
    assert not rendezvous._put_now([1])
    assert rendezvous._take_now(lambda v: True, lambda v: v) is None


def test_put_now_does_not_overtake_a_waiting_putter() -> None:
    ch: Channel[Any] = Channel(1)
    ch.put(0)
    t = threading.Thread(target=ch.put, args=(1,), kwargs={"timeout": 10})
    t.start()
    deadline = time.monotonic() + 10
    while not ch._room_waiters and time.monotonic() < deadline:
        time.sleep(0.001)
    assert ch.take(timeout=1) == 0
    assert not ch._put_now([2])  # the room is the waiting putter's
    t.join(10)
    assert ch.take(timeout=1) == 1


def test_take_now_leaves_a_value_to_a_taker_that_waits() -> None:
    """The at-once take (the owner's reading thread) does not take the value a blocked
    take was woken for: that taker gets it, and the at-once take answers 'not now'."""
    import threading
    import time

    from pydistributed.channels import Channel

    ch: Channel[int] = Channel(4)
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(ch.take(timeout=10)), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while ch._takers == 0:  # the taker waits
        assert time.monotonic() < deadline
        time.sleep(0.001)
    ch.put(7)
    none = object()
    assert ch._take_now(lambda v: True, lambda v: v, none) is none
    t.join(10)
    assert got == [7]
