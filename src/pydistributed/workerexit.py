"""A worker process's end, as the master sees it: reaping it, its exit code, and the last
lines it wrote (for the errors of a launch that failed). No I/O beyond waiting on the process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a worker imports this module, and relays nothing
    from .relay import RelayedStream

__all__ = ["KILL_WAIT", "describe_tail", "end_process", "exit_code", "output_tail"]

KILL_WAIT = 5.0  # how long a killed process may take to be reaped
EXIT_WAIT = 1.0  # how long a worker whose connection closed may take to exit, for its code


def end_process(proc: Any, grace: float = 0.0) -> None:
    """Give ``proc`` (a ``Popen``, or None) ``grace`` seconds to exit, then kill it; reap it.

    Never raises, never waits more than ``grace`` plus a few seconds.
    """
    if proc is None or not hasattr(proc, "wait"):
        return
    try:
        proc.wait(timeout=max(0.0, grace))
        return
    except Exception:
        pass
    try:
        proc.kill()
        proc.wait(timeout=KILL_WAIT)
    except Exception:
        pass


def exit_code(proc: Any) -> int | None:
    """The exit code of a worker whose connection just closed (``None``: not ours, or still
    running after a moment: the connection broke, not the process)."""
    if proc is None or not hasattr(proc, "wait"):
        return None
    try:
        return int(proc.wait(timeout=EXIT_WAIT))
    except Exception:
        return None


def output_tail(streams: list[RelayedStream]) -> str:
    """The last lines a worker wrote: its stderr's when it wrote any, else its stdout's."""
    for kind in ("stderr", "stdout"):
        for s in streams:
            if s.kind == kind and s.tail:
                return s.tail_text()
    return ""


def describe_tail(output: str, streams: list[RelayedStream]) -> str:
    if not output:
        return "; it printed nothing"
    which = "stderr" if any(s.kind == "stderr" and s.tail for s in streams) else "output"
    return f"; its {which} ended with:\n{output}"
