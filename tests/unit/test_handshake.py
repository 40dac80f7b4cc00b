"""The cookie handshake over real socket pairs: proofs in the right order, session keys, the
cookie's rules."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from pydistributed import handshake
from pydistributed.errors import AuthenticationError
from tests.conftest import python_stdout

COOKIE = "s3cret-cookie-of-the-test"


def _io(sock: socket.socket) -> tuple[Any, Any]:
    def read_exact(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return bytes(data)

    return read_exact, sock.sendall


def _run(
    client_cookie: str, server_cookie: str, client_binding: bytes = b"", server_binding: bytes = b""
) -> tuple[Any, Any]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    out: dict[str, Any] = {}

    def server() -> None:
        try:
            out["server"] = handshake.server_handshake(*_io(b), server_cookie, server_binding)
        except Exception as e:
            out["server"] = e

    t = threading.Thread(target=server)
    t.start()
    try:
        out["client"] = handshake.client_handshake(*_io(a), client_cookie, client_binding)
    except Exception as e:
        out["client"] = e
    a.shutdown(socket.SHUT_RDWR)  # a client that gave up hangs up
    a.close()
    t.join(10)
    b.close()
    return out["client"], out["server"]


def test_same_cookie_succeeds_with_matching_session_keys() -> None:
    client, server = _run(COOKIE, COOKIE)
    assert isinstance(client, handshake.Session) and isinstance(server, handshake.Session)
    assert client.info["protocol"] == server.info["protocol"] == handshake.PROTOCOL_VERSION
    # what one side sends with, the other checks with; the two directions differ
    assert client.key_out == server.key_in and client.key_in == server.key_out
    assert client.key_out != client.key_in
    assert client.transcript == server.transcript and len(client.transcript) == 64


def test_every_connection_has_its_own_keys() -> None:
    first, _ = _run(COOKIE, COOKIE)
    second, _ = _run(COOKIE, COOKIE)
    assert first.key_out != second.key_out and first.transcript != second.transcript


def test_wrong_cookie_fails_on_both_sides() -> None:
    client, server = _run(COOKIE, COOKIE + "-not")
    assert isinstance(client, AuthenticationError) and "authentication failed" in str(client)
    assert isinstance(server, AuthenticationError) and "wrong cookie" in str(server)


def test_a_different_channel_binding_fails() -> None:
    # a proof made for one channel (say, through a relay with other TLS certificates) is
    # worthless on another
    client, server = _run(COOKIE, COOKIE, client_binding=b"cert-a", server_binding=b"cert-b")
    assert isinstance(client, AuthenticationError)
    assert isinstance(server, AuthenticationError)


def test_the_server_proves_nothing_before_the_client_has() -> None:
    # The server's first answer is its magic and a fresh random challenge: nothing computed
    # from the cookie, so a client that does not know it has nothing to test guesses against.
    answers = []
    for cookie in (COOKIE, COOKIE + "-other"):
        a, b = socket.socketpair()
        a.settimeout(5)
        steps = handshake.server_steps(cookie)
        assert steps.send(None) == handshake.Read(len(handshake.MAGIC))
        assert steps.send(handshake.MAGIC) == handshake.Read(32)
        first = steps.send(b"c" * 32)  # the client's challenge: the same each time
        assert isinstance(first, handshake.Write)
        assert first.data[:8] == handshake.MAGIC and len(first.data) == 8 + 32
        answers.append(first.data[8:])
        # and then it waits for the client's proof, sending nothing more
        assert steps.send(None) == handshake.Read(32)
        steps.close()
        a.close()
        b.close()
    assert answers[0] != answers[1]  # random, whatever the cookie


def test_a_wrong_proof_gets_only_a_denial() -> None:
    a, b = socket.socketpair()
    a.settimeout(5)
    result: dict[str, Any] = {}

    def server() -> None:
        try:
            handshake.server_handshake(*_io(b), COOKIE)
        except AuthenticationError as e:
            result["err"] = e

    t = threading.Thread(target=server)
    t.start()
    read_exact, write = _io(a)
    write(handshake.MAGIC + b"c" * 32)
    assert read_exact(8) == handshake.MAGIC
    read_exact(32)
    write(b"\x00" * 32 + b"\x00\x02{}")
    assert read_exact(4) == b"DENY"
    (n,) = read_exact(2)[1:]
    assert read_exact(n) == b"authentication failed"  # no version, no proof, nothing else
    t.join(10)
    assert "wrong cookie" in str(result["err"])
    a.close()
    b.close()


def test_cookie_never_crosses_the_wire() -> None:
    a, b = socket.socketpair()
    seen = bytearray()

    def server() -> None:
        read_exact, write = _io(b)

        def spy(n: int) -> bytes:
            data = read_exact(n)
            seen.extend(data)
            return data

        handshake.server_handshake(spy, write, COOKIE)

    t = threading.Thread(target=server)
    t.start()
    handshake.client_handshake(*_io(a), COOKIE)
    t.join(10)
    assert COOKIE.encode() not in bytes(seen)
    a.close()
    b.close()


def test_version_mismatch_names_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    out: dict[str, Any] = {}

    def server() -> None:
        try:
            handshake.server_handshake(*_io(b), COOKIE)
        except AuthenticationError as e:
            out["server"] = e

    t = threading.Thread(target=server)
    t.start()
    info_json = b'{"protocol": 99, "python": "2.7"}'
    monkeypatch.setattr(
        handshake, "_my_info", lambda tags=True: len(info_json).to_bytes(2, "big") + info_json
    )
    with pytest.raises(AuthenticationError) as info:
        handshake.client_handshake(*_io(a), COOKIE)
    a.close()
    t.join(10)
    text = str(info.value)
    assert "protocol" in text and "99" in text and str(handshake.PROTOCOL_VERSION) in text
    assert "protocol" in str(out["server"])
    b.close()


def test_garbage_is_refused() -> None:
    a, b = socket.socketpair()
    b.settimeout(5)
    a.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 100)
    with pytest.raises(AuthenticationError, match="magic"):
        handshake.server_handshake(*_io(b), COOKIE)
    a.close()
    b.close()


def test_an_old_peer_is_refused_by_its_magic() -> None:
    a, b = socket.socketpair()
    b.settimeout(5)
    a.sendall(b"PYDIST\x00\x01" + b"c" * 32)  # protocol 1
    with pytest.raises(AuthenticationError, match="magic"):
        handshake.server_handshake(*_io(b), COOKIE)
    a.close()
    b.close()


@pytest.mark.parametrize("bad", ["", "hunter2", "x" * 11, "x" * 65, "tab\there" * 3, "é" * 12, 5])
def test_bad_cookies_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        handshake.check_cookie(bad)


@pytest.mark.parametrize("good", ["x" * 12, "a-longer cookie, with spaces!", "x" * 64])
def test_good_cookies_are_accepted(good: str) -> None:
    assert handshake.check_cookie(good) == good


def test_random_cookie_is_valid() -> None:
    c = handshake.random_cookie()
    assert handshake.check_cookie(c) == c and len(c) == 32


def test_the_cloudpickle_version_is_read_without_importing_it() -> None:
    """A worker's handshake names cloudpickle's version without importing it (~12 ms that a
    worker sent only importable functions never needs): the same as cloudpickle's own."""

    code = (
        "import sys\n"
        "from pydistributed import handshake\n"
        "v = handshake.versions()['cloudpickle']\n"
        "print('cloudpickle' in sys.modules)\n"
        "import cloudpickle\n"
        "print(v == cloudpickle.__version__, v)\n"
    )
    out = python_stdout(code).split()
    assert out[:2] == ["False", "True"]
    assert out[2] != "unknown"
