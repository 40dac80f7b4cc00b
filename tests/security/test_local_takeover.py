"""A local user without the cookie cannot stand in for a worker on its Unix-socket twin.

The attack this answers: another user bound the predictable abstract names of workers' local
sockets first, the master connected to the squatter, which relayed the proofs and injected
pickles. Now the names derive from the cookie, a worker that cannot bind its name refuses to
start, and each side of a local connection checks the other's user (``SO_PEERCRED``).
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import pytest

from pydistributed import ClusterManager, WorkerConfig, addprocs, cluster_cookie, sockets
from pydistributed.errors import AuthenticationError
from tests.security.conftest import (
    COOKIE,
    WAIT,
    as_other_user,
    free_port,
    kill_child,
    wait_until,
)


def _squat(name: str, ready_w: int, seen_w: int) -> None:
    """As the attacker: hold the abstract name, accept, report whether anything was read."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(name)
    s.listen(8)
    os.write(ready_w, b"r")
    while True:
        conn, _ = s.accept()
        conn.settimeout(5)
        try:
            data = conn.recv(100)
        except OSError:
            data = b""
        os.write(seen_w, b"D" if data else b"0")
        conn.close()


def _attacker_holding(name: str) -> tuple[int, int]:
    ready_r, ready_w = os.pipe()
    seen_r, seen_w = os.pipe()
    pid = as_other_user(lambda: _squat(name, ready_w, seen_w))
    os.close(ready_w)
    os.close(seen_w)
    assert os.read(ready_r, 1) == b"r"
    os.close(ready_r)
    return pid, seen_r


def test_the_local_socket_name_cannot_be_guessed_without_the_cookie() -> None:
    a = sockets.local_name(COOKIE, "127.0.0.1", 5000)
    assert a.startswith("\0pydistributed-") and "5000" not in a and "127.0.0.1" not in a
    assert a != sockets.local_name(COOKIE + "x", "127.0.0.1", 5000)
    assert a != sockets.local_name(COOKIE, "127.0.0.1", 5001)


def test_a_worker_whose_local_name_is_taken_refuses_to_start(raw_worker: Any) -> None:
    # say the attacker learned the name (it cannot compute it without the cookie): the worker
    # must not start with someone else answering on its local socket
    port = free_port()
    pid, seen = _attacker_holding(sockets.local_name(COOKIE, "127.0.0.1", port))
    try:
        with pytest.raises(RuntimeError) as info:
            raw_worker(bind_to=f"127.0.0.1:{port}")
        assert "cannot listen on the local socket" in str(info.value)
    finally:
        kill_child(pid)
        os.close(seen)


class _AnnounceOnly(ClusterManager):
    """Announces a worker at ``127.0.0.1:port`` without starting one (the squatter is there)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def launch(self, params: Any, launched: Any, launch_ntfy: threading.Condition) -> None:
        with launch_ntfy:
            launched.append(WorkerConfig(host="127.0.0.1", port=self.port))
            launch_ntfy.notify_all()


def test_the_master_refuses_a_local_socket_held_by_another_user() -> None:
    port = free_port()
    pid, seen = _attacker_holding(sockets.local_name(cluster_cookie(), "127.0.0.1", port))
    try:
        with pytest.raises(AuthenticationError) as info:
            addprocs(_AnnounceOnly(port))
        assert f"runs as uid {65534}" in str(info.value)
        # the master hung up before a single byte of its handshake went out
        verdict = wait_until(lambda: os.read(seen, 1), "the attacker's report", WAIT)
        assert verdict == b"0"
    finally:
        kill_child(pid)
        os.close(seen)


def test_a_worker_refuses_a_local_client_of_another_user(raw_worker: Any) -> None:
    w = raw_worker()
    name = sockets.local_name(COOKIE, w.host, w.port)
    r, wr = os.pipe()

    def connect_as_nobody() -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(name)
        except OSError as e:
            os.write(wr, f"E{e}".encode())  # the name must be there
            return
        try:
            s.sendall(b"PYDIST\x00\x02" + b"c" * 32)
            got = s.recv(100)
        except OSError:  # reset, or a broken pipe: the worker closed at once
            got = b""
        os.write(wr, b"A" if got else b"0")  # A: the worker answered

    pid = as_other_user(connect_as_nobody)
    os.close(wr)
    try:
        assert os.read(r, 200) == b"0"  # closed without a word
    finally:
        kill_child(pid)
        os.close(r)
    assert w.proc.poll() is None  # and the worker goes on
