"""Ctrl-C just as ``addprocs`` ends: a real SIGINT to a real master process, swept over the
moment the call returns.

Whether the call returns its ids (the Ctrl-C lands after it) or raises KeyboardInterrupt, no
worker it started may stay in the cluster with an id the caller never got. Before the fix, one
did (in 2-3 % of the runs, with the Ctrl-C landing in the last ``Thread.join`` of the setups:
CPython 3.11's join, interrupted, marks a thread that still runs as ended, python/cpython#90882).
"""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import readline

# one round per line "go": addprocs(n), which the test interrupts; then what stayed of it
MASTER = """
import json, sys, time
from pydistributed import addprocs, rmprocs, workers

n, rounds = int(sys.argv[1]), int(sys.argv[2])
kw = {"exename": sys.argv[3]} if len(sys.argv) > 3 else {}
for _ in range(rounds):
    got, raised, took = None, False, None
    print("go", flush=True)
    t0 = time.monotonic()
    try:
        got = addprocs(n, **kw)
        took = time.monotonic() - t0
        try:
            time.sleep(30)  # the Ctrl-C lands here when the call ended first
        except KeyboardInterrupt:
            pass
    except KeyboardInterrupt:
        raised = True

    def stray():
        return [w for w in workers() if w != 1 and w not in (got or [])]

    # an interrupted call removes its workers: 5 s in the call, the rest in the background
    deadline = time.monotonic() + 20
    while stray() and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps({"got": got, "raised": raised, "took": took, "stray": stray()}), flush=True)
    if workers() != [1]:
        rmprocs(workers(), waitfor=10)
print("end", flush=True)
"""


@pytest.fixture
def master(master_scripts: Any) -> Any:
    """``start(*args)``: the sweeping master script (MASTER), ended at teardown."""
    return lambda *args: master_scripts(MASTER, *args)


def _round(proc: subprocess.Popen[str], delay: float) -> dict[str, Any]:
    """One round: SIGINT ``delay`` s after the master says it calls addprocs; its outcome."""
    assert proc.stdout is not None
    assert readline(proc.stdout) == "go\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    outcome: dict[str, Any] = json.loads(readline(proc.stdout, timeout=60))
    outcome["delay"] = delay
    return outcome


def sweep(proc: subprocess.Popen[str], calibrate: int, rounds: int) -> list[dict[str, Any]]:
    """``calibrate`` rounds interrupted late (how long the call takes here, now: the first,
    which starts the forkserver, does not count), then ``rounds`` with the Ctrl-C swept over
    20-130 % of that; the outcomes of all."""
    outcomes = [_round(proc, 1.0) for _ in range(calibrate)]
    took = statistics.median(o["took"] for o in outcomes[1:])
    for i in range(rounds):
        outcomes.append(_round(proc, took * (0.2 + 1.1 * i / max(1, rounds - 1))))
    assert proc.stdout is not None
    assert readline(proc.stdout) == "end\n"
    assert proc.wait(30) == 0
    return outcomes


@pytest.mark.parametrize("n", [2, 3])
def test_ctrl_c_as_addprocs_ends_leaves_no_worker_the_caller_never_got(master: Any, n: int) -> None:
    calibrate, rounds = 4, 30
    outcomes = sweep(master(str(n), str(calibrate + rounds)), calibrate, rounds)
    stray = [o for o in outcomes if o["stray"]]
    assert not stray, f"{len(stray)} of {len(outcomes)} rounds left workers: {stray}"
    # the sweep did land on both sides of the call's end
    assert any(o["raised"] for o in outcomes), outcomes
    assert any(o["got"] is not None for o in outcomes[calibrate:]), outcomes


# a real Ctrl-C in the one window the sweep rarely hits: add_workers has returned the ids and
# addprocs has not (its first call after add_workers is _over_ssh; a profile function sends
# the SIGINT there, on the main thread)
AT_THE_RETURN = """
import os, signal, sys, time, traceback
from pydistributed import addprocs, workers

def at_the_return(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "_over_ssh":
        sys.setprofile(None)
        os.kill(os.getpid(), signal.SIGINT)

got = None
sys.setprofile(at_the_return)
try:
    got = addprocs(2)
except KeyboardInterrupt as e:
    sys.setprofile(None)
    names = [f.name for f in traceback.extract_tb(e.__traceback__)]
    print("KeyboardInterrupt in", names[names.index("addprocs"):][:2], flush=True)
deadline = time.monotonic() + 20
while workers() != [1] and time.monotonic() < deadline:
    time.sleep(0.05)
print("got", got, "workers", workers(), flush=True)
"""


def test_ctrl_c_after_the_workers_joined_and_before_addprocs_returns_removes_them(
    master_scripts: Any,
) -> None:
    proc = master_scripts(AT_THE_RETURN)
    assert readline(proc.stdout, timeout=60) == "KeyboardInterrupt in ['addprocs', '_over_ssh']\n"
    assert readline(proc.stdout, timeout=60) == "got None workers [1]\n"
    assert proc.wait(30) == 0


# a real Ctrl-C as addprocs starts its coordinator thread, before that thread exists (a profile
# function sends the SIGINT at the call of its Thread.start, on the main thread): nothing was
# launched, and the call neither waits for the coordinator nor warns of workers still starting
AT_THE_START = """
import os, signal, sys, threading, time, traceback
from pydistributed import addprocs, remotecall_fetch, workers

def at_the_start(frame, event, arg):
    if event == "call" and frame.f_code is threading.Thread.start.__code__:
        thread = frame.f_locals.get("self")
        if getattr(thread, "name", None) == "pydist-addprocs":
            sys.setprofile(None)
            os.kill(os.getpid(), signal.SIGINT)

sys.setprofile(at_the_start)
try:
    addprocs(2)
except KeyboardInterrupt as e:
    sys.setprofile(None)
    names = [f.name for f in traceback.extract_tb(e.__traceback__)]
    print("KeyboardInterrupt in", names[-2:], flush=True)
print("alive", sorted(t.name for t in threading.enumerate() if t.name.startswith("pydist-add")),
      "workers", workers(), flush=True)
(w,) = addprocs(1)
print("then", remotecall_fetch(lambda: 6 * 7, w), flush=True)
"""


def test_ctrl_c_as_addprocs_starts_its_coordinator_launches_nothing(master_scripts: Any) -> None:
    proc = master_scripts(AT_THE_START, stderr=True)
    out, err = proc.communicate(timeout=60)
    assert out.splitlines() == [
        "KeyboardInterrupt in ['start', 'at_the_start']",
        "alive [] workers [1]",
        "then 42",
    ], err
    assert proc.returncode == 0, err
    assert "still starting" not in err


# a manager whose launch goes on after its first worker (it waits for a file that never comes,
# as a batch scheduler waiting for nodes would): a Ctrl-C once that worker has joined
SLOW_LAUNCH = """
import os, signal, subprocess, sys, threading, time
from pydistributed import ClusterManager, WorkerConfig, addprocs, cluster_cookie, workers

started = []

class OneThenWaits(ClusterManager):
    def launch(self, params, launched, ntfy):
        proc = subprocess.Popen(
            [sys.executable, "-m", "pydistributed.worker", "--cookie", cluster_cookie()],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )
        started.append(proc)
        with ntfy:
            launched.append(WorkerConfig(process=proc, io=proc.stdout))
            ntfy.notify_all()
        for _ in range(300):  # 30 s, unless told to stop (the file never comes)
            if os.path.exists("stop"):
                return
            time.sleep(0.1)

def interrupt_once_joined():
    while workers() == [1]:
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)

threading.Thread(target=interrupt_once_joined, daemon=True).start()
t0 = time.monotonic()
try:
    addprocs(OneThenWaits())
except KeyboardInterrupt:
    took = time.monotonic() - t0
    print("interrupted", "quickly" if took < 4 else f"after {took:.1f} s", flush=True)
deadline = time.monotonic() + 10
while (workers() != [1] or started[0].poll() is None) and time.monotonic() < deadline:
    time.sleep(0.05)
print("workers", workers(), "process ended", started[0].poll() is not None, flush=True)
open("stop", "w").close()
"""


def test_ctrl_c_while_a_manager_s_launch_goes_on_removes_the_joined_at_once(
    master_scripts: Any,
) -> None:
    """The call waited for the launch to end before removing the workers that had joined:
    KeyboardInterrupt came after 5 s, and the worker stayed in the cluster until the launch
    returned (for ever, for a launch that never does)."""
    proc = master_scripts(SLOW_LAUNCH, stderr=True)
    out, err = proc.communicate(timeout=90)
    lines = out.splitlines()
    assert lines[:1] == ["interrupted quickly"], (out, err)
    assert lines[1:] == ["workers [1] process ended True"], (out, err)
