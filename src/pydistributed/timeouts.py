"""One monotonic deadline per blocking call: ``deadline(timeout)`` and ``remaining(deadline)``.

Every blocking method of pydistributed takes ``timeout`` in seconds (``None`` or ``math.inf``:
wait for ever), turns it into one deadline on entry, and waits for what remains of it, so that
spurious wake-ups and retries never stretch the total wait.
"""

from __future__ import annotations

import math
import os
import time

__all__ = ["deadline", "link_timeout", "remaining", "worker_timeout"]


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
