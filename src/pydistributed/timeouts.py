"""One monotonic deadline per blocking call: ``deadline(timeout)`` and ``remaining(deadline)``.

Every blocking method of pydistributed takes ``timeout`` in seconds (``None`` or ``math.inf``:
wait for ever), turns it into one deadline on entry, and waits for what remains of it, so that
spurious wake-ups and retries never stretch the total wait.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from typing import cast

__all__ = [
    "check_seconds",
    "check_timeout",
    "deadline",
    "link_timeout",
    "remaining",
    "seconds",
    "worker_timeout",
]


def check_seconds(t: object, what: str) -> float:
    """``t`` as a ``float`` if it is a real number of seconds (not a ``bool``, not NaN; it may
    be negative or ``math.inf``).

    Raises:
        TypeError: it is not a real number; the message names ``what`` and the value given.
        ValueError: it is NaN.
    """
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds, not {type(t).__name__} ({t!r})")
    seconds = float(t)
    if math.isnan(seconds):
        raise ValueError(f"{what} must be a number of seconds, not nan")
    return seconds


def check_timeout(timeout: object, what: str = "timeout") -> float | None:
    """``timeout`` as a number of seconds (``None``: wait for ever): the one check of every
    timeout a user gives, made in the caller before anything is sent or started.

    A negative timeout is 0 (look once, do not wait), as ``threading``'s waits take it: a
    deadline computed as ``end - time.monotonic()`` may have passed already.

    Raises:
        TypeError: it is neither a real number nor ``None`` (a ``bool`` is refused).
        ValueError: it is NaN.
    """
    if timeout is None:
        return None
    kind = type(timeout)
    if kind is float or kind is int:  # (on hot paths: the ABC check below costs ~0.3 us)
        t = float(cast(float, timeout))
        if t != t:  # NaN
            raise ValueError(f"{what} must be a number of seconds or None, not {timeout!r}")
        return t if t > 0.0 else 0.0
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(
            f"{what} must be a number of seconds or None, not {type(timeout).__name__} "
            f"({timeout!r})"
        )
    t = float(timeout)
    if t != t:  # NaN
        raise ValueError(f"{what} must be a number of seconds or None, not {timeout!r}")
    return max(t, 0.0)


def seconds(t: float | None) -> str:
    """``t`` seconds as a message prints them: at most 3 decimals (``0.2``, ``1.5``, ``60``;
    a time below a millisecond keeps 3 significant digits)."""
    if t is None or math.isinf(t) or math.isnan(t):
        return str(t)
    if 0 < abs(t) < 0.0005:
        return f"{t:.3g}"
    text = f"{t:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def deadline(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` at which a call with ``timeout`` gives up (``None``: never).

    A negative timeout counts as zero (give up at once, after one look).

    Raises:
        ValueError: ``timeout`` is NaN.
    """
    if timeout is None:
        return None
    t = float(timeout)
    if math.isnan(t):
        raise ValueError("timeout must be a number of seconds or None, not NaN")
    if t == math.inf:
        return None
    return time.monotonic() + max(t, 0.0)


def remaining(at: float | None) -> float | None:
    """Seconds left until the deadline ``at`` (never negative; ``None`` for no deadline)."""
    if at is None:
        return None
    return max(0.0, at - time.monotonic())


def worker_timeout() -> float:
    """``PYDIST_WORKER_TIMEOUT`` in seconds (default 60): how long a worker may take to report
    its address, and to join, and how long a worker waits for a master to join it."""
    try:
        return max(0.1, float(os.environ.get("PYDIST_WORKER_TIMEOUT", "60")))
    except ValueError:
        return 60.0


def link_timeout() -> float:
    """``PYDIST_LINK_TIMEOUT`` in seconds (default 8; 0: links are not checked): how long data
    sent on a link to another host may wait for an acknowledgement before the link is dead."""
    try:
        return max(0.0, float(os.environ.get("PYDIST_LINK_TIMEOUT", "8")))
    except ValueError:
        return 8.0
