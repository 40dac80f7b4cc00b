"""A worker whose output pipes have lost their reader stays usable, its output dropped.

A worker's standard output and error are pipes to whoever started it: the master (local
workers), or its ssh session (``sshd`` on the worker's host, which sends them to the master's
ssh client). When that session ends while the worker is still connected (the master's ssh
client killed, the host's ``sshd: user@notty`` process killed), a write to the pipes fails with
``EPIPE``, and every call that prints would raise ``BrokenPipeError``. Two things prevent that:

* the worker's ``sys.stdout`` and ``sys.stderr`` are the ``io.TextIOWrapper`` streams a fresh
  interpreter makes for descriptors 1 and 2 (:func:`standard_stream`: same encoding, errors,
  buffering; ``sys.__stdout__`` is ``sys.stdout``), over a :class:`GuardedFileIO`: a write
  that fails with ``BrokenPipeError`` puts ``/dev/null`` on that file descriptor
  (:func:`drop_output`) and is done again there, so Python code that prints never fails, through
  ``sys.stdout`` or ``sys.stdout.buffer`` (a stream the program put there itself, before
  :func:`guard_streams`, is wrapped in a :class:`GuardedStream` instead);
* the master's output relay sees the end of the worker's stream while the worker is still in
  the cluster (:class:`OutputLoss`): it calls :func:`drop_output` on the worker for that stream's
  descriptor (which also covers what writes to the descriptor directly: C code, child
  processes, ``sys.stdout.buffer``), and logs once that the worker's output is lost.

``/dev/null`` is put on the descriptor itself (``dup2``), so every writer of it, Python's or
not, writes there from then on; the pipe cannot get a reader again.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calls import Calls
    from .connections import Connections
    from .registry import Registry
    from .relay import RelayedStream

__all__ = [
    "GuardedFileIO",
    "GuardedStream",
    "OutputLoss",
    "drop_output",
    "guard_streams",
    "standard_stream",
]

log = logging.getLogger("pydistributed")

_FDS = {"stdout": 1, "stderr": 2}
_lock = threading.Lock()
_dropped: set[int] = set()  # this process's descriptors that have /dev/null now
_ANSWER_TIMEOUT = 30.0  # the master's wait for the worker to answer drop_output


# -- the worker's side ---------------------------------------------------------------------


def drop_output(fd: int) -> bool:
    """Put ``/dev/null`` on file descriptor ``fd`` (1 or 2) of this process, once; whether
    this call did it."""
    with _lock:
        if fd in _dropped:
            return False
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, fd)
        finally:
            os.close(null)
        _dropped.add(fd)
        return True


class GuardedStream:
    """``sys.stdout`` / ``sys.stderr`` of a worker: a write that meets a broken pipe goes to
    ``/dev/null`` instead (see the module's docstring); everything else is the stream's."""

    def __init__(self, stream: Any, fd: int) -> None:
        self._stream = stream
        self._fd = fd

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError:
            drop_output(self._fd)
        return int(self._stream.write(text))  # buffered text too goes to /dev/null now

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            drop_output(self._fd)
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        if name in ("_stream", "_fd"):  # not set yet (copy.copy makes one without __init__)
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self._stream)))


class GuardedFileIO(io.FileIO):
    """The raw file under a worker's ``sys.stdout`` / ``sys.stderr``: a write that meets a
    broken pipe puts ``/dev/null`` on its descriptor and is done again there (see the
    module's docstring). Below the text and buffer layers, it covers ``sys.stdout.buffer`` and
    a stream reconfigured by the program too."""

    def write(self, b: Any, /) -> int:
        try:
            return _file_write(self, b)  # (not super(): a print makes several writes)
        except BrokenPipeError:
            drop_output(self.fileno())
        return _file_write(self, b)


_file_write = io.FileIO.write


_NAMES = ("<stdin>", "<stdout>", "<stderr>")


def standard_stream(fd: int, encoding: str, errors: str, write_through: bool) -> io.TextIOWrapper:
    """``sys.stdin`` (``fd`` 0), ``sys.stdout`` (1) or ``sys.stderr`` (2) as a fresh interpreter
    makes it for descriptor ``fd`` (CPython's ``create_stdio``): a ``TextIOWrapper`` with
    ``encoding`` and ``errors`` (``-u`` / ``PYTHONUNBUFFERED``: ``write_through`` and no write
    buffer; else line-buffered on a terminal and on stderr), newlines untranslated, over a raw
    file that does not close ``fd``; for 1 and 2 that raw file is a :class:`GuardedFileIO`."""
    if fd not in (0, 1, 2):
        raise ValueError(f"a standard stream is on descriptor 0, 1 or 2, not {fd!r}")
    raw = (io.FileIO if fd == 0 else GuardedFileIO)(fd, "rb" if fd == 0 else "wb", closefd=False)
    raw.name = _NAMES[fd]  # type: ignore[misc]  # as the interpreter names it
    try:
        size = os.fstat(fd).st_blksize
    except OSError:
        size = 0
    size = size if size > 1 else io.DEFAULT_BUFFER_SIZE  # io.open's choice
    buffered = not write_through
    buf: Any
    if fd == 0:
        buf = io.BufferedReader(raw, size)  # stdin is always buffered (TextIOWrapper reads read1)
    else:
        buf = io.BufferedWriter(raw, size) if buffered else raw
    stream = io.TextIOWrapper(
        buf,
        encoding=encoding,
        errors=errors,
        newline="\n",
        line_buffering=buffered and (raw.isatty() or fd == 2),
        write_through=write_through,
    )
    stream.mode = "r" if fd == 0 else "w"  # type: ignore[misc]
    return stream


def is_guarded(stream: Any) -> bool:
    """Whether ``stream`` is guarded already (a :class:`GuardedStream`, or a stream over a
    :class:`GuardedFileIO`)."""
    if isinstance(stream, GuardedStream):
        return True
    buf = getattr(stream, "buffer", None)
    return isinstance(buf, GuardedFileIO) or isinstance(getattr(buf, "raw", None), GuardedFileIO)


def _interpreters(stream: Any, fd: int) -> bool:
    """Whether ``stream`` is one the interpreter made for ``fd``: a ``TextIOWrapper`` over a
    file on ``fd`` that does not close it."""
    if type(stream) is not io.TextIOWrapper:
        return False
    buf = stream.buffer
    raw = buf if isinstance(buf, io.FileIO) else getattr(buf, "raw", None)
    return isinstance(raw, io.FileIO) and not raw.closefd and raw.fileno() == fd


def guard_streams() -> None:
    """Guard this worker's ``sys.stdout`` and ``sys.stderr`` (once): the interpreter's own
    are made again over a :class:`GuardedFileIO` (:func:`standard_stream`, with their
    settings; ``sys.__stdout__`` / ``sys.__stderr__`` follow); another stream is wrapped in a
    :class:`GuardedStream`."""
    for name, fd in _FDS.items():
        stream = getattr(sys, name)
        if stream is None or is_guarded(stream):
            continue
        if not _interpreters(stream, fd):
            setattr(sys, name, GuardedStream(stream, fd))
            continue
        stream.flush()
        guarded = standard_stream(fd, stream.encoding, stream.errors, stream.write_through)
        if getattr(sys, f"__{name}__") is stream:
            setattr(sys, f"__{name}__", guarded)
        setattr(sys, name, guarded)  # the old one does not close fd (closefd is False)


# -- the master's side ---------------------------------------------------------------------


class OutputLoss:
    """The master's watch over its workers' output streams (see the module's docstring)."""

    def __init__(self, registry: Registry, connections: Connections, calls: Calls) -> None:
        self.registry = registry
        self.connections = connections
        self.calls = calls
        self._logged: set[int] = set()
        self._lock = threading.Lock()

    def watch(self, streams: list[RelayedStream], pid: int, carrier: str) -> None:
        """Once worker ``pid`` has joined: when one of its relayed ``streams`` ends while it is
        still connected, have it drop that output and log once that it is lost (``carrier``:
        what carried its output, e.g. "its ssh session")."""
        for s in streams:
            if s.kind in _FDS:
                s.set_after_end(functools.partial(self._ended, pid, s.kind, carrier))

    def _ended(self, pid: int, kind: str, carrier: str) -> None:
        # on the relay's thread, which must not wait for a worker: the call has its own
        peer = self.connections.snapshot().get(pid)
        info = self.registry.get(pid)
        if info is None or info.removing or peer is None or peer.closed:
            return  # it is leaving: its streams end with it
        threading.Thread(
            target=self._drop, args=(pid, kind, carrier), name="pydist-output-lost", daemon=True
        ).start()

    def _drop(self, pid: int, kind: str, carrier: str) -> None:
        try:
            self.calls.call_fetch(pid, drop_output, (_FDS[kind],), timeout=_ANSWER_TIMEOUT)
        except Exception:
            return  # it left meanwhile (or does not answer: the heartbeat's matter)
        with self._lock:
            if pid in self._logged:
                return
            self._logged.add(pid)
        log.warning(
            "worker %d's output is lost: %s ended while it is still connected (its %s "
            "closed); it stays in the cluster, and what it prints is dropped from now on",
            pid,
            carrier,
            kind,
        )
