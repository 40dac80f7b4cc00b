"""Ctrl-C in a master blocked on a remote operation: real SIGINT to a real master process.

The first Ctrl-C lands at once: it interrupts the call on the worker (and waits a moment for
it to answer) or cancels a channel operation, then raises KeyboardInterrupt in the master; a
second Ctrl-C stops waiting at once. Nothing is lost, and the worker stays usable.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import readline, wait_until

PRELUDE = """
import os, sys, time
from pydistributed import (Channel, RemoteChannel, addprocs, fetch, remotecall,
                           remotecall_fetch, remotecall_wait, workers)

def spin(marker):
    open(marker + ".started", "w").close()
    try:
        while True:
            pass
    finally:
        open(marker, "w").close()

def _main_waits():
    # whether the main thread is inside calls.wait_answer, blocked (not on its way in)
    import threading
    frame = sys._current_frames().get(threading.main_thread().ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    if "wait_answer" not in names:
        return False
    inner = names[: names.index("wait_answer")]
    return any(n in ("_read_one_guarded", "wait") for n in inner)

def say_when_waiting(marker=None):
    # print "waiting" once the main thread waits for its answer (and the call runs)
    import threading
    def watch():
        while not (_main_waits() and (marker is None or os.path.exists(marker + ".started"))):
            time.sleep(0.01)
        print("waiting", flush=True)
    threading.Thread(target=watch, daemon=True).start()

(w,) = addprocs(1)
"""


@pytest.fixture
def master(master_scripts: Any) -> Any:
    """``start(body)``: a master script made of PRELUDE and ``body``, ended at teardown."""
    return lambda body: master_scripts(PRELUDE + textwrap.dedent(body))


def _interrupt_when(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    assert readline(proc.stdout) == line + "\n"
    proc.send_signal(signal.SIGINT)


@pytest.mark.parametrize(
    "wait",
    [
        "remotecall_fetch(spin, w, MARKER)",
        "fetch(remotecall(spin, w, MARKER))",
        "remotecall(spin, w, MARKER).wait()",
        "remotecall_wait(spin, w, MARKER)",
    ],
)
def test_ctrl_c_interrupts_the_remote_call_and_raises(
    master: object, tmp_path: Path, wait: str
) -> None:
    marker = tmp_path / "interrupted-on-the-worker"
    proc = master(  # type: ignore[operator]
        f"""
        MARKER = {str(marker)!r}
        import pydistributed.calls
        pydistributed.calls.CTRL_C_GRACE = 60  # a loaded machine: wait for the answer
        say_when_waiting(MARKER)  # once the call runs on the worker
        try:
            {wait}
        except KeyboardInterrupt:
            print("KeyboardInterrupt", os.path.exists(MARKER), flush=True)
        print("then", remotecall_fetch(lambda: 6 * 7, w), flush=True)
        """
    )
    _interrupt_when(proc, "waiting")
    assert proc.stdout is not None
    # the endless loop on the worker was interrupted before the master raised
    assert readline(proc.stdout) == "KeyboardInterrupt True\n"
    assert readline(proc.stdout) == "then 42\n"
    assert proc.wait(30) == 0


def test_a_second_ctrl_c_stops_waiting_at_once(master: object) -> None:
    proc = master(
        """
        import pydistributed.calls
        pydistributed.calls.CTRL_C_GRACE = 600  # the first Ctrl-C would wait this long
        remotecall(time.sleep, w, 600)  # the worker's main thread: busy
        say_when_waiting()
        try:
            remotecall_fetch(time.sleep, w, 600)  # a pool thread: interrupt cannot break it
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        os._exit(0)
        """
    )
    _interrupt_when(proc, "waiting")
    assert proc.stdout is not None
    t, out = readline_in_background(proc.stdout)
    # keep pressing until the master gives up (a second press lands in the grace wait)
    wait_until(lambda: out or proc.send_signal(signal.SIGINT), 30, 0.2, "the master to raise")
    t.join(30)
    assert out == ["KeyboardInterrupt\n"]


def readline_in_background(stream: object) -> tuple[object, list[object]]:
    from tests.conftest import in_thread

    return in_thread(stream.readline)  # type: ignore[attr-defined]


@pytest.mark.parametrize("op", ["take", "put"])
def test_ctrl_c_cancels_a_remote_channel_operation_and_loses_nothing(
    master: object, op: str
) -> None:
    proc = master(
        f"""
        rc = RemoteChannel(lambda: Channel(0), w)  # owned by the worker
        say_when_waiting()
        try:
            rc.take() if {op!r} == "take" else rc.put("lost?")
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        # the cancelled operation took, or left, nothing: the next ones meet their match
        remotecall(lambda c: c.put(7), w, rc)
        print("took", rc.take(timeout=30), flush=True)
        taker = remotecall(lambda c: c.take(timeout=30), w, rc)
        rc.put(8, timeout=30)
        print("gave", fetch(taker), flush=True)
        """
    )
    _interrupt_when(proc, "waiting")
    assert proc.stdout is not None
    assert readline(proc.stdout) == "KeyboardInterrupt\n"
    assert readline(proc.stdout) == "took 7\n"
    assert readline(proc.stdout) == "gave 8\n"
    assert proc.wait(30) == 0


def test_ctrl_c_during_addprocs_leaves_none_of_its_workers(master: object) -> None:
    # the manager's launch sends the Ctrl-C once the first of its workers has joined, then
    # launches two more: the call raises KeyboardInterrupt (without waiting for the launch to
    # end), and none of the four stays, neither in the cluster nor as a process
    proc = master(
        """
        import signal, time
        from pydistributed import LocalManager, procs
        before = sorted(procs())

        class Interrupting(LocalManager):
            def __init__(self):
                super().__init__(2)
                self.ospids = []

            def launch(self, params, launched, ntfy):
                super().launch(params, launched, ntfy)
                deadline = time.monotonic() + 60
                while len(procs()) == len(before) and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.5)  # the launch goes on well after the Ctrl-C
                super().launch(params, launched, ntfy)
                self.ospids = [c.ospid for c in launched]

        def alive(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().rsplit(")", 1)[1].split()[0] != "Z"
            except FileNotFoundError:
                return False

        m = Interrupting()
        try:
            print("added", addprocs(m), flush=True)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        print("workers as before", sorted(procs()) == before, flush=True)
        deadline = time.monotonic() + 30
        # the call does not wait for the launch to end (the workers it adds from then on are
        # ended, not set up): wait for the launch here, then for its processes to be gone
        while len(m.ospids) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        while any(map(alive, m.ospids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        print("launched", len(m.ospids), "alive", [p for p in m.ospids if alive(p)], flush=True)
        print("then", remotecall_fetch(lambda: 6 * 7, w), len(addprocs(1)), flush=True)
        """
    )
    assert proc.stdout is not None
    assert readline(proc.stdout) == "KeyboardInterrupt\n"
    assert readline(proc.stdout) == "workers as before True\n"
    assert readline(proc.stdout) == "launched 4 alive []\n"
    assert readline(proc.stdout) == "then 42 1\n"
    assert proc.wait(30) == 0
