"""Relaying workers' standard output and error to the master, in whole lines.

One thread watches every worker pipe with a selector. A line from worker N's stdout is printed
on the master's stdout as ``From worker N:\\t<line>``, and stderr likewise on stderr, as soon as
the line is complete; a last line without a newline is printed (with one) when the stream ends.
Lines that arrive before the worker has an id are held and printed once it has one. The last
lines of each stream are kept, so that a worker that fails to start can be reported with the
end of its stderr. A stdout stream can also watch for the worker's banner
``pydist_worker:PORT#HOST``, which is not relayed.

Whole lines only, never inside a line of the master's own. The master's ``print`` writes its
pieces separately (``"x"``, ``" "``, ``"1"``, ``"\\n"``), and a relayed line written in between
would tear both lines. So from the first worker stream relayed until the last one has ended,
``sys.stdout`` and ``sys.stderr`` are thin wrappers (``linestreams.LineStream``) that pass every
write through unchanged and note whether the master's text ends a line (a ``\\n``, or a ``\\r``:
a terminal is back at the line start). The lines of one read from a worker are written in one
``write``, and only at a line start of the master's: while its line is unfinished they are held,
and written right after the write that finishes it. They are held for at most
``linestreams.HOLD_SECONDS`` (1 s): then the master's unfinished line is ended with a newline
and the held lines follow, so worker output is never held for long nor lost. When stdout and
stderr reach one file (a terminal, ``2>&1``), a line unfinished on either holds both, and the
other stream is flushed before relayed text is written, which keeps the order. While a tqdm bar
is shown (pmap's ``progress=True``, or the program's own bar), relayed text is written inside
``tqdm.external_write_mode``, as ``tqdm.write`` writes: the bar is cleared, the lines printed,
the bar drawn again below them. At the master's exit (after the cluster's shutdown), the relay
gets up to 1 s to read what the ended workers wrote last, then anything held is printed.

Not covered: a stream the program set itself after the wrappers were put in place is left alone
(relayed text goes to it in one ``write`` per read, as it comes), and text written through a
reference taken before the first worker (``out = sys.stdout`` early on, a logging handler made
earlier) bypasses the wrappers; each such write is whole, but a line written in pieces that way
can still take a relayed line in between.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import selectors
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import linestreams

__all__ = ["BANNER_PREFIX", "OutputRelay", "RelayedStream"]

BANNER_PREFIX = "pydist_worker:"
_EXIT_WAIT = 1.0  # at exit, how long the relay may take to read the ended workers' last output

log = logging.getLogger("pydistributed")


_relays: weakref.WeakSet[OutputRelay] = weakref.WeakSet()


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
        self.on_hold: Callable[[], None] = _nothing  # a hold started (the relay must wake)
        self.on_end: Callable[[], None] = _nothing
        self._after_end: Callable[[], None] | None = None  # see set_after_end

    def tail_text(self) -> str:
        return "\n".join(self.tail)

    def set_pid(self, pid: int) -> None:
        with self._lock:
            self.pid = pid
            held, self.held = self.held, []
        if held:
            self._emit(pid, held)

    def set_after_end(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` once when the stream ends (now, if it has)."""
        with self._lock:
            ended = self.eof.is_set()
            if not ended:
                self._after_end = hook
        if ended:
            hook()

    def feed(self, data: bytes) -> None:
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        self._lines([self._decode(raw).rstrip("\r") for raw in lines])

    def _decode(self, raw: bytes) -> str:
        """A line of the worker's: UTF-8, or else in the encoding of the master's stream it
        goes to (a local worker inherits the master's ``PYTHONIOENCODING`` and locale, so it
        writes in that encoding: ``latin-1`` bytes are not UTF-8)."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
        import sys

        enc = getattr(getattr(sys, f"__{self.kind}__", None), "encoding", None) or "utf-8"
        try:
            return raw.decode(enc, "replace")
        except LookupError:
            return raw.decode("utf-8", "replace")

    def finish(self) -> None:
        if self.eof.is_set():
            return
        if self._partial:
            self._lines([self._decode(self._partial)])
            self._partial = b""
        with self._lock:
            self.eof.set()
            hook, self._after_end = self._after_end, None
        self.banner_event.set()
        self.on_end()
        if hook is not None:
            try:
                hook()
            except Exception:
                log.exception("a hook at the end of a worker's %s failed", self.kind)

    def _lines(self, lines: list[str]) -> None:
        out = []
        for line in lines:
            if self.want_banner and self.banner is None and line.startswith(BANNER_PREFIX):
                self.banner = parse_banner(line)
                self.banner_event.set()
                continue
            self.tail.append(line)
            out.append(line)
        if not out:
            return
        with self._lock:
            pid = self.pid
            if pid is None:
                self.held.extend(out)
                del self.held[:-1000]
                return
        self._emit(pid, out)

    def _emit(self, pid: int, lines: list[str]) -> None:
        # the lines of one read in one write: whole lines, and one bar redraw for them all
        text = "".join(f"From worker {pid}:\t{line}\n" for line in lines)
        if linestreams.print_relayed(self.kind, text):
            self.on_hold()


def _nothing() -> None:
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
        self._streams: set[RelayedStream] = set()
        _relays.add(self)

    def add(self, file: Any, kind: str, want_banner: bool = False) -> RelayedStream:
        """Start relaying ``file`` (a pipe from a worker)."""
        stream = RelayedStream(file, kind, want_banner)
        stream.on_end = lambda: self._ended(stream)
        with self._lock:
            self._streams.add(stream)
        linestreams.started()
        try:
            fd = file.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        with self._lock:
            if fd is not None:
                os.set_blocking(fd, False)
                self._new.append((fd, stream))
            if self._thread is None:  # it also writes held text when it is due
                self._thread = threading.Thread(
                    target=self._loop, name="pydist-output-relay", daemon=True
                )
                self._thread.start()
        if fd is None:
            stream.on_hold = self._wake
            t = threading.Thread(target=self._read_blocking, args=(stream,), daemon=True)
            t.start()
        else:
            self._wake()
        return stream

    def wait_ended(self, deadline: float) -> None:
        """Wait (until ``deadline``) for every stream to end, that is, to be read to its end."""
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.eof.wait(max(0.0, deadline - time.monotonic()))

    def _ended(self, stream: RelayedStream) -> None:
        with self._lock:
            self._streams.discard(stream)
        linestreams.ended()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

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
        due = linestreams.release_overdue()  # held text that waited long enough is written
        linestreams.uninstall_if_idle()
        for key, _ in self._sel.select(due):
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


def _at_exit() -> None:
    """Registered at import, so it runs after the cluster's shutdown (atexit runs in reverse):
    the workers have ended; let the relay read their last output, then print what is held."""
    deadline = time.monotonic() + _EXIT_WAIT
    for relay in list(_relays):
        relay.wait_ended(deadline)
    linestreams.release_all()
    linestreams.uninstall_if_idle(at_exit=True)


atexit.register(_at_exit)
