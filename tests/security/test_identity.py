"""A process that knows the cookie still cannot claim to be another worker: a worker-to-worker
connection opens with ``Identify(pid, proof)``, the proof made with the secret that the master
gave those two workers alone, and bound to this connection's handshake."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pydistributed import (
    cluster_cookie,
    connections,
    handshake,
    myid,
    remotecall_fetch,
    sockets,
)
from pydistributed.codec import encode
from pydistributed.messages import Identify
from tests.conftest import worker_table
from tests.security.conftest import WAIT, wait_until


def _claim(host: str, port: int, pid: int, proof: bytes) -> bytes:
    """Connect to a worker over TCP with the cookie, claim to be ``pid``; what comes back."""
    sock = socket.create_connection((host, port), timeout=WAIT)
    reader, writer = sockets.socket_streams(sock)
    read_exact, write = handshake.stream_io(reader, writer)
    session = handshake.client_handshake(read_exact, write, cluster_cookie())
    writer.mac = connections.session_macs(session)[0]
    frames, _ = encode(Identify(pid, proof), None)
    writer.write_frames(frames)
    try:
        return sock.recv(100)  # the worker's answer: it closes the connection
    finally:
        sock.close()


def _ask(b: int) -> int:
    return int(remotecall_fetch(myid, b))


def test_a_cookie_holder_cannot_take_another_workers_calls(
    add_workers: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    a, b = add_workers(2)
    info = worker_table()[a]
    assert info.host is not None and info.port is not None
    # the impostor holds the cookie but not the secret that a and b share
    assert _claim(info.host, info.port, b, b"\x00" * 32) == b""  # refused: closed
    said = f"claimed to be process {b} but could not prove it"
    err: list[str] = []
    try:
        wait_until(
            lambda: err.append(capfd.readouterr().err) or said in "".join(err),
            "the worker's refusal in its log",
        )
    except AssertionError as e:  # say what the log had instead (a rare failure, not yet seen)
        raise AssertionError(f"{e}; the master's stderr had: {''.join(err)!r}") from None
    # a's calls to b still reach the real b
    assert remotecall_fetch(_ask, a, b) == b


def test_a_proof_made_for_another_connection_is_worthless(add_workers: Any) -> None:
    a, b = add_workers(2)
    info = worker_table()[a]
    assert info.host is not None and info.port is not None
    # a real proof that b made (through a) is bound to that connection's handshake
    assert remotecall_fetch(_ask, a, b) == b
    key_proof = remotecall_fetch(_proof_of, b, a)
    assert _claim(info.host, info.port, b, key_proof) == b""
    assert remotecall_fetch(_ask, a, b) == b


def _proof_of(other: int) -> bytes:
    """On a worker: a proof of identity toward ``other`` bound to a made-up transcript."""
    from pydistributed.cluster import current_cluster
    from pydistributed.connections import identity_proof

    key = current_cluster().registry.pair_key(other)
    assert key is not None
    return identity_proof(key, b"\x01" * 64)
