"""SSH workers' launch failures: what went wrong on a host, and the one error addprocs raises.

A session that ends before its worker printed anything is diagnosed from its exit status and
the end of its stderr (:func:`hint`); ``addprocs`` then raises one :class:`SSHLaunchError` that
names every failed host and the workers that did start.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import termios
import time
from collections.abc import Sequence
from typing import Any

from ..errors import LaunchError
from .sshcommand import Machine

__all__ = [
    "Failed",
    "Failure",
    "SSHLaunchError",
    "bytes_ready",
    "failure_error",
    "hint",
    "read_available",
    "tail",
    "wait_readable",
]

_STDERR_TAIL = 20  # lines of a failed session's stderr in the error


class SSHLaunchError(LaunchError):
    """Workers on some hosts could not start. ``failures`` is ``[(machine spec, message)]``;
    ``started`` the ids of the workers that did start in this ``addprocs`` (they stay)."""

    def __init__(
        self,
        message: str,
        output: str = "",
        ospid: int | None = None,
        failures: Sequence[tuple[str, str]] = (),
        started: Sequence[int] = (),
    ) -> None:
        super().__init__(message, output, ospid)
        self.failures = list(failures)
        self.started = list(started)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.args[0], self.output, self.ospid, self.failures, self.started),
        )


class Failure:
    def __init__(self, machine: Machine, message: str, output: str) -> None:
        self.machine = machine
        self.message = message
        self.output = output


def tail(data: bytes) -> str:
    lines = data.decode("utf-8", "replace").rstrip().splitlines()
    return "\n".join(lines[-_STDERR_TAIL:])


_CSH_ERRORS = ("Command not found.", "Unmatched '", 'Unmatched "', "Illegal variable name.")


def hint(code: int | None, stderr: str, exename: str, shell: str = "posix") -> str:
    """A short diagnosis of a session that ended before the worker printed anything."""
    low = stderr.lower()
    if shell == "posix" and code != 255 and any(s in stderr for s in _CSH_ERRORS):
        # csh parsed the sh command line: the login shell of that user is csh or tcsh
        return (
            "the remote login shell is csh or tcsh (its errors are in the stderr below), "
            "which cannot run the sh commands of shell='posix': use shell='csh'"
        )
    if "no module named pydistributed" in low or "no module named 'pydistributed" in low:
        return f"pydistributed is not installed there for {exename!r}"
    if "permission denied" in low and code == 255:
        return "the host refused the login (is your key in its authorized_keys?)"
    if code == 255 and any(
        s in low
        for s in (
            "connection refused",
            "timed out",
            "no route to host",
            "could not resolve",
            "network is unreachable",
            "name or service not known",
            "connection closed",
            "connection reset",
        )
    ):
        return "ssh could not reach the host"
    if code == 255:
        return "ssh failed"
    if code == 127 or "not found" in low or "no such file" in low:
        return f"no Python at {exename!r} there, or a missing dir (set exename= or dir=)"
    return f"the session ended (status {code}) before the worker reported its address"


def bytes_ready(fd: int) -> int:
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


def wait_readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` has data or its end within ``timeout`` seconds (poll: any fd number)."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    return bool(p.poll(max(0, int(timeout * 1000))))


def read_available(file: Any, limit: float) -> bytes:
    """What ``file`` (a pipe) holds within ``limit`` seconds, up to its end; never blocks."""
    fd = file.fileno()
    chunks: list[bytes] = []
    deadline = time.monotonic() + limit
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not wait_readable(fd, left):
            break
        data = os.read(fd, 65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


class Failed(Exception):
    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output


def failure_error(failures: Sequence[Failure], started: list[int]) -> SSHLaunchError | None:
    """The one error for ``failures`` (None: there is none); ``started``: the new workers."""
    if not failures:
        return None
    # one entry per host and reason, with how many of its workers it stopped (a host given
    # with a count fails the same way for each); the first session's stderr stands for all
    groups: dict[tuple[str, str], tuple[int, str]] = {}
    for f in failures:
        key = (f.machine.spec, f.message)
        n, output = groups.get(key, (0, f.output))
        groups[key] = (n + 1, output)
    parts = []
    for (spec, msg), (n, output) in groups.items():
        text = f"  {spec}{f' ({n} workers)' if n > 1 else ''}: {msg}"
        if output:
            text += "; the session's stderr ended with:\n" + "\n".join(
                "    " + line for line in output.splitlines()
            )
        parts.append(text)
    hosts = sorted({f.machine.spec for f in failures})
    if started:
        kept = f"workers {started} started on the other hosts and stay in the cluster"
    else:
        kept = "no worker started"
    message = (
        f"addprocs: workers could not start on {len(hosts)} host"
        f"{'s' if len(hosts) != 1 else ''} ({', '.join(hosts)}); {kept}:\n" + "\n".join(parts)
    )
    return SSHLaunchError(
        message,
        failures[0].output,
        None,
        failures=list(groups),
        started=started,
    )
