"""Every public exception of pydistributed.

The tree::

    BaseException
     +-- KeyboardInterrupt
     |    +-- InterruptException        a call was interrupted (``interrupt``, Ctrl-C)
     +-- Exception
          +-- RemoteException           a call raised on another process; wraps a CapturedException
          +-- CapturedException         an exception and its traceback text, made portable
          +-- ProcessExitedException    the process a call or reference needs is gone
          |                             (``.removed``: by rmprocs, not by a crash or a lost link)
          +-- ExceptionGroup
          |    +-- CompositeException   the errors of several tasks or processes at once
          +-- ProtocolError             a peer broke the wire protocol (garbled frame, bad size)
          |    +-- AuthenticationError  a peer failed the cookie handshake or speaks another version
          +-- RuntimeError
               +-- ChannelClosedError   put on a closed channel, or take/fetch on a closed empty one
               +-- LaunchError          a worker failed to start or join; carries its output's tail
                    +-- LaunchTimeoutError (also a TimeoutError) it did not report in time

Errors are translated once, where layers meet: an exception raised by a remote call is captured
on the worker (:func:`capture`, which leaves out pydistributed's own frames), sent back, and
raised on the caller as a :class:`RemoteException`, whose ``str()`` is ``On worker N: Type:
message`` and then the remote traceback (as API.md and Julia's ``On worker N:`` have it), with
its source lines read here when the worker had none (a function shipped by value keeps its
file name; the file is on the caller's machine).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import types
from collections.abc import Sequence
from typing import Any

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import ExceptionGroup

__all__ = [
    "AuthenticationError",
    "CapturedException",
    "ChannelClosedError",
    "CompositeException",
    "FileNotSendable",
    "InterruptException",
    "LaunchError",
    "LaunchTimeoutError",
    "ProcessExitedException",
    "ProtocolError",
    "RemoteException",
]


class FileNotSendable(TypeError):
    """An open file was to be pickled: it belongs to the process that opened it."""


class InterruptException(KeyboardInterrupt):
    """The call running on a worker was interrupted by :func:`interrupt` (Julia's Ctrl-C)."""


class ProtocolError(Exception):
    """A peer sent something that is not a valid pydistributed message."""


class AuthenticationError(ProtocolError):
    """A peer could not prove that it knows the cluster cookie, or speaks another version."""


class ChannelClosedError(RuntimeError):
    """The channel is closed: no more ``put``, and ``take``/``fetch`` once it is empty."""


class _RemoteStandIn(Exception):
    """Base class of the stand-ins made for exceptions that could not be pickled."""

    remote_type: str = "Exception"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_make_standin, (self.remote_type, str(self)))


def _make_standin(type_name: str, message: str) -> Exception:
    """Build an exception whose type is named like the remote one, for display and matching."""
    short = type_name.rsplit(".", 1)[-1] or "Exception"
    cls = type(short, (_RemoteStandIn,), {"remote_type": type_name, "__module__": "remote"})
    return cls(message)


class CapturedException(Exception):
    """An exception raised on some process, with the text of its traceback there.

    Attributes:
        exc: the original exception object when it could be pickled, otherwise a stand-in
            exception whose class has the same name and whose message is the same.
        traceback_text: the formatted remote traceback.
    """

    def __init__(self, exc: BaseException, traceback_text: str = "") -> None:
        super().__init__(exc, traceback_text)
        self.exc = exc
        self.traceback_text = traceback_text

    @property
    def type_name(self) -> str:
        """The qualified name of the remote exception's class."""
        if isinstance(self.exc, _RemoteStandIn):
            return self.exc.remote_type
        return _qualname(self.exc)

    def __str__(self) -> str:
        head = f"{self.type_name}: {self.exc}" if str(self.exc) else self.type_name
        if self.traceback_text:
            return f"{head}\n{self.traceback_text.rstrip()}"
        return head

    def __reduce__(self) -> tuple[Any, ...]:
        # The exception travels as its own pickle inside ours, beside its type name and
        # message: if the receiver cannot unpickle it (a class only the sender has), a
        # stand-in of the same name and message takes its place and nothing else is lost.
        try:
            import cloudpickle

            blob: bytes | None = cloudpickle.dumps(self.exc, protocol=5)
        except Exception:
            blob = None
        return (_rebuild_captured, (self.type_name, str(self.exc), self.traceback_text, blob))


def _rebuild_captured(
    type_name: str, message: str, traceback_text: str, blob: bytes | None
) -> CapturedException:
    exc: BaseException | None = None
    if blob is not None:
        try:
            import pickle

            exc = pickle.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = _make_standin(type_name, message)
    return CapturedException(exc, traceback_text)


def describe_process(pid: int) -> str:
    """How a message names process ``pid``: ``worker N``, or the master (process 1)."""
    return "process 1 (the master)" if pid == 1 else f"worker {pid}"


class RemoteException(Exception):
    """An exception raised by a call on process ``pid``.

    ``str()`` reads ``On worker N: Type: message`` (``On process 1 (the master): ...`` for the
    master), then the remote traceback (``captured.traceback_text``, with the source lines the
    remote process could not show read here when this process has the files: a function
    shipped from here by value names its file here), as Julia's ``On worker N:`` shows the
    remote stack. ``captured.exc`` is the original exception (or its stand-in).
    """

    def __init__(self, pid: int, captured: CapturedException) -> None:
        super().__init__(pid, captured)
        self.pid = pid
        self.captured = captured
        self.__suppress_context__ = True

    def __str__(self) -> str:
        c = self.captured
        text = c.traceback_text
        where = describe_process(self.pid)
        note = _note(text)
        if note:  # the text says what happened, before the exception (an undecodable answer)
            return f"On {where}: {text.rstrip()}"
        head = f"{c.type_name}: {c.exc}" if str(c.exc) else c.type_name
        if not _FRAME.search(text):
            return f"On {where}: {head}"
        return f"On {where}: {head}\n{with_source_lines(text).rstrip()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteException, (self.pid, self.captured))


_EXCEPTION_LINE = re.compile(r"[\w.]+(:|$)")


def _note(text: str) -> str:
    """The explanation a captured traceback's text opens with, if any: a first line that is
    neither a traceback's header nor an exception's ``Type: message``."""
    first = text.split("\n", 1)[0]
    if not first or first[0].isspace() or first.startswith("Traceback "):
        return ""
    return "" if _EXCEPTION_LINE.match(first) else first


_FRAME = re.compile(r'^(?P<pre>.*?)  File "(?P<file>[^"]+)", line (?P<line>\d+), in ', re.M)


def with_source_lines(text: str) -> str:
    """``text``, a formatted traceback, with the source line of each frame that has none
    added from this process's files (``linecache``), when it has them."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        m = _FRAME.match(line)
        if m is None:
            continue
        pre = m.group("pre")
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith(pre + "    "):
            continue  # the remote process showed the line
        import linecache

        source = linecache.getline(m.group("file"), int(m.group("line"))).strip()
        if source:
            out.append(f"{pre}    {source}\n")
    return "".join(out)


class ProcessExitedException(Exception):
    """The process ``worker_id`` has exited (or its connection was lost).

    ``removed`` is True when it was removed on purpose (``rmprocs``), False when it died or its
    connection broke; ``reason`` says what was seen.
    """

    def __init__(self, worker_id: int, reason: str = "", *, removed: bool = False) -> None:
        super().__init__(worker_id, reason)
        self.worker_id = worker_id
        self.reason = reason
        self.removed = removed

    def __str__(self) -> str:
        if self.removed:
            base = f"worker {self.worker_id} has exited: it was removed by rmprocs"
            return f"{base} ({self.reason})" if self.reason else base
        base = f"worker {self.worker_id} has exited"
        if self.reason.startswith("with code "):
            return f"{base} {self.reason}"
        return f"{base}: {self.reason}" if self.reason else base

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exited, (self.worker_id, self.reason, self.removed))


def describe_exit(code: int) -> str:
    """A worker's exit code as a :class:`ProcessExitedException` reason: ``with code 3``, or
    ``killed by SIGKILL`` (a negative code, as ``Popen`` gives it)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"with code {code}"


def _rebuild_exited(worker_id: int, reason: str, removed: bool) -> ProcessExitedException:
    return ProcessExitedException(worker_id, reason, removed=removed)


class LaunchError(RuntimeError):
    """A worker failed to start or to join the cluster.

    ``output`` holds the last lines it wrote (its standard error when it has one, else its
    standard output; empty when it printed nothing); ``ospid`` its OS process id when known.
    """

    def __init__(self, message: str, output: str = "", ospid: int | None = None) -> None:
        super().__init__(message)
        self.output = output
        self.ospid = ospid

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.output, self.ospid))


class LaunchTimeoutError(LaunchError, TimeoutError):
    """A worker did not report its address within ``PYDIST_WORKER_TIMEOUT`` seconds."""


class CompositeException(ExceptionGroup):  # type: ignore[misc]
    """Several errors at once: from ``sync()`` blocks, ``everywhere`` and the like.

    ``CompositeException(exceptions)``; ``.exceptions`` holds them in order.
    """

    def __new__(cls, exceptions: Sequence[BaseException], message: str | None = None) -> Any:
        excs = [_as_exception(e) for e in exceptions]
        if message is None:
            message = f"{len(excs)} error{'s' if len(excs) != 1 else ''} in concurrent tasks"
        return super().__new__(cls, message, excs)

    def __init__(self, exceptions: Sequence[BaseException], message: str | None = None) -> None:
        excs = [_as_exception(e) for e in exceptions]
        if message is None:
            message = f"{len(excs)} error{'s' if len(excs) != 1 else ''} in concurrent tasks"
        super().__init__(message, excs)

    def derive(self, excs: Sequence[BaseException]) -> CompositeException:
        return CompositeException(excs, self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CompositeException, (list(self.exceptions), self.message))


def _as_exception(e: BaseException) -> Exception:
    """An ExceptionGroup holds only Exceptions; wrap a bare BaseException (e.g. an interrupt)."""
    if isinstance(e, Exception):
        return e
    return _WrappedBaseException(e)


class _WrappedBaseException(Exception):
    """A BaseException (KeyboardInterrupt, SystemExit) carried inside a CompositeException."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc
        self.__cause__ = exc

    def __str__(self) -> str:
        return f"{type(self.exc).__name__}: {self.exc}"


def capture(exc: BaseException) -> CapturedException:
    """Capture ``exc`` raised here, with its traceback text, ready to be pickled.

    The frames of pydistributed that ran the call (before the first frame of the user's
    code) are left out of the text.
    """
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and _is_internal(tb):
        tb = tb.tb_next
    if tb is not None and _is_internal(tb):
        tb = exc.__traceback__  # all ours: a fault of pydistributed, show it all
    import traceback  # (here: importing the package stays light)

    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return CapturedException(exc, text)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_internal(tb: types.TracebackType) -> bool:
    return tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def strip_internal(exc: BaseException) -> BaseException:
    """For a :class:`RemoteException`, raised again on another thread (a task's, a map's):
    the same exception without the frames of pydistributed in its traceback (they only
    carried it there); any other exception as it is. Returns the exception, to ``raise``."""
    if not isinstance(exc, RemoteException):
        return exc
    kept = []
    tb = exc.__traceback__
    while tb is not None:
        if not _is_internal(tb):
            kept.append(tb)
        tb = tb.tb_next
    new: types.TracebackType | None = None
    for t in reversed(kept):
        new = types.TracebackType(new, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return exc.with_traceback(new)


def _qualname(exc: BaseException) -> str:
    t = type(exc)
    if t.__module__ in ("builtins", "__main__"):
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"
