"""A worker's idle main thread reads the master's calls itself (``Peer.serve``), and gives the
reading back to the connection's reader thread while it runs one: calls that arrive meanwhile
still run, heartbeats are still answered, calls from other workers still reach it."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import pytest

from pydistributed import remotecall, remotecall_fetch

WAIT = 60.0


def on_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def wait_for_file(path: str) -> bool:
    deadline = time.monotonic() + WAIT
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return on_main()


def touch(path: str) -> bool:
    open(path, "w").close()
    return on_main()


def spin(seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:  # pure Python: the reader thread gets the GIL in turns
        pass
    return on_main()


def ask_other(pid: int) -> bool:
    return remotecall_fetch(on_main, pid)  # type: ignore[no-any-return]


def test_quick_calls_run_on_the_main_thread_before_and_after_a_long_one(
    add_workers: Any,
) -> None:
    (w,) = add_workers(1)
    assert all(remotecall_fetch(on_main, w) for _ in range(20))
    # long enough for the reader thread to take the reading back; then the main thread
    # takes it again
    assert remotecall_fetch(time.sleep, w, 0.05) is None
    assert all(remotecall_fetch(on_main, w) for _ in range(20))


def test_a_call_that_arrives_while_one_runs_runs_meanwhile(add_workers: Any, tmp_path: Any) -> None:
    (w,) = add_workers(1)
    flag = str(tmp_path / "flag")
    first = remotecall(wait_for_file, w, flag)
    assert remotecall_fetch(touch, w, flag) is False  # on a pool thread, while the first waits
    assert first.fetch(timeout=WAIT) is True  # the first ran on the main thread


def test_a_call_from_another_worker_reaches_the_reading_main_thread(add_workers: Any) -> None:
    a, b = add_workers(2)
    assert remotecall_fetch(on_main, b)  # b's main thread now reads the master's connection
    assert remotecall_fetch(ask_other, a, b) is True


def test_heartbeats_are_answered_while_the_main_thread_runs_a_call(
    add_workers: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # a call twice as long as the silence that is reported: unanswered heartbeats would be;
    # the margin absorbs a pause of this (large, long-lived) test process, seen once at 1 s
    monkeypatch.setenv("PYDIST_HEARTBEAT", "0.2")
    monkeypatch.setenv("PYDIST_UNRESPONSIVE_AFTER", "2.0")
    (w,) = add_workers(1)
    assert remotecall_fetch(on_main, w)
    with caplog.at_level(logging.WARNING, logger="pydistributed"):
        assert remotecall_fetch(spin, w, 4.0) is True
    assert "has not answered" not in caplog.text
