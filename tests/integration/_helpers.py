"""Functions for workers to run, importable by reference (tests/ is on the workers' path)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any


def identity(x: object) -> object:
    return x


def square(x: int) -> int:
    return x * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def getpid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


def signal_then(started: Any, f: Callable[..., Any], *args: Any) -> Any:
    """``started.put(True)``, then ``f(*args)``: the caller waits on ``started`` (a Future or a
    RemoteChannel) to know that the call runs, instead of sleeping and hoping it does."""
    started.put(True)
    return f(*args)


def touch_then(path: str, f: Callable[..., Any], *args: Any) -> Any:
    """Create the file ``path``, then ``f(*args)``: like :func:`signal_then`, but the sign sends
    no message, for a call that is then interrupted. An interrupt that lands while a call sends
    a message is not what those tests are about: a pool thread is out of its reach meanwhile
    (``Executor.shield``), and on the main thread it can cost the worker its connection."""
    open(path, "w").close()
    return f(*args)


def busy_loop(seconds: float = 60.0) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def hold_gil(n: int) -> int:
    # one C call that never gives the GIL back: the reader thread cannot run meanwhile
    return sum(range(n))


def say(line: str, stream: str = "stdout") -> None:
    print(line, file=sys.stdout if stream == "stdout" else sys.stderr)


class Unpicklable:
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Unpicklable refuses to be pickled")


def stored(rrid: Any) -> bool:
    """Whether the reference ``rrid`` is stored on the process this runs on (Julia's
    ``haskey(Distributed.PGRP.refs, rrid)``)."""
    from pydistributed import channel_from_id

    try:
        channel_from_id(rrid)
    except KeyError:
        return False
    return True
