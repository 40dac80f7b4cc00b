"""The master's ``sys.stdout`` and ``sys.stderr`` as line-aware streams, so that text relayed
from workers is written in whole lines, and only where the master's own line has ended.

The master's own ``print`` writes its pieces separately (``"x"``, ``" "``, ``"1"``, ``"\\n"``);
relayed text written in between would tear both lines. While workers are relayed (from the first
stream :func:`started` to the last :func:`ended`, and nothing held), ``sys.stdout`` and
``sys.stderr`` are :class:`LineStream` wrappers: every write goes through unchanged, under a lock
shared with the relay, and the wrapper notes whether the master's text ends a line (a ``\\n``, or
a ``\\r``: a terminal is back at the line start). :func:`print_relayed` writes relayed text in
one ``write`` of whole lines, and only at a line start: while the master's line is unfinished the
text is held, and written right after the write that finishes it; after :data:`HOLD_SECONDS` at
most, :func:`release_overdue` (the relay thread calls it) ends the master's line with a newline
and writes the held text. stdout and stderr that reach the same file (a terminal, ``2>&1``) form
one group: a line is unfinished on either, and the other one is flushed before relayed text is
written. While a tqdm bar is shown, relayed text is written inside ``tqdm.external_write_mode``
(what ``tqdm.write`` does: clear the bars, write, draw them again). A stream the program set
itself (not a LineStream) gets relayed text in one ``write``, as it comes.

Locks: tqdm's lock (a bar's update, ``external_write_mode``) is taken before a group's lock, never
after; a group's lock is held only around writes to the wrapped streams.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "HOLD_SECONDS",
    "LineStream",
    "ended",
    "print_relayed",
    "release_all",
    "release_overdue",
    "started",
    "uninstall_if_idle",
]

HOLD_SECONDS = 1.0  # the longest relayed text waits for the master to finish its own line
_LOCK_WAIT = 2.0  # the master's write never waits longer for the relay (a thread frozen at exit)


class _Group:
    """The master's streams that reach one file (stdout and stderr on one terminal are one
    group), and the relayed text held until the master's own line there is finished."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # a signal handler may print in the middle of a write
        self.members: list[LineStream] = []
        self.held: list[tuple[LineStream, str]] = []
        self.since = 0.0

    def clean(self) -> bool:
        return all(m.at_line_start for m in self.members)

    def put(self, stream: LineStream, text: str, now: float) -> bool:
        """Write ``text`` (whole lines) on ``stream`` now, or hold it. The lock is held.

        Returns:
            True when this starts a hold (someone must release it within HOLD_SECONDS).
        """
        if not self.held and self.clean():
            self._out(stream, text)
            return False
        self.held.append((stream, text))
        if len(self.held) > 1:
            return False
        self.since = now
        _holding.add(self)
        return True

    def release(self, force: bool) -> None:
        """Write the held text; ``force``: end the master's unfinished lines first. Locked."""
        if not self.held:
            return
        if force:
            for m in self.members:
                if not m.at_line_start:
                    m.at_line_start = True
                    _quietly(m.raw.write, "\n")
        held, self.held = self.held, []
        _holding.discard(self)
        for stream, text in held:
            self._out(stream, text)
        if not _live:  # the last worker stream ended while this was held
            uninstall_if_idle()

    def _out(self, stream: LineStream, text: str) -> None:
        for m in self.members:
            if m is not stream:
                _quietly(m.raw.flush)
        if _write(stream.raw, text):
            _quietly(stream.raw.flush)


def _quietly(fn: Callable[..., Any], *args: Any) -> bool:
    try:
        fn(*args)
    except (OSError, ValueError):  # a closed stream, a reader gone: nobody to print for
        return False
    return True


def _write(out: Any, text: str) -> bool:
    """``out.write(text)`` as :func:`_quietly` does it; characters that ``out``'s encoding
    cannot hold (a worker's line on a master whose ``PYTHONIOENCODING`` is ``latin-1``) are
    written as escapes, not the line dropped (a ``UnicodeEncodeError`` is a ``ValueError``)."""
    try:
        out.write(text)
    except UnicodeEncodeError:
        enc = getattr(out, "encoding", None) or "ascii"
        try:
            return _quietly(out.write, text.encode(enc, "backslashreplace").decode(enc))
        except (LookupError, ValueError):
            return False
    except (OSError, ValueError):
        return False
    return True


class LineStream:
    """The master's ``sys.stdout`` or ``sys.stderr`` while workers are relayed: every write
    goes through unchanged; it notes whether the master's text ends a line, and writes the
    relayed text held for that moment. Anything else is the wrapped stream's."""

    def __init__(self, raw: Any, group: _Group) -> None:
        self.raw = raw
        self.group = group
        self.at_line_start = True
        group.members.append(self)

    def write(self, s: str) -> int:
        group = self.group
        if not group.lock.acquire(timeout=_LOCK_WAIT):
            return self.raw.write(s)  # type: ignore[no-any-return]
        try:
            n = self.raw.write(s)
            if s:
                self.at_line_start = s[-1] in "\n\r"
                if self.at_line_start and group.held and group.clean():
                    group.release(force=False)
            return n  # type: ignore[no-any-return]
        finally:
            group.lock.release()

    def writelines(self, lines: Any) -> None:
        self.write("".join(lines))

    def flush(self) -> None:
        self.raw.flush()

    def put_relayed(self, text: str) -> bool:
        """Relayed ``text`` (whole lines): now if the master is at a line start, else held."""
        with self.group.lock:
            return self.group.put(self, text, time.monotonic())

    def __getattr__(self, name: str) -> Any:
        if name == "raw":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.raw, name)

    def __repr__(self) -> str:
        return f"<LineStream of {self.raw!r}>"


_holding: set[_Group] = set()  # groups with held text (kept alive until it is written)
_install_lock = threading.Lock()
_live = 0  # worker streams being relayed, in every relay of this process


def _same_file(a: Any, b: Any) -> bool:
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _install() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` in LineStreams (not again if they are)."""
    out, err = sys.stdout, sys.stderr
    if out is None or err is None or (isinstance(out, LineStream) and isinstance(err, LineStream)):
        return
    raw_out = out.raw if isinstance(out, LineStream) else out
    raw_err = err.raw if isinstance(err, LineStream) else err
    group = _Group()
    sys.stdout = LineStream(raw_out, group)
    sys.stderr = LineStream(raw_err, group if _same_file(raw_out, raw_err) else _Group())


def started() -> None:
    """A worker stream is relayed: wrap the master's streams if they are not."""
    global _live
    with _install_lock:
        _live += 1
        _install()


def ended() -> None:
    """A worker stream has ended: unwrap once none is left and nothing is held."""
    global _live
    with _install_lock:
        _live -= 1
    uninstall_if_idle()


def uninstall_if_idle(at_exit: bool = False) -> None:
    """Put the wrapped streams back once no worker stream is left and nothing is held (at
    exit: in any case), if ``sys.stdout`` and ``sys.stderr`` are still the wrappers."""
    with _install_lock:
        if not at_exit and (_live or _holding):
            return
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if isinstance(stream, LineStream) and not stream.group.held:
                setattr(sys, name, stream.raw)


def release_overdue(now: float | None = None) -> float | None:
    """Write the text held for longer than HOLD_SECONDS (ending the master's unfinished line).

    Returns:
        The seconds until the next held text is due, or None when nothing is held.
    """
    now = time.monotonic() if now is None else now
    due: float | None = None
    for group in list(_holding):
        with group.lock:
            if group.held and now - group.since >= HOLD_SECONDS:
                group.release(force=True)
            if group.held:
                left = group.since + HOLD_SECONDS - now
                due = left if due is None else min(due, left)
    return due


def _shown_bars() -> Any:
    """tqdm's class, if tqdm is in use and some bar is shown; else None."""
    tqdm_module = sys.modules.get("tqdm")
    cls = getattr(tqdm_module, "tqdm", None)
    if cls is None or not getattr(cls, "_instances", None):
        return None
    return cls


def print_relayed(kind: str, text: str) -> bool:
    """Print relayed ``text`` (whole lines) on the master's ``sys.stdout`` or ``sys.stderr``.

    Returns:
        True when the text is held and this starts the hold.
    """
    out = getattr(sys, kind, None)
    if out is None:
        return False
    bars = _shown_bars()
    if bars is None:
        return _put(out, text)
    with bars.external_write_mode(file=out):  # clears the bars, and draws them again after
        return _put(out, text)


def _put(out: Any, text: str) -> bool:
    if isinstance(out, LineStream):
        return out.put_relayed(text)
    if _write(out, text):  # a stream the program set itself: one write, as before
        _quietly(out.flush)
    return False


def release_all() -> None:
    """At exit: write everything held, ending the master's unfinished lines."""
    for group in list(_holding):
        if group.lock.acquire(timeout=_LOCK_WAIT):
            try:
                group.release(force=True)
            finally:
                group.lock.release()
