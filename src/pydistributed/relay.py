"""Relaying workers' standard output and error to the master, line by line.

One thread watches every worker pipe with a selector. A line from worker N's stdout is printed
on the master's stdout as ``From worker N:\\t<line>``, and stderr likewise on stderr, as soon as
the line is complete. Lines that arrive before the worker has an id are held and printed once it
has one. The last lines of each stream are kept, so that a worker that fails to start can be
reported with the end of its stderr. A stdout stream can also watch for the worker's banner
``pydist_worker:PORT#HOST``, which is not relayed.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import sys
import threading
from typing import Any

__all__ = ["BANNER_PREFIX", "OutputRelay", "RelayedStream"]

BANNER_PREFIX = "pydist_worker:"

log = logging.getLogger("pydistributed")


class RelayedStream:
    """One worker stream being relayed."""

    def __init__(self, file: Any, kind: str, want_banner: bool) -> None:
        self.file = file
        self.kind = kind  # "stdout" or "stderr"
        self.pid: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.held: list[str] = []
        self._partial = b""
        self.want_banner = want_banner
        self.banner: tuple[str, int] | None = None
        self.banner_event = threading.Event()
        self.eof = threading.Event()
        self._lock = threading.Lock()

    def tail_text(self) -> str:
        return "\n".join(self.tail)

    def set_pid(self, pid: int) -> None:
        with self._lock:
            self.pid = pid
            held, self.held = self.held, []
        for line in held:
            self._emit(pid, line)

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace").rstrip("\r"))

    def finish(self) -> None:
        if self._partial:
            self._line(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self.eof.set()
        self.banner_event.set()

    def _line(self, line: str) -> None:
        if self.want_banner and self.banner is None and line.startswith(BANNER_PREFIX):
            self.banner = parse_banner(line)
            self.banner_event.set()
            return
        self.tail.append(line)
        with self._lock:
            pid = self.pid
            if pid is None:
                self.held.append(line)
                del self.held[:-1000]
                return
        self._emit(pid, line)

    def _emit(self, pid: int, line: str) -> None:
        out = sys.stdout if self.kind == "stdout" else sys.stderr
        try:
            out.write(f"From worker {pid}:\t{line}\n")
            out.flush()
        except (OSError, ValueError):
            pass


def parse_banner(line: str) -> tuple[str, int] | None:
    """``pydist_worker:PORT#HOST`` -> ``(HOST, PORT)``; None when malformed."""
    rest = line.strip()[len(BANNER_PREFIX) :]
    port_s, sep, host = rest.partition("#")
    if not sep:
        return None
    try:
        port = int(port_s)
    except ValueError:
        return None
    if not host or not 0 < port < 65536:
        return None
    return host, port


class OutputRelay:
    """The relay thread: started on first use, one per master process."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._new: list[tuple[int, RelayedStream]] = []

    def add(self, file: Any, kind: str, want_banner: bool = False) -> RelayedStream:
        """Start relaying ``file`` (a pipe from a worker)."""
        stream = RelayedStream(file, kind, want_banner)
        try:
            fd = file.fileno()
        except (AttributeError, OSError, ValueError):
            t = threading.Thread(target=self._read_blocking, args=(stream,), daemon=True)
            t.start()
            return stream
        os.set_blocking(fd, False)
        with self._lock:
            self._new.append((fd, stream))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pydist-output-relay", daemon=True
                )
                self._thread.start()
        os.write(self._wake_w, b"x")
        return stream

    @staticmethod
    def _read_blocking(stream: RelayedStream) -> None:
        try:
            while True:
                data = (
                    stream.file.read1(65536)
                    if hasattr(stream.file, "read1")
                    else (stream.file.readline())
                )
                if not data:
                    break
                stream.feed(data if isinstance(data, bytes) else data.encode())
        except (OSError, ValueError):
            pass
        stream.finish()

    def _loop(self) -> None:
        while True:
            try:
                self._turn()
            except Exception:  # the relay serves every worker: it must not die
                log.exception("the output relay failed; going on")

    def _turn(self) -> None:
        for key, _ in self._sel.select():
            if key.data is None:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
                with self._lock:
                    new, self._new = self._new, []
                for fd, stream in new:
                    self._register(fd, stream)
                continue
            stream = key.data
            try:
                data = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                stream.feed(data)
            else:
                self._end(key.fd, stream)

    def _register(self, fd: int, stream: RelayedStream) -> None:
        try:
            old = self._sel.get_key(fd)
        except KeyError:
            pass
        else:
            # the number of a pipe that was closed elsewhere before its end was read here,
            # now reused by a new worker's pipe: that stream has ended (and its file must not
            # be closed again: the number is the new pipe's now)
            self._end(fd, old.data, close=False)
        self._sel.register(fd, selectors.EVENT_READ, stream)

    def _end(self, fd: int, stream: RelayedStream, close: bool = True) -> None:
        self._sel.unregister(fd)
        if close:
            try:
                stream.file.close()
            except (OSError, ValueError):
                pass
        stream.finish()
