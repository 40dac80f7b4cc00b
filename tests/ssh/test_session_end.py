"""A worker whose ssh session ends while it is still connected (the master's ssh client killed,
or the host's ``sshd: user@notty`` session process killed) stays usable: what it prints is
dropped (``/dev/null`` on its descriptors 1 and 2), and the master logs once that its output
is lost."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from pydistributed import remotecall_fetch, rmprocs, workers
from tests.conftest import worker_table

from .conftest import Sshd, wait_gone


def _print_a_lot() -> str:
    for i in range(200):
        print("x" * 100, i)
    print("to stderr", file=__import__("sys").stderr, flush=True)
    return "printed"


def _fds() -> list[str]:
    return [os.readlink(f"/proc/self/fd/{fd}") for fd in (1, 2)]


def _child_prints() -> int:
    return os.system("echo from a child process; echo and on stderr >&2")


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("what", ["the ssh client", "the sshd session"])
def test_a_worker_whose_session_ended_stays_usable(
    sshd: Sshd, what: str, cleanup_workers: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    from pydistributed import addprocs

    (w,) = addprocs([sshd.spec], **sshd.kw)
    cleanup_workers.append(w)
    ospid = remotecall_fetch(os.getpid, w)
    assert remotecall_fetch(_print_a_lot, w) == "printed"
    client = worker_table()[w].config.process
    victim = client.pid if what == "the ssh client" else _ppid(ospid)
    if what == "the sshd session":
        with open(f"/proc/{victim}/cmdline", "rb") as f:
            assert f.read().startswith(b"sshd:"), "the worker's parent is its sshd session"
    caplog.set_level(logging.WARNING, logger="pydistributed")
    os.kill(victim, signal.SIGKILL)
    assert wait_gone(victim, 10)
    # calls that print work at once, and keep working
    for _ in range(5):
        assert remotecall_fetch(_print_a_lot, w) == "printed"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and remotecall_fetch(_fds, w) != ["/dev/null"] * 2:
        time.sleep(0.1)
    assert remotecall_fetch(_fds, w) == ["/dev/null"] * 2
    assert remotecall_fetch(_child_prints, w) == 0  # no SIGPIPE in a child either
    assert remotecall_fetch(_print_a_lot, w) == "printed"
    lost = [r.getMessage() for r in caplog.records if "output is lost" in r.getMessage()]
    assert len(lost) == 1, lost
    assert lost[0].startswith(f"worker {w}'s output is lost: its ssh session ended"), lost
    assert w in workers()
    rmprocs(w, waitfor=30)
    assert w not in workers()
    assert wait_gone(ospid, 10)
