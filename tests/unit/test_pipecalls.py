"""A pipelined map's stream (``pipecalls``) over a real connection, with real parts: no processes.

The running side is "worker 2": a ``Dispatcher`` (and its ``SerialQueues``) behind one end of a
``socket.socketpair()``. The other end is "the master": a ``Peer`` with a ``StreamSlot``
registered in its ``pending`` under the stream id, which collects the outcomes that come back.
Messages travel as bytes, so everything is pickled and unpickled.
"""

from __future__ import annotations

import itertools
import pickle
import queue
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import sockets
from pydistributed.dispatch import Dispatcher
from pydistributed.errors import CapturedException, ProcessExitedException
from pydistributed.execution import Executor
from pydistributed.messages import MapCalls, MapCancel, MapResults, Message
from pydistributed.peer import Peer
from pydistributed.pipecalls import DROPPED, FLUSH_COUNT, StreamSlot, new_stream_id
from pydistributed.pipeline import MAX_WINDOW, next_window
from pydistributed.refstore import RefStore
from pydistributed.registry import Registry

WAIT = 10.0
STREAM = new_stream_id()

RAN: list[tuple[int, int, float, float]] = []  # (x, thread, start, end), run by record()
GATE = threading.Event()


def record(x: int) -> int:
    t0 = time.perf_counter()
    time.sleep(0.0005)
    RAN.append((x, threading.get_ident(), t0, time.perf_counter()))
    return x


def wait_at_gate(x: int) -> int:
    if not GATE.wait(WAIT):
        raise TimeoutError("the gate stayed shut")
    return x


def double(x: int) -> int:
    return 2 * x


def nap(x: int) -> int:
    time.sleep(0.005)
    return x


class Unpicklable:
    """Pickles fine, fails to unpickle (on the worker)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse, ())


def _refuse() -> None:
    raise ValueError("refused on arrival")


def _ignore(*args: Any) -> None:
    pass


class Link:
    def __init__(self) -> None:
        a, b = socket.socketpair()
        self.executor = Executor(use_main_thread=False, owner=self)
        self.dispatcher = Dispatcher(Registry(2, "worker"), RefStore(), self.executor)
        self.server = Peer(*sockets.socket_streams(a), pid=1, sock=a, owner=self)
        self.client = Peer(*sockets.socket_streams(b), pid=2, sock=b)
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.slot = StreamSlot(self.events.put, "lane")
        self.client.pending[STREAM] = self.slot
        self.server.start(self.dispatcher.on_message, self.dispatcher.on_decode_error, _ignore)
        self.client.start(self._on_message, self.dispatcher.on_decode_error, _ignore)

    def _on_message(self, peer: Peer, msg: Message) -> None:
        if isinstance(msg, MapResults):  # as the caller's dispatcher does
            slot = peer.pending.get(msg.stream)
            assert isinstance(slot, StreamSlot)
            slot.deliver(msg)

    def outcomes(self, n: int) -> list[tuple[Any, ...]]:
        """The next events until ``n`` outcomes have come."""
        got: list[tuple[Any, ...]] = []
        while sum(e[2] for e in got) < n:
            got.append(self.events.get(timeout=WAIT))
        return got

    def close(self) -> None:
        for peer in (self.client, self.server):
            peer.close("test over")
            assert peer.thread is not None
            peer.thread.join(WAIT)


@pytest.fixture
def link() -> Iterator[Link]:
    lk = Link()
    yield lk
    lk.close()


def _flat(events: list[tuple[Any, ...]]) -> list[tuple[int, int, Any]]:
    """(seq, ok, value) of every outcome, checking that each message is a run of numbers."""
    out = []
    for lane, first, count, oks, values, _ in events:
        assert lane == "lane"
        assert len(oks) == len(values) == count
        out += [(first + i, oks[i], values[i]) for i in range(count)]
    return out


def test_quick_elements_come_back_several_to_a_message(link: Link) -> None:
    n = 500
    link.client.send(MapCalls(STREAM, 0, n, double, [(x,) for x in range(n)]))
    events = link.outcomes(n)
    assert _flat(events) == [(x, 1, 2 * x) for x in range(n)]
    assert len(events) < n / 4, len(events)  # coalesced
    assert max(e[2] for e in events) <= FLUSH_COUNT


def test_elements_run_one_after_another_in_arrival_order(link: Link) -> None:
    RAN.clear()
    link.client.send(MapCalls(STREAM, 0, 30, record, [(x,) for x in range(30)]))
    link.client.send(MapCalls(STREAM, 30, 30, record, [(x,) for x in range(30, 60)]))
    assert [v for _, _, v in _flat(link.outcomes(60))] == list(range(60))
    assert [x for x, _, _, _ in RAN] == list(range(60))  # in arrival order
    spans = sorted((a, b) for _, _, a, b in RAN)
    assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))  # no overlap


def test_slow_elements_are_sent_one_by_one(link: Link) -> None:
    link.client.send(MapCalls(STREAM, 0, 5, nap, [(x,) for x in range(5)]))
    events = link.outcomes(5)
    assert [e[2] for e in events] == [1] * 5  # none waits for the next one to finish
    assert all(e[5] >= 0.004 for e in events)  # how long each ran, reported


def test_cancel_drops_the_elements_not_started(link: Link) -> None:
    GATE.clear()
    try:
        link.client.send(MapCalls(STREAM, 0, 10, wait_at_gate, [(x,) for x in range(10)]))
        time.sleep(0.1)  # the first one waits at the gate
        link.client.send(MapCancel(STREAM))
        time.sleep(0.1)
    finally:
        GATE.set()
    got = _flat(link.outcomes(10))
    assert got[0] == (0, 1, 0)
    assert got[1:] == [(x, DROPPED, None) for x in range(1, 10)]


def test_elements_that_cannot_be_unpickled_fail_in_their_turn(link: Link) -> None:
    link.client.send(MapCalls(STREAM, 0, 2, double, [(1,), (2,)]))
    link.client.send(MapCalls(STREAM, 2, 2, double, [(Unpicklable(),), (3,)]))
    link.client.send(MapCalls(STREAM, 4, 1, double, [(4,)]))
    got = _flat(link.outcomes(5))
    assert [(s, ok) for s, ok, _ in got] == [(0, 1), (1, 1), (2, 0), (3, 0), (4, 1)]
    assert isinstance(got[2][2], CapturedException) and "refused on arrival" in str(got[2][2])


def test_a_value_that_cannot_be_pickled_is_answered_with_its_error(link: Link) -> None:
    link.client.send(MapCalls(STREAM, 0, 3, _lock_or, [(0,), (1,), (2,)]))
    got = _flat(link.outcomes(3))
    assert [(s, ok) for s, ok, _ in got] == [(0, 1), (1, 0), (2, 1)]
    assert isinstance(got[1][2], CapturedException)
    assert isinstance(got[1][2].exc, pickle.PicklingError)


def _lock_or(x: int) -> Any:
    return threading.Lock() if x == 1 else x


def test_the_connection_closing_reaches_the_stream(link: Link) -> None:
    link.server.close("gone")
    lane, first, count, _, value, _ = link.events.get(timeout=WAIT)
    assert (lane, first, count) == ("lane", -1, 0)
    assert isinstance(value, ProcessExitedException)


def test_window_rule() -> None:
    assert next_window(1, 300e-6, 60e-3) == 1  # slow elements: one at a time
    assert next_window(8, 300e-6, 60e-3) == 1  # and at once
    assert next_window(1, 300e-6, 1e-6) == 2  # quick: it grows, doubling...
    assert next_window(64, 300e-6, 1e-6) == 128
    assert next_window(MAX_WINDOW, 300e-6, 1e-7) == MAX_WINDOW  # ...up to the cap
    assert next_window(4, 300e-6, 300e-6) == 3  # an element as long as a round trip: 1 + 2
