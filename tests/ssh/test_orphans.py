"""No orphans on other hosts: a remote worker exits when its master dies, however it dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from .conftest import ROOT, SRC, Sshd, alive, wait_gone

_MASTER = textwrap.dedent(
    """
    import json, os, sys, time
    from pydistributed import addprocs, remotecall_fetch
    kw = json.loads(sys.argv[1])
    pids = addprocs([tuple(m) for m in kw.pop("machines")], **kw)
    ospids = [remotecall_fetch(os.getpid, p) for p in pids]
    print(json.dumps(ospids), flush=True)
    time.sleep(120)
    """
)


@pytest.mark.parametrize(
    ("how", "tunnel"), [("SIGKILL", False), ("SIGTERM", False), ("SIGKILL", True)]
)
def test_remote_workers_exit_when_the_master_is_killed(sshd: Sshd, how: str, tunnel: bool) -> None:
    kw = dict(sshd.kw, machines=[(sshd.spec, 2)])
    if tunnel:
        kw.update(tunnel=True, topology="master_worker")
    env = dict(os.environ, PYTHONPATH=f"{SRC}:{ROOT}")
    master = subprocess.Popen(
        [sys.executable, "-c", _MASTER, json.dumps(kw)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        start_new_session=True,
    )
    ospids: list[int] = []
    try:
        assert master.stdout is not None
        line = master.stdout.readline()  # bounded by the test's timeout
        ospids = json.loads(line)
        assert len(ospids) == 2 and all(alive(p) for p in ospids)
        # the ssh clients are the master's children; the workers are not
        clients = [
            int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == master.pid
        ]
        assert len(clients) == (4 if tunnel else 2)  # a session per worker, and a forward
        assert not set(ospids) & set(clients)
        start = time.monotonic()
        master.send_signal(getattr(signal, how))
        master.wait(10)
        for p in ospids:
            assert wait_gone(p, 5), f"remote worker {p} outlived its master ({how})"
        took = time.monotonic() - start
        for c in clients:  # the sessions (and forwards) end with the workers
            assert wait_gone(c, 5), f"ssh client {c} still runs"
        assert took < 5
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(10)
        if master.stdout is not None:
            master.stdout.close()
        for p in ospids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
