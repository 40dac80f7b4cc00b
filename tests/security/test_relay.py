"""A relay on the path between the master and a worker that passes both proofs along learns
nothing it can use: after the handshake every frame is authenticated with a key of this
connection, so one injected message, either way, only gets the connection dropped; the code
in it never runs."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from pydistributed import (
    ClusterManager,
    ProcessExitedException,
    WorkerConfig,
    addprocs,
    cluster_cookie,
    remotecall_fetch,
)
from pydistributed.codec import encode
from pydistributed.messages import CallFetch, RemoteDo
from tests.conftest import end_workers
from tests.security.conftest import WAIT, end, wait_until


def _touch(path: str) -> None:
    Path(path).touch()


class Relay:
    """A TCP relay between the master and a worker; it can inject a message either way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = int(self.listener.getsockname()[1])
        self.to_worker: socket.socket | None = None
        self.to_master: socket.socket | None = None
        self.relayed = 0
        self.seen = bytearray()  # everything it relayed (the tests' traffic is small)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            master, _ = self.listener.accept()
        except OSError:
            return  # closed before anybody came
        worker = socket.create_connection(self.target)
        self.to_master, self.to_worker = master, worker
        self._pumps = [
            threading.Thread(target=self._pump, args=(a, b), daemon=True)
            for a, b in ((master, worker), (worker, master))
        ]
        for t in self._pumps:
            t.start()

    def close(self) -> None:
        """Close everything the relay holds, and wait for its threads."""
        self.listener.close()
        for s in (self.to_master, self.to_worker):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in getattr(self, "_pumps", []):
            t.join(WAIT)
        for s in (self.to_master, self.to_worker):
            if s is not None:
                s.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    dst.sendall(data)
                    self.relayed += len(data)
                    self.seen += data
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def inject(self, to: socket.socket, msg: Any) -> None:
        """A well-formed message with a made-up tag (the relay has no key)."""
        frames, _ = encode(msg, 2)
        from pydistributed.transport import _prefix

        prefix, _, _ = _prefix(frames, 1 << 30)
        with self._lock:
            to.sendall(prefix + b"".join(frames) + os.urandom(16))


class RelayedManager(ClusterManager):
    """Starts a worker by hand and announces it at the relay's port (TCP: no local twin)."""

    def __init__(self) -> None:
        self.relay: Relay | None = None
        self.proc: subprocess.Popen[str] | None = None

    def launch(self, params: Any, launched: Any, launch_ntfy: threading.Condition) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen(
            [sys.executable, "-m", "pydistributed.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(params["cookie"] + "\n")
        proc.stdin.close()
        self.proc = proc
        port, _, host = proc.stdout.readline().strip().split(":", 1)[1].partition("#")
        self.relay = Relay((host, int(port)))
        with launch_ntfy:
            launched.append(WorkerConfig(host="127.0.0.1", port=self.relay.port, process=proc))
            launch_ntfy.notify_all()


@pytest.fixture
def relayed() -> Any:
    m = RelayedManager()
    (pid,) = addprocs(m)
    assert m.relay is not None and m.relay.relayed > 0  # everything went through the relay
    yield pid, m
    end_workers([pid])
    if m.proc is not None:
        end(m.proc)
    m.relay.close()


def test_a_relayed_connection_works(relayed: Any) -> None:
    pid, _ = relayed
    assert remotecall_fetch(os.getpid, pid) != os.getpid()


def test_a_message_injected_toward_the_worker_is_refused(relayed: Any, tmp_path: Path) -> None:
    pid, m = relayed
    marker = tmp_path / "injected-on-the-worker"
    m.relay.inject(m.relay.to_worker, CallFetch(99, _touch, (str(marker),), {}))
    with pytest.raises(ProcessExitedException):
        wait_until(lambda: remotecall_fetch(os.getpid, pid) and None, "the worker to drop the link")
    assert not marker.exists()


def test_a_message_injected_toward_the_master_is_refused(relayed: Any, tmp_path: Path) -> None:
    pid, m = relayed
    marker = tmp_path / "injected-on-the-master"
    m.relay.inject(m.relay.to_master, RemoteDo(_touch, (str(marker),), {}))
    with pytest.raises(ProcessExitedException):
        wait_until(lambda: remotecall_fetch(os.getpid, pid) and None, "the master to drop the link")
    assert not marker.exists()


def _cookie_digest() -> str:
    return hashlib.sha256(cluster_cookie().encode()).hexdigest()


def test_the_relay_never_sees_the_cookie(relayed: Any) -> None:
    pid, m = relayed
    assert remotecall_fetch(_cookie_digest, pid) == _cookie_digest()  # the worker has it
    assert cluster_cookie().encode() not in bytes(m.relay.seen)  # the wire never carried it
