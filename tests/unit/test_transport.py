"""Frames over real socket pairs: whole messages, large frames, the size guard."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading

import pytest

from pydistributed import buffers, transport
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
    reader.close()
    b.close()
    a2, b2 = _pair()
    a2.close()
    with b2.makefile("rb") as reader2, pytest.raises(EOFError):
        transport.read_message(reader2)
    b2.close()


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


def test_buffer_pool_reuses_memory_once_free() -> None:
    import gc

    pool = buffers.BufferPool(max_cached=64 << 20)
    if not pool.enabled:
        pytest.skip("no memfd_create on this platform")
    pool.huge = False  # (huge pages are never cached: see the next test)
    a = pool.get(4 << 20)
    memoryview(a)[:3] = b"abc"
    del a
    gc.collect()
    b = pool.get(3 << 20)  # fits in the freed buffer (at most twice the size)
    assert len(b) == 3 << 20
    assert bytes(memoryview(b)[:3]) == b"abc"  # the same pages, mapped again
    c = pool.get(1 << 20)  # a fresh one: the free buffer is more than twice too big
    assert len(c) == 1 << 20
    del b, c
    gc.collect()
    pool.trim(idle=0)
    assert pool._free == [] and pool._cached == 0


def _vm_flags(address: int) -> list[str]:
    """The VmFlags of the mapping of this process that holds ``address``."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def test_large_frames_get_fresh_huge_pages_where_the_kernel_gives_them() -> None:
    import ctypes
    import gc

    pool = buffers.BufferPool()
    if not buffers.huge_pages():
        pytest.skip("no transparent huge pages on this machine")
    assert pool.huge
    big = pool.get(buffers.HUGE_MIN)
    memoryview(big)[-3:] = b"xyz"
    assert len(big) == buffers.HUGE_MIN and bytes(memoryview(big)[-3:]) == b"xyz"
    address = ctypes.addressof(ctypes.c_char.from_buffer(big))
    flags = _vm_flags(address)
    assert "hg" in flags and "sh" not in flags  # advised huge, private (not a memfd)
    small = pool.get(buffers.HUGE_MIN - 1)  # under the threshold: a pooled memfd
    assert "sh" in _vm_flags(ctypes.addressof(ctypes.c_char.from_buffer(small)))
    del big, small
    gc.collect()
    pool._collect()
    assert [cap for cap, _ in pool._free] == [buffers.HUGE_MIN - 1]  # the huge one is not kept
    pool.trim(idle=0)


def test_buffer_pool_caps_what_it_keeps() -> None:
    import gc

    pool = buffers.BufferPool(max_cached=2 << 20)
    if not pool.enabled:
        pytest.skip("no memfd_create on this platform")
    bufs = [pool.get(1 << 20) for _ in range(4)]
    del bufs
    gc.collect()
    pool.get(1 << 20)
    assert pool._cached <= 2 << 20


def test_a_large_bytes_buffer_arrives_as_the_bytes_object_itself() -> None:
    from pydistributed import codec, sockets
    from pydistributed.messages import CallFetch

    data = b"\x07" * (4 << 20)
    frames, _ = codec.encode(CallFetch(1, print, (codec.oob(data),), {}), 2)
    assert codec.bytes_frames(frames[0]) == {2}
    a, b = socket.socketpair()
    _, writer = sockets.socket_streams(a)
    reader, _ = sockets.socket_streams(b)
    t = threading.Thread(target=writer.write_frames, args=(frames,))
    t.start()
    got = transport.read_message(reader, None, None, None, codec.bytes_frames)
    t.join(10)
    assert type(got[2]) is bytes and got[2] == data
    msg = codec.decode(got)
    assert msg.args[0] is got[2]  # unpickling took it as it was: no second copy
    a.close()
    b.close()


def test_other_large_buffers_still_arrive_writable() -> None:
    import numpy as np

    from pydistributed import codec, sockets
    from pydistributed.messages import CallFetch

    arr = np.arange(1 << 18, dtype=np.float64)  # 2 MiB
    frames, _ = codec.encode(CallFetch(1, print, (arr,), {}), 2)
    assert codec.bytes_frames(frames[0]) == set()
    a, b = socket.socketpair()
    _, writer = sockets.socket_streams(a)
    reader, _ = sockets.socket_streams(b)
    t = threading.Thread(target=writer.write_frames, args=(frames,))
    t.start()
    got = transport.read_message(reader, None, buffers.BufferPool().get, None, codec.bytes_frames)
    t.join(10)
    out = codec.decode(got).args[0]
    assert (out == arr).all() and out.flags.writeable
    a.close()
    b.close()


@pytest.mark.parametrize("tagged", [False, True])
@pytest.mark.parametrize("size", [64 << 10, (256 << 10) + 3, (1 << 20) - 8, 1 << 20, 3 << 20])
def test_out_of_band_buffers_of_every_size_arrive_writable(size: int, tagged: bool) -> None:
    """An array's buffer from the out-of-band threshold up: frames under 1 MiB were read into
    a ``bytes``, so the array built on them was read-only (64 KiB to 1 MiB)."""
    import numpy as np

    from pydistributed import codec, framemac, sockets
    from pydistributed.messages import CallFetch

    arr = np.frombuffer(bytearray(os.urandom(size)), dtype=np.uint8)  # writable
    exact = os.urandom(size)  # an exact bytes stays one
    frames, _ = codec.encode(CallFetch(1, print, (arr, codec.oob(exact)), {}), 2)
    assert len(frames) == 4 and codec.bytes_frames(frames[0]) == {3}
    a, b = socket.socketpair()
    _, writer = sockets.socket_streams(a)
    reader, _ = sockets.socket_streams(b)
    mac_in = None
    if tagged:
        writer.mac = framemac.FrameMac(b"k" * 32, False)
        mac_in = framemac.FrameMac(b"k" * 32, False)
    t = threading.Thread(target=writer.write_frames, args=(frames,))
    t.start()
    got = transport.read_message(reader, None, buffers.BufferPool().get, mac_in, codec.bytes_frames)
    t.join(10)
    out, out_bytes = codec.decode(got).args
    assert (out == arr).all() and out.flags.writeable
    out[0] ^= 1  # and it can be written
    assert type(out_bytes) is bytes and out_bytes == exact
    a.close()
    b.close()


def test_a_frame_larger_than_the_reader_s_buffer_arrives_whole_as_bytes() -> None:
    """Frames 0 and 1 and exact ``bytes`` between the reader's buffer (64 KiB) and 1 MiB are read
    straight into a ``bytes`` (they went through a zeroed bytearray and two copies)."""
    a, b = _pair()
    body = os.urandom((300 << 10) + 5)
    w = transport.SocketWriter(a)
    t = threading.Thread(target=w.write_frames, args=([b"h" * 20, body],))
    t.start()
    got = transport.read_message(transport.SocketReader(b), 1 << 30)
    t.join(10)
    assert type(got[1]) is bytes and got[1] == body
    a.close()
    b.close()
    # cut short inside such a frame: the end of the stream, not a short frame
    stream = io.BytesIO()
    transport.StreamWriter(stream).write_frames([b"h" * 20, body])
    raw = stream.getvalue()
    cut = socket.socketpair()

    def send_half_and_close() -> None:
        cut[0].sendall(raw[: len(raw) // 2])
        cut[0].close()

    sender = threading.Thread(target=send_half_and_close)
    sender.start()
    with pytest.raises(EOFError):
        transport.read_message(transport.SocketReader(cut[1]), 1 << 30)
    sender.join(10)
    cut[1].close()
