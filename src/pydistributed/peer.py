"""One live connection to another process: a send lock and a reader thread.

Sending happens on the caller's thread: encode, announce the references the message carries
(through ``announce``), then write the frames under the send lock; no hand-off to another
thread. Reading happens on one thread per connection, which decodes each message and hands it
to ``on_message``. A body that cannot be decoded goes to ``on_decode_error`` with its header;
the connection stays up. A garbled frame, an oversized frame or EOF ends the connection, and
``on_close`` is told why, once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from . import codec, transport
from .errors import ProcessExitedException, ProtocolError
from .messages import Message

__all__ = ["Peer", "ResponseSlot", "describe_unpicklable"]

log = logging.getLogger("pydistributed.peer")


class ResponseSlot:
    """Where a caller waits for the answer to one request (a pre-locked lock as the signal)."""

    __slots__ = ("_lock", "ok", "value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.ok = False
        self.value: Any = None

    def set(self, ok: bool, value: Any) -> None:
        self.ok = ok
        self.value = value
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """True once answered; False if ``timeout`` passed first."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            self._lock.release()
            return True
        return False


def describe_unpicklable(what: str, values: dict[str, Any], exc: BaseException) -> str:
    """Name the first value that cannot be pickled, for an error message."""
    for name, value in values.items():
        try:
            codec.dumps(value)
        except Exception as e:
            return (
                f"{what}: {name} of type {type(value).__module__}.{type(value).__qualname__} "
                f"could not be pickled (serialized): {type(e).__name__}: {e}"
            )
    return f"{what} could not be pickled (serialized): {type(exc).__name__}: {exc}"


class Peer:
    """A connection to process ``pid`` (None until the other side has identified itself)."""

    def __init__(
        self,
        reader: BinaryIO,
        writer: Any,
        pid: int | None = None,
        *,
        announce: Callable[[Peer, list[Any]], None] | None = None,
        sock: Any = None,
        alloc: Callable[[int], Any] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = transport.as_frame_writer(writer)
        self.pid = pid
        self.sock = sock
        self.announce = announce
        self.alloc = alloc
        self.pending: dict[int, ResponseSlot] = {}
        self.closed = False
        self.close_reason = ""
        self._send_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._on_close: Callable[[Peer, str], None] | None = None
        self.thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Peer pid={self.pid} {'closed' if self.closed else 'open'}>"

    # -- sending --------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Encode and write ``msg``.

        Raises:
            pickle.PicklingError: the message could not be pickled; nothing was sent and the
                connection is fine.
            ProcessExitedException: the connection is closed or broke while writing.
        """
        frames, refs = codec.encode(msg, self.pid)
        if refs and self.announce is not None:
            self.announce(self, refs)
        self.send_frames(frames)

    def send_frames(self, frames: list[Any]) -> None:
        if self.closed:
            raise ProcessExitedException(self.pid or 0, self.close_reason)
        try:
            with self._send_lock:
                self.writer.write_frames(frames)
        except ProtocolError:
            raise
        except (OSError, ValueError) as e:
            # ValueError: writing to a closed file object
            self.close(f"write failed: {e}")
            raise ProcessExitedException(self.pid or 0, str(e)) from e

    # -- reading --------------------------------------------------------------------------

    def start(
        self,
        on_message: Callable[[Peer, Message], None],
        on_decode_error: Callable[[Peer, codec.DecodeError], None],
        on_close: Callable[[Peer, str], None],
        *,
        thread: bool = True,
    ) -> None:
        """Start reading (on a new thread, or on this one when ``thread`` is False)."""
        self._on_close = on_close
        if self.closed:
            on_close(self, self.close_reason)
            return
        if not thread:
            self._read_loop(on_message, on_decode_error)
            return
        self.thread = threading.Thread(
            target=self._read_loop,
            args=(on_message, on_decode_error),
            name=f"pydist-reader-{self.pid}",
            daemon=True,
        )
        self.thread.start()

    def _read_loop(
        self,
        on_message: Callable[[Peer, Message], None],
        on_decode_error: Callable[[Peer, codec.DecodeError], None],
    ) -> None:
        reason = "connection closed"
        reader = self.reader
        alloc = self.alloc
        try:
            while True:
                frames = transport.read_message(reader, None, alloc)
                try:
                    msg = codec.decode(frames)
                except codec.DecodeError as e:
                    on_decode_error(self, e)
                    continue
                on_message(self, msg)
        except EOFError as e:
            reason = str(e) or reason
        except ProtocolError as e:
            reason = f"protocol error: {e}"
            log.warning("dropping the connection to process %s: %s", self.pid, e)
        except (OSError, ValueError) as e:
            reason = f"connection lost: {e}"
        except BaseException as e:  # never let a reader die silently
            reason = f"reader failed: {type(e).__name__}: {e}"
            log.exception("reader of process %s failed", self.pid)
        self.close(reason)
        try:
            reader.close()
        except Exception:
            pass

    # -- closing --------------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        """Close the connection; wake every caller waiting on it with ProcessExitedException."""
        with self._close_lock:
            if self.closed:
                return
            self.closed = True
            self.close_reason = reason
        try:
            # a socket writer shuts the socket down, which also ends a read in progress
            self.writer.close()
        except Exception:
            pass
        if self.thread is None or threading.current_thread() is self.thread:
            # closing a buffered reader that another thread is reading from would block
            try:
                self.reader.close()
            except Exception:
                pass
        exc = ProcessExitedException(self.pid or 0, reason)
        while self.pending:
            try:
                _, slot = self.pending.popitem()
            except KeyError:
                break
            slot.set(False, exc)
        if self._on_close is not None:
            try:
                self._on_close(self, reason)
            except Exception:
                log.exception("error while handling the loss of process %s", self.pid)
