"""Attackers and raw workers for the security tests.

Every attack runs against real processes: a worker started by hand (``raw_worker``), the
master of this test process, and an attacker that is either this test process acting as a peer
without (or with) the cookie, or a child process running as another user (``as_other_user``:
root forks, drops to ``nobody``, and runs a small socket program; no interpreter is exec'd, so
it works wherever the test's Python lives).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pydistributed import connections, handshake, sockets, transport
from pydistributed.codec import encode
from pydistributed.messages import JoinPGRP, Message

NOBODY = 65534
COOKIE = "security-tests-cookie-0123456789"
WAIT = 20.0


@dataclass
class RawWorker:
    """A worker process started by hand, with no master yet."""

    proc: subprocess.Popen[str]
    host: str
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


def _start_raw_worker(cookie: str, bind_to: str = "127.0.0.1:0", **env: str) -> RawWorker:
    environ = dict(os.environ, PYDIST_COOKIE=cookie, **env)
    environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pydistributed.worker", "--bind-to", bind_to],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        start_new_session=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("pydist_worker:"):
        proc.kill()
        _, err = proc.communicate(timeout=WAIT)
        raise RuntimeError(f"the worker did not start: {line!r} {err}")
    port, _, host = line.split(":", 1)[1].partition("#")
    return RawWorker(proc, host, int(port))


def end(proc: subprocess.Popen[Any]) -> None:
    """Kill ``proc`` (by its pid) if it still runs, and reap it."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        proc.kill()
    try:
        proc.communicate(timeout=WAIT)
    except (ValueError, subprocess.TimeoutExpired):  # ValueError: its stdin was closed already
        proc.wait(WAIT)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def raw_worker() -> Iterator[Callable[..., RawWorker]]:
    """``raw_worker(cookie=COOKIE, bind_to=..., **env)``: started, and killed after the test."""
    started: list[RawWorker] = []

    def start(cookie: str = COOKIE, bind_to: str = "127.0.0.1:0", **env: str) -> RawWorker:
        w = _start_raw_worker(cookie, bind_to, **env)
        started.append(w)
        return w

    yield start
    for w in started:
        end(w.proc)


class FakeMaster:
    """This test process acting as a master that knows the cookie: an authenticated peer of a
    raw worker, speaking raw frames (with their MACs)."""

    def __init__(self, worker: RawWorker, cookie: str = COOKIE) -> None:
        self.sock = socket.create_connection((worker.host, worker.port), timeout=WAIT)
        self.reader, self.writer = sockets.socket_streams(self.sock)
        read_exact, write = handshake.stream_io(self.reader, self.writer)
        try:
            session = handshake.client_handshake(read_exact, write, cookie)
        except BaseException:
            self.sock.close()
            raise
        self.session = session
        self.writer.mac, self.mac_in = connections.session_macs(session)

    def send(self, msg: Message) -> None:
        frames, _ = encode(msg, 2)
        self.writer.write_frames(frames)

    def join(self, pid: int = 2) -> Any:
        self.send(JoinPGRP(1, pid, "all_to_all", True, (), "localhost", ()))
        return self.read()

    def read(self) -> Any:
        from pydistributed.codec import decode

        return decode(transport.read_message(self.reader, None, None, self.mac_in))

    def close(self) -> None:
        self.sock.close()


def as_other_user(program: Callable[[], None]) -> int:
    """Fork a child that drops to the user ``nobody`` and runs ``program`` (socket calls
    only), then exits; returns its pid. The caller ends it with ``kill_child``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the attacker runs as another user")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            program()
        finally:
            os._exit(0)
    return pid


def kill_child(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
