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
    ("how", "mode"),
    [("SIGKILL", "plain"), ("SIGTERM", "plain"), ("SIGKILL", "tunnel"), ("SIGKILL", "multiplex")],
)
def test_remote_workers_exit_when_the_master_is_killed(sshd: Sshd, how: str, mode: str) -> None:
    kw = dict(sshd.kw, machines=[(sshd.spec, 2)])
    if mode == "tunnel":
        kw.update(tunnel=True, topology="master_worker")
    if mode == "multiplex":
        kw.update(multiplex=True)
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
    clients: list[int] = []
    try:
        assert master.stdout is not None
        line = master.stdout.readline()  # bounded by the test's timeout
        ospids = json.loads(line)
        assert len(ospids) == 2 and all(alive(p) for p in ospids)
        # the ssh clients are the master's children; the workers are not
        clients = _children(master.pid)
        # a session per worker, and a forward per worker or a control master per host
        assert len(clients) == {"plain": 2, "tunnel": 4, "multiplex": 3}[mode]
        assert not set(ospids) & set(clients)
        control_dirs = []
        for c in list(clients):
            cmd = _cmdline(c)
            if "ControlMaster=yes" in cmd:  # the shell that runs the control master
                clients += _children(c)  # ssh itself
                (opt,) = [a for a in cmd if a.startswith("ControlPath=")]
                control_dirs.append(os.path.dirname(opt.split("=", 1)[1]))
        assert len(control_dirs) == (1 if mode == "multiplex" else 0)
        assert all(os.path.isdir(d) for d in control_dirs)
        start = time.monotonic()
        master.send_signal(getattr(signal, how))
        master.wait(10)
        for p in ospids:
            assert wait_gone(p, 5), f"remote worker {p} outlived its master ({how})"
        took = time.monotonic() - start
        for c in clients:  # the sessions (forwards, control masters) end with the workers
            assert wait_gone(c, 5), f"ssh client {c} still runs: {_cmdline(c)}"
        assert took < 5
        for d in control_dirs:  # the control master's socket directory is removed
            deadline = time.monotonic() + 5
            while os.path.exists(d) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.exists(d), f"{d} is left"
    finally:
        if master.poll() is None:
            master.kill()
            master.wait(10)
        if master.stdout is not None:
            master.stdout.close()
        for p in ospids + clients:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid]


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
