"""One connection (``peer.Peer``) over a real ``socket.socketpair()``: no processes.

Each side is a ``Peer`` on ``sockets.socket_streams`` (or a raw socket, to play a broken or
vanishing other side); what a reader hands on is recorded by an :class:`Inbox`.
"""

from __future__ import annotations

import logging
import operator
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pydistributed import codec, sockets, transport
from pydistributed.errors import ProcessExitedException
from pydistributed.messages import CallFetch, Identify, Interrupt, Message, Result
from pydistributed.peer import Peer, ResponseSlot

WAIT = 10.0


class Inbox:
    """The callbacks of one Peer: messages (with the thread that read them), decode errors
    and closes. A ``Result`` also fills the slot of its response id in ``peer.pending``."""

    def __init__(self) -> None:
        self.messages: queue.Queue[tuple[threading.Thread, Message]] = queue.Queue()
        self.errors: queue.Queue[codec.DecodeError] = queue.Queue()
        self.closes: list[str] = []
        self.closed = threading.Event()

    def on_message(self, peer: Peer, msg: Message) -> None:
        self.messages.put((threading.current_thread(), msg))
        if isinstance(msg, Result):  # fill the caller's slot, as the dispatcher does
            slot = peer.pending.pop(msg.response_id, None)
            if slot is not None:
                slot.set(msg.ok, msg.value)

    def on_decode_error(self, peer: Peer, err: codec.DecodeError) -> None:
        self.errors.put(err)

    def on_close(self, peer: Peer, reason: str) -> None:
        self.closes.append(reason)
        self.closed.set()

    def next_message(self) -> Message:
        return self.messages.get(timeout=WAIT)[1]

    def start(self, peer: Peer) -> None:
        peer.start(self.on_message, self.on_decode_error, self.on_close)


def _peer(sock: socket.socket, pid: int) -> Peer:
    reader, writer = sockets.socket_streams(sock)
    return Peer(reader, writer, pid, sock=sock)


def _stop(peer: Peer) -> None:
    peer.close("test over")
    if peer.thread is not None and peer.thread is not threading.current_thread():
        peer.thread.join(WAIT)
        assert not peer.thread.is_alive()


@pytest.fixture
def pair() -> Iterator[tuple[Peer, Inbox, Peer, Inbox]]:
    """Two started peers, each the other's process: ``a`` talks to pid 2, ``b`` to pid 1."""
    sa, sb = socket.socketpair()
    a, b = _peer(sa, 2), _peer(sb, 1)
    ia, ib = Inbox(), Inbox()
    ia.start(a)
    ib.start(b)
    yield a, ia, b, ib
    _stop(a)
    _stop(b)


@pytest.fixture
def half() -> Iterator[tuple[Peer, Inbox, socket.socket]]:
    """A started peer (to pid 2) whose other end is a raw socket the test writes by hand."""
    mine, raw = socket.socketpair()
    raw.settimeout(WAIT)
    peer = _peer(mine, 2)
    inbox = Inbox()
    inbox.start(peer)
    yield peer, inbox, raw
    _stop(peer)
    raw.close()


def _refuse_to_load() -> Any:
    raise RuntimeError("this value cannot be unpickled here")


class Unloadable:
    """Pickles fine; unpickling it raises (a class the receiver 'does not have')."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_to_load, ())


# -- messages ------------------------------------------------------------------------------


def test_a_message_sent_on_one_side_arrives_on_the_other(
    pair: tuple[Peer, Inbox, Peer, Inbox],
) -> None:
    a, ia, b, ib = pair
    a.send(Result(7, True, {"x": [1, 2, 3]}))
    assert ib.next_message() == Result(7, True, {"x": [1, 2, 3]})
    b.send(Interrupt())  # a message with no body
    assert ia.next_message() == Interrupt()
    b.send(CallFetch(9, operator.add, (1, 2), {}))
    got = ia.next_message()
    assert isinstance(got, CallFetch) and got.response_id == 9
    assert got.f(*got.args) == 3


def test_messages_arrive_in_order_with_large_buffers(
    pair: tuple[Peer, Inbox, Peer, Inbox],
) -> None:
    a, _, _, ib = pair
    big = bytearray(range(256)) * (8 << 10)  # 2 MiB: travels out of band, read into mmap
    for i in range(20):
        a.send(Result(i, True, big if i % 5 == 0 else i))
    for i in range(20):
        msg = ib.next_message()
        assert isinstance(msg, Result) and msg.response_id == i
        if i % 5 == 0:
            assert bytes(msg.value) == bytes(big)
        else:
            assert msg.value == i


def test_the_reader_thread_is_named_and_daemonic(pair: tuple[Peer, Inbox, Peer, Inbox]) -> None:
    a, ia, b, _ = pair
    assert a.thread is not None and a.thread.daemon and a.thread.name == "pydist-reader-2"
    b.send(Identify(1))
    thread, _ = ia.messages.get(timeout=WAIT)
    assert thread is a.thread  # nobody asked for the reading role: the reader thread reads


def test_an_undecodable_body_goes_to_on_decode_error_and_the_connection_stays_up(
    pair: tuple[Peer, Inbox, Peer, Inbox],
) -> None:
    a, _, b, ib = pair
    a.send(CallFetch(42, operator.add, (Unloadable(), 1), {}))
    err = ib.errors.get(timeout=WAIT)
    assert isinstance(err, codec.DecodeError)
    assert err.tag == CallFetch.TAG and err.header == {"response_id": 42}
    assert isinstance(err.cause, RuntimeError)
    assert "cannot be unpickled here" in str(err)
    # the stream is still in step: the next message arrives, both ways
    a.send(Result(43, True, "after"))
    assert ib.next_message() == Result(43, True, "after")
    b.send(Result(44, True, "back"))
    assert pair[1].next_message() == Result(44, True, "back")
    assert not a.closed and not b.closed
    assert ib.messages.empty() and ib.closes == []


def test_an_unpicklable_message_is_not_sent_and_the_connection_is_fine(
    pair: tuple[Peer, Inbox, Peer, Inbox],
) -> None:
    a, _, _, ib = pair
    with pytest.raises(TypeError):
        a.send(Result(1, True, threading.Lock()))
    assert not a.closed
    a.send(Result(2, True, "fine"))
    assert ib.next_message() == Result(2, True, "fine")


# -- closing -------------------------------------------------------------------------------


@pytest.mark.parametrize("removing", [False, True])
def test_close_wakes_every_pending_slot(
    pair: tuple[Peer, Inbox, Peer, Inbox], removing: bool
) -> None:
    a, ia, _, ib = pair
    slots = {rid: ResponseSlot() for rid in (1, 2, 3)}
    a.pending.update(slots)
    woke: queue.Queue[bool] = queue.Queue()
    waiters = [
        threading.Thread(target=lambda s=s: woke.put(s.wait(WAIT)), daemon=True)
        for s in slots.values()
    ]
    for t in waiters:
        t.start()
    a.removing = removing
    a.close("going away")
    for t in waiters:
        t.join(WAIT)
        assert not t.is_alive()
    assert [woke.get_nowait() for _ in waiters] == [True, True, True]
    assert a.pending == {}
    for slot in slots.values():
        assert slot.is_set() and not slot.ok
        exc = slot.value
        assert isinstance(exc, ProcessExitedException)
        assert exc.worker_id == 2 and exc.reason == "going away"
        assert exc.removed is removing
    assert ia.closed.wait(WAIT) and ia.closes == ["going away"]
    assert a.closed and a.close_reason == "going away"
    # a send on the closed connection says the same
    with pytest.raises(ProcessExitedException) as info:
        a.send(Identify(1))
    assert info.value.worker_id == 2 and info.value.removed is removing
    # the other side saw the end of the stream
    assert ib.closed.wait(WAIT) and ib.closes == ["connection closed"]


def test_eof_from_the_other_side_calls_on_close_once(
    half: tuple[Peer, Inbox, socket.socket],
) -> None:
    peer, inbox, raw = half
    slot = ResponseSlot()
    peer.pending[5] = slot
    raw.shutdown(socket.SHUT_WR)  # the other process is gone: end of stream
    assert inbox.closed.wait(WAIT)
    assert peer.thread is not None
    peer.thread.join(WAIT)
    assert not peer.thread.is_alive()
    assert peer.closed and inbox.closes == ["connection closed"]
    assert slot.wait(WAIT) and isinstance(slot.value, ProcessExitedException)
    assert slot.value.reason == "connection closed" and not slot.value.removed
    peer.close("again")  # already closed: nobody is told twice
    assert inbox.closes == ["connection closed"] and peer.close_reason == "connection closed"


def test_eof_in_the_middle_of_a_message(half: tuple[Peer, Inbox, socket.socket]) -> None:
    _, inbox, raw = half
    raw.sendall(struct.pack("!I", 2) + struct.pack("!2Q", 25, 100) + b"x" * 30)
    raw.shutdown(socket.SHUT_WR)
    assert inbox.closed.wait(WAIT)
    assert inbox.closes == ["connection closed in the middle of a message"]
    assert inbox.messages.empty() and inbox.errors.empty()


def _header(tag: int) -> bytes:
    return struct.pack("!Bqqq", tag, 0, 0, 0)


def _no_frames(raw: socket.socket) -> None:
    raw.sendall(struct.pack("!I", 0))


def _too_many_frames(raw: socket.socket) -> None:
    raw.sendall(struct.pack("!I", transport.MAX_FRAMES + 1))


def _over_the_guard(raw: socket.socket) -> None:
    raw.sendall(struct.pack("!I", 1) + struct.pack("!Q", 1 << 40))  # claims a terabyte


def _unknown_tag(raw: socket.socket) -> None:
    transport.SocketWriter(raw).write_frames([_header(200), b""])  # framing fine, tag not


def _short_header(raw: socket.socket) -> None:
    transport.SocketWriter(raw).write_frames([b"\x09" * 7, b""])  # framing fine, header not


@pytest.mark.parametrize(
    "garble", [_no_frames, _too_many_frames, _over_the_guard, _unknown_tag, _short_header]
)
def test_a_garbled_frame_closes_the_connection_with_a_protocol_error(
    half: tuple[Peer, Inbox, socket.socket],
    garble: Callable[[socket.socket], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pydistributed.peer")
    peer, inbox, raw = half
    slot = ResponseSlot()
    peer.pending[1] = slot
    transport.SocketWriter(raw).write_frames([_header(Interrupt.TAG), b""])  # one good message
    garble(raw)
    assert inbox.next_message() == Interrupt()
    assert inbox.closed.wait(WAIT)
    assert len(inbox.closes) == 1 and inbox.closes[0].startswith("protocol error: ")
    assert peer.closed and peer.close_reason == inbox.closes[0]
    assert slot.wait(WAIT) and isinstance(slot.value, ProcessExitedException)
    assert slot.value.reason.startswith("protocol error: ")
    assert inbox.errors.empty()  # not a body problem: the stream itself is broken
    assert any(
        r.levelno == logging.WARNING and "dropping the connection to process 2" in r.getMessage()
        for r in caplog.records
    )
    # the other side sees its connection end
    assert raw.recv(1) == b""


def test_a_peer_closed_before_it_starts_reports_at_once() -> None:
    sa, sb = socket.socketpair()
    peer = _peer(sa, 3)
    try:
        peer.close("never started")
        inbox = Inbox()
        inbox.start(peer)
        assert inbox.closes == ["never started"]
        assert peer.thread is None
    finally:
        sb.close()


# -- the reading role ----------------------------------------------------------------------


def test_read_until_lets_the_caller_read_its_own_answer(
    pair: tuple[Peer, Inbox, Peer, Inbox],
) -> None:
    a, ia, b, _ = pair
    slot = ResponseSlot()
    a.pending[11] = slot
    sent: list[bool] = []

    def done() -> bool:
        # asked on the caller's thread once it holds, or waits for, the reading role: only
        # now does the answer go out, so no other thread can have read it before
        if not sent:
            sent.append(True)
            b.send(Result(11, True, "for the caller"))
        return slot.is_set()

    out: list[Any] = []

    def caller() -> None:
        out.append(a.read_until(done))

    t = threading.Thread(target=caller, name="the-caller", daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive()
    assert out == [True]
    assert slot.is_set() and slot.ok and slot.value == "for the caller"
    thread, msg = ia.messages.get(timeout=WAIT)
    assert msg == Result(11, True, "for the caller")
    assert thread is t  # read on the caller's thread: no hand-off
    # the reader thread takes the role back: later messages still arrive
    b.send(Identify(12))
    thread, msg = ia.messages.get(timeout=WAIT)
    assert msg == Identify(12)
    assert a.thread is not None and a.thread.is_alive() and not a.closed


def test_read_until_many_callers_each_get_their_answer(
    pair: tuple[Peer, Inbox, Peer, Inbox],
) -> None:
    a, _, b, _ = pair
    n = 8
    slots = {rid: ResponseSlot() for rid in range(n)}
    a.pending.update(slots)
    results: queue.Queue[Any] = queue.Queue()

    def caller(rid: int) -> None:
        b.send(Result(rid, True, rid * 10))
        a.read_until(slots[rid].is_set)  # False (another reads) or True: wait on the slot
        results.put(slots[rid].value if slots[rid].wait(WAIT) else None)

    threads = [threading.Thread(target=caller, args=(rid,), daemon=True) for rid in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert sorted(results.get_nowait() for _ in range(n)) == [rid * 10 for rid in range(n)]
    assert not a.closed


def test_read_until_refuses_when_nobody_reads_or_the_peer_is_closed() -> None:
    sa, sb = socket.socketpair()
    peer = _peer(sa, 2)
    try:
        assert peer.read_until(lambda: False) is False  # not started: no reader to share with
    finally:
        peer.close("done")
        sb.close()
    assert peer.read_until(lambda: False) is False  # closed


def test_read_until_returns_when_the_connection_closes(
    half: tuple[Peer, Inbox, socket.socket],
) -> None:
    peer, inbox, raw = half
    slot = ResponseSlot()
    peer.pending[1] = slot
    shut: list[bool] = []

    def done() -> bool:
        if not shut:
            shut.append(True)
            raw.shutdown(socket.SHUT_WR)  # the answer never comes: the stream ends
        return slot.is_set()

    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(peer.read_until(done)), daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive() and out == [True]
    assert slot.wait(WAIT) and isinstance(slot.value, ProcessExitedException)
    assert inbox.closed.wait(WAIT) and inbox.closes == ["connection closed"]


# -- response slots ------------------------------------------------------------------------


def test_response_slot() -> None:
    slot = ResponseSlot()
    assert not slot.is_set()
    assert slot.wait(0) is False
    assert slot.wait(0.01) is False
    slot.set(True, "v")
    assert slot.is_set() and slot.wait(0) and slot.wait(None)
    assert slot.ok and slot.value == "v"
