"""Fuzzing the code that reads what a peer sends: the handshake, the frame reader, the decoder,
and a live worker's listener. Random and mutated input may only ever be refused: no other
exception, no hang, no memory beyond the guard, and the worker still answers its master.

Bounded in time (``max_examples``) so that CI runs it on every push.
"""

from __future__ import annotations

import io
import socket
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydistributed import handshake, remotecall_fetch, transport
from pydistributed.codec import DecodeError, decode, encode
from pydistributed.errors import AuthenticationError, ProtocolError
from pydistributed.messages import CallFetch, Result
from tests.conftest import worker_table
from tests.integration import _helpers as h
from tests.security.conftest import COOKIE, WAIT

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _feed(steps: handshake.Steps, data: bytes) -> None:
    """Drive handshake steps with ``data`` as everything the peer sends."""
    stream = io.BytesIO(data)
    reply: bytes | None = None
    while True:
        try:
            step = steps.send(reply)
        except StopIteration:
            return
        if isinstance(step, handshake.Read):
            assert step.n <= 1024  # every read is small and bounded
            reply = stream.read(step.n)
            if len(reply) != step.n:
                raise EOFError
        else:
            reply = None


def _a_real_client_hello() -> bytes:
    steps = handshake.client_steps(COOKIE)
    first = steps.send(None)
    assert isinstance(first, handshake.Write)
    return first.data


@FAST
@given(st.binary(max_size=600))
def test_the_server_handshake_refuses_random_input(data: bytes) -> None:
    try:
        _feed(handshake.server_steps(COOKIE), data)
    except (AuthenticationError, EOFError):
        return
    raise AssertionError("random bytes passed the handshake")


@FAST
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=600))
def test_the_server_handshake_refuses_a_wrong_proof(challenge: bytes, rest: bytes) -> None:
    try:
        _feed(handshake.server_steps(COOKIE), handshake.MAGIC + challenge + rest)
    except (AuthenticationError, EOFError):
        return
    raise AssertionError("a made-up proof passed the handshake")


@FAST
@given(st.binary(max_size=600))
def test_the_client_handshake_refuses_random_answers(data: bytes) -> None:
    try:
        _feed(handshake.client_steps(COOKIE), data)
    except (AuthenticationError, EOFError):
        return
    raise AssertionError("random bytes passed the client's handshake")


def _a_message() -> bytes:
    frames, _ = encode(CallFetch(7, h.identity, (1, "two", b"3" * 100), {"k": None}), 2)
    prefix = struct.pack("!I", len(frames)) + struct.pack(f"!{len(frames)}Q", *map(len, frames))
    return prefix + b"".join(frames)


@FAST
@given(st.binary(max_size=2000))
def test_the_frame_reader_refuses_random_bytes_within_its_guard(data: bytes) -> None:
    allocated: list[int] = []

    def alloc(n: int) -> bytearray:
        allocated.append(n)
        return bytearray(n)

    try:
        frames = transport.read_message(io.BytesIO(data), 1 << 20, alloc)
    except (EOFError, ProtocolError):
        return
    finally:
        assert sum(allocated) <= 1 << 20  # nothing beyond the guard, ever
    try:
        decode(frames)
    except (ProtocolError, DecodeError):
        pass


@FAST
@given(st.data())
def test_a_mutated_message_is_refused_by_its_mac(data: st.DataObject) -> None:
    out = io.BytesIO()
    writer = transport.StreamWriter(out)
    writer.mac = transport.FrameMac(b"k" * 32)
    frames, _ = encode(Result(3, True, "value"), 2)
    writer.write_frames(frames)
    raw = bytearray(out.getvalue())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        transport.read_message(io.BytesIO(bytes(raw)), 1 << 20, None, transport.FrameMac(b"k" * 32))
    except (EOFError, ProtocolError):
        return
    raise AssertionError(f"a message changed at byte {i} passed its MAC")


def _mutations() -> Any:
    hello = _a_real_client_hello()
    return st.one_of(
        st.binary(max_size=300),
        st.builds(lambda cut: hello[:cut], st.integers(0, len(hello))),
        st.builds(
            lambda i, x, tail: hello[:i] + bytes([hello[i] ^ x]) + hello[i + 1 :] + tail,
            st.integers(0, len(hello) - 1),
            st.integers(1, 255),
            st.binary(max_size=200),
        ),
    )


def test_a_live_worker_survives_a_fuzzed_listener(add_workers: Any) -> None:
    (w,) = add_workers(1)
    info = worker_table()[w]
    assert info.host and info.port
    address = (info.host, info.port)

    @settings(max_examples=150, deadline=None)
    @given(_mutations())
    def hit(data: bytes) -> None:
        s = socket.create_connection(address, timeout=WAIT)
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(WAIT)
            while s.recv(4096):  # the worker answers what it may, then closes
                pass
        except OSError:
            pass
        finally:
            s.close()

    hit()
    assert remotecall_fetch(h.identity, w, "still here") == "still here"
