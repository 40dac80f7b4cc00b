"""An ``ssh -L`` forward from this host to a worker that listens on its host's loopback.

``addprocs(machines, tunnel=True)``: the master reaches each worker through its own forward,
``127.0.0.1:LOCAL -> (on the worker's host) 127.0.0.1:PORT``, made by an ssh session that runs
``cat > /dev/null`` on the far side: the session, and so the forward, ends when its standard
input closes, which :meth:`Tunnel.close` does, and which the kernel does when this process
dies, however it dies (no ssh client is left behind). ``ServerAliveInterval`` makes the session,
and the master's connection through it, end when the host stops answering.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time

from .. import sockets

__all__ = ["Tunnel", "TunnelError"]

_RETRY = 0.05  # seconds between attempts to connect through a forward that is starting


class TunnelError(OSError):
    """The forward could not be made; the message ends with ssh's stderr."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Tunnel:
    """One forward; ``ssh_base`` is the ssh command up to the destination (flags included)."""

    def __init__(self, ssh_base: list[str], destination: str, host: str, port: int) -> None:
        self.ssh_base = list(ssh_base)
        self.destination = destination
        self.host = host
        self.port = int(port)
        self.local_port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def open(self, timeout: float) -> socket.socket:
        """Start the forward and connect through it; the connected socket.

        Raises:
            TunnelError: ssh exited (after a few tries with other local ports) or the forward
                did not carry a connection within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last = ""
        for _ in range(5):
            lport = _free_port()
            proc = subprocess.Popen(
                [
                    *self.ssh_base,
                    "-o",
                    "ExitOnForwardFailure=yes",
                    "-o",
                    "ServerAliveInterval=2",  # a cut host: the forward ends in 8-10 s
                    "-o",
                    "ServerAliveCountMax=4",
                    "-L",
                    f"127.0.0.1:{lport}:{self.host}:{self.port}",
                    self.destination,
                    "cat > /dev/null",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            while True:
                if proc.poll() is not None:
                    assert proc.stderr is not None
                    last = proc.stderr.read().decode("utf-8", "replace").strip()
                    self._end(proc)
                    break
                try:
                    sock = sockets.connect_tcp("127.0.0.1", lport, timeout=5.0)
                except OSError:
                    if time.monotonic() > deadline:
                        self._end(proc)
                        raise TunnelError(
                            f"the ssh forward to {self.destination} ({self.host}:{self.port}) "
                            f"did not open within {timeout:g} s"
                        ) from None
                    time.sleep(_RETRY)
                    continue
                self.local_port, self.process = lport, proc
                return sock
            if "address already in use" not in last.lower() or time.monotonic() > deadline:
                break
        raise TunnelError(
            f"ssh could not forward a local port to {self.host}:{self.port} on "
            f"{self.destination}: {last or 'ssh exited'}"
        )

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        for f in (proc.stdin, proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        """End the forward (closing its session's standard input ends the session)."""
        proc, self.process = self.process, None
        if proc is not None:
            self._end(proc)
