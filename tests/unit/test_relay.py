"""The output relay: lines of workers' pipes, and pipes whose numbers come back."""

from __future__ import annotations

import os
import time

from pydistributed.relay import OutputRelay


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_pipe_closed_elsewhere_whose_number_comes_back_does_not_stop_the_relay() -> None:
    relay = OutputRelay()
    r1, w1 = os.pipe()
    first = relay.add(os.fdopen(r1, "rb", buffering=0), "stdout")
    os.write(w1, b"one\n")
    assert _wait_for(lambda: list(first.tail) == ["one"])
    first.file.close()  # closed elsewhere, before the relay read its end
    r2, w2 = os.pipe()  # the lowest free number: r1's again
    assert r2 == r1
    second = relay.add(os.fdopen(r2, "rb", buffering=0), "stdout")
    os.write(w2, b"two\n")
    assert _wait_for(lambda: list(second.tail) == ["two"])
    assert first.eof.is_set()
    r3, w3 = os.pipe()
    third = relay.add(os.fdopen(r3, "rb", buffering=0), "stdout")
    os.write(w3, b"three\n")
    assert _wait_for(lambda: list(third.tail) == ["three"])  # the relay still runs
    for fd in (w1, w2, w3):
        os.close(fd)
    assert _wait_for(lambda: second.eof.is_set() and third.eof.is_set())
