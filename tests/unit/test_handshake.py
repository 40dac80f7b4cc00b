"""The cookie handshake over real socket pairs."""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest

from pydistributed import handshake
from pydistributed.errors import AuthenticationError


def _io(sock: socket.socket) -> tuple[Any, Any]:
    f = sock.makefile("rb")

    def read_exact(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise EOFError
        return data

    return read_exact, sock.sendall


def _run(client_cookie: str, server_cookie: str) -> tuple[Any, Any]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    out: dict[str, Any] = {}

    def server() -> None:
        try:
            out["server"] = handshake.server_handshake(*_io(b), server_cookie)
        except Exception as e:
            out["server"] = e

    t = threading.Thread(target=server)
    t.start()
    try:
        out["client"] = handshake.client_handshake(*_io(a), client_cookie)
    except Exception as e:
        out["client"] = e
    a.shutdown(socket.SHUT_RDWR)  # a client that gave up hangs up
    a.close()
    t.join(10)
    b.close()
    return out["client"], out["server"]


def test_same_cookie_succeeds() -> None:
    client, server = _run("s3cret", "s3cret")
    assert client["protocol"] == handshake.PROTOCOL_VERSION
    assert server["protocol"] == handshake.PROTOCOL_VERSION


def test_empty_cookie_is_a_cookie() -> None:
    client, server = _run("", "")
    assert isinstance(client, dict) and isinstance(server, dict)


def test_wrong_cookie_fails_on_both_sides() -> None:
    client, server = _run("right", "wrong")
    assert isinstance(client, AuthenticationError)
    assert isinstance(server, (AuthenticationError, EOFError, OSError))


def test_cookie_never_crosses_the_wire() -> None:
    a, b = socket.socketpair()
    seen = bytearray()
    cookie = "Sup3rSecretCookieValue"

    def server() -> None:
        read_exact, write = _io(b)

        def spy(n: int) -> bytes:
            data = read_exact(n)
            seen.extend(data)
            return data

        handshake.server_handshake(spy, write, cookie)

    t = threading.Thread(target=server)
    t.start()
    handshake.client_handshake(*_io(a), cookie)
    t.join(10)
    assert cookie.encode() not in bytes(seen)
    a.close()
    b.close()


def test_server_denies_a_client_with_a_bad_digest() -> None:
    a, b = socket.socketpair()
    a.settimeout(5)
    result: dict[str, Any] = {}

    def server() -> None:
        try:
            handshake.server_handshake(*_io(b), "cookie")
        except AuthenticationError as e:
            result["err"] = e

    t = threading.Thread(target=server)
    t.start()
    read_exact, write = _io(a)
    write(handshake.MAGIC + b"c" * 32)
    assert read_exact(8) == handshake.MAGIC
    read_exact(32 + 32)
    write(b"\x00" * 32 + b"\x00\x02{}")
    assert read_exact(4) == b"DENY"
    t.join(10)
    assert "wrong cookie" in str(result["err"])
    a.close()
    b.close()


def test_version_mismatch_names_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    out: dict[str, Any] = {}

    def server() -> None:
        try:
            handshake.server_handshake(*_io(b), "c")
        except AuthenticationError as e:
            out["server"] = e

    t = threading.Thread(target=server)
    t.start()
    info_json = b'{"protocol": 99, "python": "2.7"}'
    monkeypatch.setattr(
        handshake, "_my_info", lambda: len(info_json).to_bytes(2, "big") + info_json
    )
    with pytest.raises(AuthenticationError) as info:
        handshake.client_handshake(*_io(a), "c")
    a.close()
    t.join(10)
    text = str(info.value)
    assert "protocol" in text and "99" in text and str(handshake.PROTOCOL_VERSION) in text
    a.close()
    b.close()


def test_garbage_is_refused() -> None:
    a, b = socket.socketpair()
    b.settimeout(5)
    a.sendall(b"GET / HTTP/1.1\r\n\r\n" + b"x" * 100)
    with pytest.raises(AuthenticationError, match="magic"):
        handshake.server_handshake(*_io(b), "c")
    a.close()
    b.close()


@pytest.mark.parametrize("bad", ["x" * 65, "tab\there", "é", 5])
def test_bad_cookies_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        handshake.check_cookie(bad)


def test_random_cookie_is_valid() -> None:
    c = handshake.random_cookie()
    assert handshake.check_cookie(c) == c and len(c) == 32
