"""Functions for workers to run, importable by reference (tests/ is on the workers' path)."""

from __future__ import annotations

import os
import sys
import time


def identity(x: object) -> object:
    return x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def getpid() -> int:
    return os.getpid()


def sleep_then(seconds: float, value: object = None) -> object:
    time.sleep(seconds)
    return value


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
