"""Large frames' MAC on links with frame tags: Poly1305 from OpenSSL (``poly1305.py``) under
one-time keys, inside the message's BLAKE2b tag (``framemac.py``), over real sockets."""

from __future__ import annotations

import io
import socket
import threading
from typing import Any

import pytest

from pydistributed import framemac, handshake, poly1305, sockets, transport
from pydistributed.buffers import BufferPool
from pydistributed.connections import session_macs
from pydistributed.errors import ProtocolError
from pydistributed.handshake import Session
from tests.conftest import python_stdout

pytestmark = pytest.mark.skipif(not poly1305.available(), reason="no OpenSSL 3 in this Python")

KEY = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
MSG = b"Cryptographic Forum Research Group"
TAG = bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")  # RFC 8439, 2.5.2
MiB = 1 << 20
WAIT = 60


def test_poly1305_gives_the_rfc_8439_tag_in_one_or_many_updates() -> None:
    p = poly1305.Poly1305(KEY)
    p.update(MSG)
    assert p.digest() == TAG
    p = poly1305.Poly1305(KEY)
    for piece in (MSG[:5], memoryview(bytearray(MSG[5:20])), b"", memoryview(MSG)[20:]):
        p.update(piece)  # read-only and writable buffers alike
    assert p.digest() == TAG


def test_poly1305_refuses_misuse() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        poly1305.Poly1305(KEY[:16])
    p = poly1305.Poly1305(KEY)
    p.digest()
    with pytest.raises(ValueError, match="twice"):
        p.digest()
    with pytest.raises(ValueError, match="after digest"):
        p.update(b"x")
    with pytest.raises(BufferError):
        poly1305.Poly1305(KEY).update(memoryview(MSG)[::2])  # not contiguous


def _message(seed: int) -> list[Any]:
    big = bytes((seed + i) % 256 for i in range(256)) * (3 * MiB // 256 + 7)
    mid = bytes(range(256)) * (100 * 1024 // 256) + b"odd"  # a bulk frame under 1 MiB
    return [b"head", b"", bytearray(big), b"small" * 100, memoryview(big)[: 2 * MiB], mid]


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        a = socket.create_connection(ls.getsockname(), timeout=WAIT)
        b, _ = ls.accept()
    b.settimeout(WAIT)
    return a, b


def _send_and_read(writer_bulk: bool, reader_bulk: bool, flip: int | None = None) -> list[Any]:
    """One message over loopback TCP, tagged; ``flip``: a byte of the stream changed on the
    way (offset counted from the stream's start)."""
    a, b = _tcp_pair()
    try:
        w = transport.SocketWriter(a)
        w.mac = framemac.FrameMac(b"k" * 32, writer_bulk)
        out = _message(1)
        stream = io.BytesIO()
        sw = transport.StreamWriter(stream)
        sw.mac = framemac.FrameMac(b"k" * 32, writer_bulk)
        sw.write_frames(out)
        raw = bytearray(stream.getvalue())  # the same bytes the socket writer sends
        sender = threading.Thread(target=w.write_frames, args=(out,), daemon=True)
        if flip is None:
            sender.start()
            reader: Any = transport.SocketReader(b)
        else:  # the changed bytes, read from memory (the socket stays unused)
            raw[flip] ^= 0x40
            reader = io.BufferedReader(io.BytesIO(bytes(raw)))
        got = transport.read_message(
            reader, 1 << 30, BufferPool().get, framemac.FrameMac(b"k" * 32, reader_bulk)
        )
        if flip is None:
            sender.join(WAIT)
            assert not sender.is_alive()
        assert [bytes(f) for f in got] == [bytes(f) for f in out]
        return got
    finally:
        a.close()
        b.close()


def test_a_message_with_bulk_frames_passes_over_tcp() -> None:
    _send_and_read(True, True)
    _send_and_read(False, False)


def test_the_bulk_mac_is_part_of_the_tag() -> None:
    """A writer with Poly1305 and a reader without it disagree: the bulk frames really go
    through Poly1305 (and a mixed link is refused, not misread)."""
    with pytest.raises(ProtocolError, match="authentication failed"):
        _send_and_read(True, False)
    with pytest.raises(ProtocolError, match="authentication failed"):
        _send_and_read(False, True)


@pytest.mark.parametrize("size", [framemac.BULK_MIN - 1, framemac.BULK_MIN, 5 * MiB + 3])
def test_frames_from_bulk_min_on_are_bulk_frames(size: int) -> None:
    """Where Poly1305 starts (64 KiB): a writer with it and a reader without it agree on a
    message whose frames are all under BULK_MIN, and disagree from BULK_MIN on."""
    frames = [b"head", b"body", bytes(size)]
    out = io.BytesIO()
    w = transport.StreamWriter(out)
    w.mac = framemac.FrameMac(b"k" * 32, True)
    w.write_frames(frames)

    def read(bulk: bool) -> list[Any]:
        reader = io.BufferedReader(io.BytesIO(out.getvalue()))
        return transport.read_message(reader, 1 << 30, None, framemac.FrameMac(b"k" * 32, bulk))

    assert [bytes(f) for f in read(True)] == frames
    if size < framemac.BULK_MIN:
        assert [bytes(f) for f in read(False)] == frames
    else:
        with pytest.raises(ProtocolError, match="authentication failed"):
            read(False)


@pytest.mark.parametrize(
    "where", ["prefix", "first bulk frame", "small frame", "last bulk", "mid-size bulk"]
)
def test_a_changed_byte_anywhere_fails_the_tag(where: str) -> None:
    frames = _message(1)
    head = 4 + 8 * len(frames)
    big = len(frames[2])
    offset = {
        "prefix": 10,
        "first bulk frame": head + 4 + big // 2 + 3,
        "small frame": head + 4 + big + 7,
        "last bulk": head + 4 + big + 500 + 2 * MiB - 1,
        "mid-size bulk": head + 4 + big + 500 + 2 * MiB + 50_000,
    }[where]
    # a changed length misframes the stream: it runs short (EOF) or the tag fails
    with pytest.raises((ProtocolError, EOFError) if where == "prefix" else ProtocolError):
        _send_and_read(True, True, flip=offset)


def test_two_messages_with_the_same_bulk_frame_have_different_tags() -> None:
    """One-time keys: the same frame in the next message is MACed under another key."""
    mac = framemac.FrameMac(b"k" * 32, True)
    tags = []
    for _ in range(2):
        h = mac.start()
        framemac.feed_frames(h, [b"\0" * MiB], [MiB])
        tags.append(h.digest())
    assert tags[0] != tags[1]


def test_the_handshake_offers_poly1305_and_both_sides_must_have_it() -> None:
    def session(info: dict[str, Any]) -> Session:
        return Session(key_out=b"o" * 32, key_in=b"i" * 32, transcript=b"t", info=info)

    assert not handshake.bulk_mac(session({}))  # a peer that does not offer it (an older one)
    assert not handshake.bulk_mac(session({"macs": "poly1305"}))  # garbled: not a list
    assert handshake.bulk_mac(session({"macs": ["poly1305"]}))
    out, inn = session_macs(session({"macs": ["poly1305"]}))
    assert out.bulk and inn.bulk
    out, inn = session_macs(session({"macs": ["something else"]}))
    assert not out.bulk and not inn.bulk
    # a real handshake over a socket pair: each side learns the other offers it
    a, b = socket.socketpair()
    try:
        a.settimeout(WAIT)
        b.settimeout(WAIT)
        result: dict[str, Session] = {}

        def serve() -> None:
            r, w = handshake.stream_io(*sockets.socket_streams(b))
            result["server"] = handshake.server_handshake(r, w, "a-cookie-of-16ch")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        r, w = handshake.stream_io(*sockets.socket_streams(a))
        client = handshake.client_handshake(r, w, "a-cookie-of-16ch")
        t.join(WAIT)
        assert handshake.bulk_mac(client) and handshake.bulk_mac(result["server"])
    finally:
        a.close()
        b.close()


def _handshake_through(rewrite: bytes | None, tags: bool = True) -> tuple[Session, Session]:
    """A real handshake over socket pairs through a relay in the middle that replaces
    ``"macs"`` by ``rewrite`` in what the client sends (None: relays unchanged)."""
    c_sock, m1 = socket.socketpair()
    m2, s_sock = socket.socketpair()
    socks = (c_sock, m1, m2, s_sock)
    for s in socks:
        s.settimeout(WAIT)

    def pump(src: socket.socket, dst: socket.socket, change: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data.replace(b'"macs"', rewrite) if change and rewrite else data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    pumps = [
        threading.Thread(target=pump, args=(m1, m2, True), daemon=True),
        threading.Thread(target=pump, args=(m2, m1, False), daemon=True),
    ]
    for t in pumps:
        t.start()
    result: dict[str, Session] = {}

    def serve() -> None:
        r, w = handshake.stream_io(*sockets.socket_streams(s_sock))
        result["server"] = handshake.server_handshake(r, w, "a-cookie-of-16ch", tags=tags)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        r, w = handshake.stream_io(*sockets.socket_streams(c_sock))
        client = handshake.client_handshake(r, w, "a-cookie-of-16ch", tags=tags)
        t.join(WAIT)
        return client, result["server"]
    finally:
        for s in socks:
            s.close()
        for p in pumps:
            p.join(WAIT)


def test_a_relay_that_changes_the_offer_makes_the_keys_differ() -> None:
    client, server = _handshake_through(None)
    assert client.key_out == server.key_in and client.key_in == server.key_out
    assert handshake.bulk_mac(client) and handshake.bulk_mac(server)
    client, server = _handshake_through(b'"macz"')  # the offer stripped on the way
    assert not handshake.bulk_mac(server)
    assert client.key_out != server.key_in and client.key_in != server.key_out


def test_a_link_without_tags_offers_nothing() -> None:
    client, server = _handshake_through(None, tags=False)
    assert "macs" not in client.info and "macs" not in server.info
    assert client.key_out == server.key_in


def test_a_library_without_poly1305_is_not_offered(tmp_path: Any) -> None:
    """OpenSSL 3 with only its base provider (as with some FIPS setups) maps libcrypto but
    has no Poly1305: the handshake must not offer it."""
    import os

    conf = tmp_path / "base-only.cnf"
    conf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n"
        "[provider_sect]\nbase = base_sect\n[base_sect]\nactivate = 1\n"
    )
    code = (
        "from pydistributed import poly1305, handshake\n"
        "print(poly1305._libcrypto() is not None, poly1305.available(),"
        " b'poly1305' in handshake._my_info(True))\n"
    )
    env = {**os.environ, "OPENSSL_CONF": str(conf)}
    assert python_stdout(code, env).split() == ["True", "False", "False"]


def test_a_message_cut_short_in_or_after_a_bulk_frame_is_an_eof() -> None:
    """Cut inside a bulk frame (read and hashed a chunk at a time) or in the tag."""
    out = io.BytesIO()
    w = transport.StreamWriter(out)
    w.mac = framemac.FrameMac(b"k" * 32, True)
    w.write_frames(_message(2))
    raw = out.getvalue()
    for cut in (len(raw) // 3, len(raw) - 20, len(raw) - 1):
        with pytest.raises(EOFError):
            transport.read_message(
                io.BufferedReader(io.BytesIO(raw[:cut])),
                1 << 30,
                None,
                framemac.FrameMac(b"k" * 32, True),
            )
    got = transport.read_message(
        io.BufferedReader(io.BytesIO(raw)), 1 << 30, None, framemac.FrameMac(b"k" * 32, True)
    )
    assert [bytes(f) for f in got] == [bytes(f) for f in _message(2)]


def test_a_mac_that_fails_leaves_a_stream_untouched_or_a_socket_marked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fault injected with a fake: Poly1305 refuses after the link agreed on it (cannot be
    produced with a library that passed the check). A stream gets nothing; a socket writer
    that already sent the frames says the message is partial (its peer closes the link)."""

    def refuse(key: bytes) -> Any:
        raise OSError("EVP_MAC_init failed")

    monkeypatch.setattr(poly1305, "Poly1305", refuse)
    out = io.BytesIO()
    w = transport.StreamWriter(out)
    w.mac = framemac.FrameMac(b"k" * 32, True)
    with pytest.raises(ProtocolError, match="cannot authenticate a large frame"):
        w.write_frames(_message(3))
    assert out.getvalue() == b""
    a, b = _tcp_pair()
    try:
        sw = transport.SocketWriter(a)
        sw.mac = framemac.FrameMac(b"k" * 32, True)

        def read_all() -> None:
            try:
                while b.recv(1 << 20):
                    pass
            except OSError:
                pass

        drain = threading.Thread(target=read_all, daemon=True)
        drain.start()
        with pytest.raises(ProtocolError):
            sw.write_frames(_message(3))
        assert sw.partial
    finally:
        a.close()
        b.close()
        drain.join(WAIT)
