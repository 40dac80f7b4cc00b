"""``PYDIST_TLS``: TCP links in TLS, hiding what they carry; the cookie proofs bound to the
server's certificate, so that a party terminating TLS in the middle cannot relay them."""

from __future__ import annotations

import select
import socket
import ssl
import threading
from typing import Any

import pytest

from pydistributed import LocalManager, addprocs, remotecall_fetch, sockets, tls
from pydistributed.cluster import current_cluster
from pydistributed.errors import AuthenticationError
from tests.conftest import end_workers
from tests.security.conftest import WAIT, FakeMaster
from tests.security.test_relay import Relay


class TcpOnly(LocalManager):
    """Local workers reached over TCP (as a remote host would be), not the Unix-socket twin."""

    def __init__(self) -> None:
        super().__init__(1)
        self.relay: Any = None  # a relay class: the connection goes through one

    def connect(self, pid: int, config: Any) -> Any:
        assert config.host is not None and config.port is not None
        if self.relay is not None:
            self.relay = self.relay((config.host, config.port))
            host, port = "127.0.0.1", self.relay.port
        else:
            host, port = config.host, config.port
        return sockets.socket_streams(sockets.connect_tcp(host, port, WAIT))


@pytest.fixture
def tls_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYDIST_TLS", "all")  # local workers inherit it at launch


def test_a_tls_link_carries_nothing_in_the_clear(tls_everywhere: None) -> None:
    m = TcpOnly()
    m.relay = Relay
    (w,) = addprocs(m)
    try:
        peer = current_cluster().connections.lookup(w)
        assert peer is not None and isinstance(peer.writer.sock, ssl.SSLSocket)
        assert peer.writer.mac is None  # TLS authenticates the frames itself
        secret = "the-value-nobody-on-the-path-may-read"
        assert remotecall_fetch(str.upper, w, secret) == secret.upper()
        seen = bytes(m.relay.seen)
        assert len(seen) > 1000 and secret.encode() not in seen
        assert secret.upper().encode() not in seen
    finally:
        end_workers([w])
        m.relay.close()


def test_a_worker_that_wants_tls_refuses_a_plain_connection(
    raw_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = raw_worker(PYDIST_TLS="all")
    with pytest.raises((AuthenticationError, EOFError, OSError)):
        FakeMaster(w)
    assert w.proc.poll() is None


class TerminatingRelay:
    """A party in the middle that ends TLS with a certificate of its own on each side and
    relays the cleartext between: it can read everything, unless the proofs notice."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = int(self.listener.getsockname()[1])
        self.held: list[Any] = []
        self.threads = [threading.Thread(target=self._run, daemon=True)]
        self.threads[0].start()

    def _run(self) -> None:
        try:
            raw, _ = self.listener.accept()
        except OSError:
            return
        self.held.append(raw)
        ctx, _ = tls.server_context()  # this process's certificate, not the worker's
        try:
            master = ctx.wrap_socket(raw, server_side=True)
            self.held.append(master)
            plain = socket.create_connection(self.target)
            self.held.append(plain)
            worker = tls.client_context().wrap_socket(plain)
            self.held.append(worker)
        except (OSError, ssl.SSLError):
            return
        # both directions on one thread: an SSL object must not be read on one thread while
        # another writes to it (OpenSSL's rule; two pumps lost or garbled the worker's DENY
        # about once in 30-60 runs under load)
        t = threading.Thread(target=_pump_both, args=(master, worker), daemon=True)
        self.threads.append(t)
        t.start()

    def close(self) -> None:
        self.listener.close()
        for s in self.held:
            try:
                s.close()
            except OSError:
                pass
        for t in self.threads:
            t.join(WAIT)


def _pump_both(a: Any, b: Any) -> None:
    """Relay between two TLS sockets until either ends, on this thread alone."""
    other = {a: b, b: a}
    try:
        while True:
            ready = [s for s in (a, b) if s.pending()]
            if not ready:
                ready = select.select([a, b], [], [], WAIT)[0]
            if not ready:
                return  # nothing for WAIT seconds: the test is over
            for src in ready:
                data = src.recv(65536)
                if not data:
                    return
                other[src].sendall(data)
    except (OSError, ValueError):  # ValueError: closed by the test's end meanwhile
        pass
    finally:
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass


def test_a_relay_that_terminates_tls_cannot_pass_the_proofs(tls_everywhere: None) -> None:
    m = TcpOnly()
    m.relay = TerminatingRelay
    try:
        with pytest.raises(AuthenticationError):
            addprocs(m)
    finally:
        if isinstance(m.relay, TerminatingRelay):
            m.relay.close()
