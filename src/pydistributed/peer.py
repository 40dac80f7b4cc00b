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
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from . import codec, scope, shm, transport
from .errors import ProcessExitedException, ProtocolError
from .messages import Message

__all__ = ["Guard", "Peer", "ResponseSlot", "describe_unpicklable"]

Guard = tuple[Callable[[], Any], Callable[[Any], None]]  # (hold, release): see read_until

log = logging.getLogger("pydistributed.peer")


_PARK = 0.002
_HELD_POLL = 0.005
_DOZE = 1.0


class _Closed(Exception):
    """The connection was closed while the reader thread waited for the reading role."""


def _ignore(*args: Any) -> None:
    pass


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

    def is_set(self) -> bool:
        return not self._lock.locked()

    def wait(self, timeout: float | None = None) -> bool:
        """True once answered; False if ``timeout`` passed first."""
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0)):
            self._lock.release()
            return True
        return False


describe_unpicklable = codec.describe_unpicklable  # (it names a closure's captured variable)


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
        owner: Any = None,
        macs: tuple[transport.FrameMac, transport.FrameMac] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = transport.as_frame_writer(writer)
        # the authentication of each direction (out, in), or None on a link the kernel vouches
        # for (a checked local socket)
        self.mac_in: transport.FrameMac | None = None
        self.transcript = b""  # the handshake's (set by the connection table)
        if macs is not None:
            self.writer.mac, self.mac_in = macs
        self.pid = pid
        self.sock = sock
        self.announce = announce
        self.alloc = alloc
        self.owner = owner  # the cluster whose messages these are (see scope)
        # set by the cluster: keep interrupts away from this thread while it writes
        self.shield: Callable[[bool], Any] | None = None
        self.unshield: Callable[[Any], None] | None = None
        self.limit = transport.max_message_bytes()
        self.pending: dict[int, ResponseSlot] = {}
        self.closed = False
        self.close_reason = ""
        self.removing = False  # set when the other side was asked to exit (rmprocs)
        self.last_heard = time.monotonic()  # when the last message arrived (the heartbeat)
        self._send_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._on_close: Callable[[Peer, str], None] | None = None
        self._on_message: Callable[[Peer, Message], None] = _ignore
        self._on_decode_error: Callable[[Peer, codec.DecodeError], None] = _ignore
        self.thread: threading.Thread | None = None
        # the reading role (see read_until); only for socket readers, which can tell what
        # they have buffered before waiting in select
        self._role_cond = threading.Condition(threading.Lock())
        self._role: Any = None
        self._takers = 0
        self._parked_at = 0.0
        self._hurry = False
        # a worker's main thread holds the role in serve(); messages it has read; the reader
        # thread waits for it to put the role down without polling
        self._serving = False
        self._served = 0
        self._dozing = False
        self._wake_r = self._wake_w = -1
        if isinstance(reader, transport.SocketReader):
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def __repr__(self) -> str:
        return f"<Peer pid={self.pid} {'closed' if self.closed else 'open'}>"

    # -- sending --------------------------------------------------------------------------

    def send(self, msg: Message, wait: bool = True) -> bool:
        """Encode and write ``msg``. With ``wait`` False (a reading thread), only if that
        cannot wait for another writer (see :meth:`send_frames`) nor announce references:
        False, having sent nothing, otherwise.

        Raises:
            pickle.PicklingError: the message could not be pickled; nothing was sent and the
                connection is fine.
            ProcessExitedException: the connection is closed or broke while writing.
        """
        frames, refs = codec.encode(msg, self.pid)
        if refs and self.announce is not None:
            if not wait:
                return False
            self.announce(self, refs)
        return self.send_frames(frames, wait)

    def send_quietly(self, msg: Message) -> None:
        """:meth:`send` a notice; a closed connection is no error."""
        try:
            self.send(msg)
        except ProcessExitedException:
            pass

    def send_frames(self, frames: list[Any], wait: bool = True) -> bool:
        """Write an encoded message. With ``wait`` False, only if no other thread is writing
        now (a reading thread must never wait on a writer that waits for the other side to
        read): False, having sent nothing, if one is."""
        if self.closed:
            raise ProcessExitedException(self.pid or 0, self.close_reason, removed=self.removing)
        lock = self._send_lock
        try:
            if not lock.acquire(wait):
                return False
            try:
                shield = self.shield
                token = None
                if shield is not None:
                    token = shield(len(frames) > 2 or len(frames[1]) >= 65536)
                try:
                    self.writer.write_frames(frames)
                finally:
                    if token is not None:
                        self.unshield(token)  # type: ignore[misc]
            finally:
                lock.release()
        except ProtocolError:
            # refused before a byte went out (too large); else the stream is out of step
            if getattr(self.writer, "partial", False):
                self.close("a message could not be finished")
            raise
        except (OSError, ValueError) as e:
            # ValueError: writing to a closed file object
            self.close(f"write failed: {e}")
            raise ProcessExitedException(self.pid or 0, str(e), removed=self.removing) from e
        except BaseException:
            # an interrupt while a message was half written: the stream is out of step, and
            # only closing it keeps the other side from reading garbage
            if getattr(self.writer, "partial", False):
                self.close("interrupted while sending a message")
            raise
        return True

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
        self._on_message = on_message
        self._on_decode_error = on_decode_error
        if self.closed:
            on_close(self, self.close_reason)
            return
        if not thread:
            self.thread = threading.current_thread()
            self._read_loop()
            return
        self.thread = threading.Thread(
            target=self._read_loop, name=f"pydist-reader-{self.pid}", daemon=True
        )
        self.thread.start()

    def _read_one(self) -> None:
        """Read one whole message and hand it on, on whichever thread holds the role."""
        try:
            frames = transport.read_message(
                self.reader, self.limit, self.alloc, self.mac_in, codec.bytes_frames
            )
        except shm.ShmRefused as e:
            # the message was read whole (the stream is in step): only it fails
            self.last_heard = time.monotonic()
            log.warning("refused a message from process %s: %s", self.pid, e)
            tag, header = codec.decode_header([e.header, b""])
            self._on_decode_error(self, codec.DecodeError(tag, header, e))
            return
        self.last_heard = time.monotonic()
        try:
            msg = codec.decode(frames)
        except codec.DecodeError as e:
            self._on_decode_error(self, e)
            return
        self._on_message(self, msg)

    def _read_one_guarded(self, guard: Guard) -> None:
        """:meth:`_read_one` with ``guard`` held while a message is read, not while waiting
        for its first byte."""
        buffered = getattr(self.reader, "buffered", None)
        if buffered is not None and not buffered():
            select.select([self.reader], [], [])  # interruptible; consumes nothing
        token = guard[0]()
        try:
            self._read_one()
        finally:
            if token is not None:
                guard[1](token)

    def _read_loop(self) -> None:
        scope.bind(self.owner)
        reason = "connection closed"
        try:
            if self._wake_r >= 0:
                self._shared_read_loop()
            else:
                while True:
                    self._read_one()
        except EOFError as e:
            reason = str(e) or reason
        except _Closed:
            reason = self.close_reason
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
            self.reader.close()
        except Exception:
            pass
        self._close_wake_pipe()

    def _close_wake_pipe(self) -> None:
        with self._role_cond:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    def _poke(self) -> None:
        """Wake the thread waiting in ``select`` on the wake-up pipe (role lock held)."""
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass  # full of wake-ups already

    # -- the reading role -----------------------------------------------------------------
    #
    # A caller that waits for its answer on this connection reads the socket itself when no
    # other caller does, so the answer needs no hand-off between threads (and no GIL
    # ping-pong with the reader thread). One thread at a time holds the reading role: the
    # reader thread ("bg"), a caller (its thread id), or nobody (None). A caller takes a free
    # role at once, or asks the reader thread for it: a flag, a byte on a wake-up pipe (the
    # reader waits in ``select`` on the socket and that pipe), and a condition to wait on.
    # When the caller has its answer it leaves the role free ("parked") without waking
    # anybody, because the next call usually follows within microseconds; the reader thread
    # takes it back after ``_PARK`` seconds, or at once if other callers are waiting for
    # answers. A whole message is always read by one thread. A worker's idle main thread
    # holds the role so too (``serve``): the calls it reads run there, without a hand-off; the
    # reader thread does not poll it once nothing comes, and is woken when it parks the role.

    def _shared_read_loop(self) -> None:
        reader: Any = self.reader
        fd = reader.fileno()
        cond = self._role_cond
        seen = -1
        while True:
            with cond:
                while True:
                    if self.closed:
                        raise _Closed()
                    if self._role is None and not self._takers:
                        idle = time.monotonic() - self._parked_at
                        if idle >= _PARK or self._hurry:
                            break
                        cond.wait(_PARK - idle)
                    elif self._serving and self._served == seen:
                        # a worker's idle main thread reads (serve) and nothing came since
                        # we last looked: doze until it puts the role down (it wakes us then)
                        self._dozing = True
                        cond.wait(_DOZE)
                        self._dozing = False
                    else:
                        # a caller reads; it parks the role without waking us (that is
                        # the point), so look again now and then
                        seen = self._served
                        cond.wait(_HELD_POLL)
                self._role = "bg"
                self._hurry = False
            try:
                while not self._takers:
                    if not reader.buffered():
                        ready, _, _ = select.select([fd, self._wake_r], [], [])
                        if self._wake_r in ready:
                            try:
                                os.read(self._wake_r, 4096)
                            except BlockingIOError:
                                pass
                            continue
                    self._read_one()
            finally:
                with cond:
                    self._role = None
                    self._parked_at = 0.0
                    cond.notify_all()

    def read_until(self, done: Callable[[], bool], guard: Guard | None = None) -> bool:
        """Read and dispatch messages on this thread until ``done()``.

        Returns False at once (having read nothing) when another caller holds the reading
        role or the connection cannot share it; the caller then waits the usual way.

        ``guard``: ``(hold, release)``, called around the reading of each message, so that an
        asynchronous exception (Ctrl-C) lands only between messages: while nothing of the
        next message has come, the thread waits for it with nothing held (a Ctrl-C
        interrupts that wait and leaves the stream whole). A stream that is not a socket is
        read under the guard throughout.
        """
        if guard is None:
            return self._lead(done, self._read_one, False)
        return self._lead(done, lambda: self._read_one_guarded(guard), False)

    def serve(self, idle: Callable[[], bool]) -> None:
        """On a worker's main thread with no call to run: hold the reading role and read and
        dispatch messages here while ``idle()`` (a call for this thread ends it: the thread
        runs it without a hand-off from the reader thread); :meth:`wake` makes it look at
        ``idle()`` again. Returns at once when the role is another caller's (the reader
        thread reads then, as usual). No guard: the worker's SIGINT handler does nothing
        while no call runs on this thread. While it runs a call the role is parked, and the
        reader thread takes it back after ``_PARK`` s (heartbeats, interrupts, calls)."""
        self._lead(lambda: not idle(), self._read_woken, True)

    def _read_woken(self) -> None:
        """:meth:`_read_one`, or nothing if :meth:`wake` came first."""
        reader: Any = self.reader
        if not reader.buffered():
            wake = self._wake_r
            if wake in select.select([reader.fileno(), wake], [], [])[0]:
                try:
                    os.read(wake, 4096)
                except BlockingIOError:
                    pass
                return
        self._served += 1
        self._read_one()

    def _lead(self, done: Callable[[], bool], read: Callable[[], None], serving: bool) -> bool:
        cond = self._role_cond
        with cond:
            if self._wake_r < 0 or self.closed or self.thread is None:
                return False
            if self._role is not None and self._role != "bg":
                return False  # another caller reads; it will hand us our answer
            self._takers += 1
            try:
                if self._role == "bg":
                    self._poke()
                # wait only for the reader thread to put the role down: if another caller
                # takes it first, that caller will fill our slot (it never signals here)
                while self._role == "bg" and not self.closed and not done():
                    cond.wait()
                if self._role is not None or self.closed:
                    return True  # closed, answered, or another caller reads: wait on the slot
                self._role = threading.get_ident()
                self._serving = serving
            finally:
                self._takers -= 1
        state = scope.state  # bound to our cluster while this thread reads for it
        outer, state.owner = state.owner, self.owner
        try:
            while not done() and not self.closed:
                try:
                    read()
                except EOFError as e:
                    self.close(str(e) or "connection closed")
                except ProtocolError as e:
                    log.warning("dropping the connection to process %s: %s", self.pid, e)
                    self.close(f"protocol error: {e}")
                except (OSError, ValueError) as e:
                    self.close(f"connection lost: {e}")
        finally:
            state.owner = outer
            with cond:
                self._role = None
                self._serving = False
                self._parked_at = time.monotonic()
                if self.pending or self._takers:
                    # others wait for answers: the reader thread must read now
                    self._hurry = True
                    cond.notify_all()
                elif self._dozing:
                    cond.notify_all()  # to take the role back if the call runs long
        return True

    def wake(self) -> None:
        """Make the thread in :meth:`serve` look at its ``idle()`` again."""
        with self._role_cond:
            self._poke()

    # -- closing --------------------------------------------------------------------------

    def close(self, reason: str = "closed") -> None:
        """Close the connection, tell ``on_close`` why (once), then wake every caller waiting on
        it with ProcessExitedException."""
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
        with self._role_cond:
            self._poke()
            self._role_cond.notify_all()
        if self.thread is None:
            self._close_wake_pipe()  # nobody reads: the wake-up pipe can go now
        if self.thread is None or threading.current_thread() is self.thread:
            # closing a buffered reader that another thread is reading from would block
            try:
                self.reader.close()
            except Exception:
                pass
        # Tell the owner first (the master deregisters the worker), then wake the callers: a
        # caller that wakes with ProcessExitedException must find the process gone from the
        # worker table (a pool would otherwise queue the dead worker again).
        if self._on_close is not None:
            try:
                self._on_close(self, reason)
            except Exception:
                log.exception("error while handling the loss of process %s", self.pid)
        # (on_close may have said more: a worker's exit code, where its master learns it)
        exc = ProcessExitedException(self.pid or 0, self.close_reason, removed=self.removing)
        while self.pending:
            try:
                _, slot = self.pending.popitem()
            except KeyError:
                break
            slot.set(False, exc)
