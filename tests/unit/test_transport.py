"""Frames over real socket pairs: whole messages, large frames, the size guard."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest

from pydistributed import transport
from pydistributed.errors import ProtocolError


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair()


def test_round_trip_small_and_large_frames() -> None:
    a, b = _pair()
    reader = b.makefile("rb")
    big = os.urandom(3 << 20)
    frames = [b"h" * 25, b"body", big, b""]

    t = threading.Thread(target=transport.SocketWriter(a).write_frames, args=(frames,))
    t.start()
    got = transport.read_message(reader)
    t.join(10)
    assert [bytes(f) for f in got] == frames
    a.close()
    b.close()


def test_many_messages_in_a_row() -> None:
    a, b = _pair()
    reader = b.makefile("rb")
    w = transport.SocketWriter(a)
    for i in range(100):
        w.write_frames([struct.pack("!I", i), b"x" * i])
    for i in range(100):
        frames = transport.read_message(reader)
        assert struct.unpack("!I", frames[0])[0] == i and frames[1] == b"x" * i
    assert w.bytes_sent > 0
    a.close()
    b.close()


def test_eof_between_messages_and_inside_one() -> None:
    a, b = _pair()
    reader = b.makefile("rb")
    a.sendall(struct.pack("!I", 1) + struct.pack("!Q", 10) + b"abc")
    a.close()
    with pytest.raises(EOFError):
        transport.read_message(reader)
    a2, b2 = _pair()
    a2.close()
    with pytest.raises(EOFError):
        transport.read_message(b2.makefile("rb"))


def test_size_guard_refuses_before_allocating() -> None:
    a, b = _pair()
    reader = b.makefile("rb")
    # claims a terabyte: must be refused from the prefix alone
    a.sendall(struct.pack("!I", 1) + struct.pack("!Q", 1 << 40))
    with pytest.raises(ProtocolError, match="size guard"):
        transport.read_message(reader, limit=1 << 30)
    a.close()
    b.close()


def test_bad_frame_count() -> None:
    a, b = _pair()
    a.sendall(struct.pack("!I", 0))
    with pytest.raises(ProtocolError):
        transport.read_message(b.makefile("rb"))
    a.sendall(struct.pack("!I", transport.MAX_FRAMES + 1))
    a.close()
    b.close()


def test_sender_side_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_MAX_MESSAGE_BYTES", "2048")
    a, b = _pair()
    w = transport.SocketWriter(a)
    with pytest.raises(ProtocolError, match="size guard"):
        w.write_frames([b"x" * 4096])
    w.write_frames([b"ok"])  # nothing was written before; the stream is still in step
    assert transport.read_message(b.makefile("rb")) == [b"ok"]
    a.close()
    b.close()


def test_stream_writer_for_custom_transports() -> None:
    import io

    buf = io.BytesIO()
    w = transport.StreamWriter(buf)  # type: ignore[arg-type]
    w.write_frames([b"head", b"body"])
    buf.seek(0)
    assert transport.read_message(buf) == [b"head", b"body"]  # type: ignore[arg-type]
