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
on the worker (:func:`capture`), sent back, and raised on the caller as a
:class:`RemoteException` whose ``__cause__`` is the original exception when it could be
pickled.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any

if sys.version_info < (3, 11):  # pragma: no cover - exercised on 3.10 only
    from exceptiongroup import ExceptionGroup

__all__ = [
    "AuthenticationError",
    "CapturedException",
    "ChannelClosedError",
    "CompositeException",
    "InterruptException",
    "LaunchError",
    "LaunchTimeoutError",
    "ProcessExitedException",
    "ProtocolError",
    "RemoteException",
]


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


class RemoteException(Exception):
    """An exception raised by a call on process ``pid``.

    ``str()`` reads ``On worker N:`` followed by the remote exception and its remote
    traceback. ``captured.exc`` is the original exception (or its stand-in), also set as
    ``__cause__`` so that Python's own traceback shows both sides.
    """

    def __init__(self, pid: int, captured: CapturedException) -> None:
        super().__init__(pid, captured)
        self.pid = pid
        self.captured = captured
        self.__cause__ = captured.exc

    def __str__(self) -> str:
        return f"On worker {self.pid}:\n{self.captured}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RemoteException, (self.pid, self.captured))


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
        return f"{base}: {self.reason}" if self.reason else base

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exited, (self.worker_id, self.reason, self.removed))


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
    """Capture ``exc`` raised here, with its traceback text, ready to be pickled."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return CapturedException(exc, tb)


def _qualname(exc: BaseException) -> str:
    t = type(exc)
    if t.__module__ in ("builtins", "__main__"):
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"
