"""Version check at join: a worker whose pydistributed or cloudpickle version differs from the
master's is refused, and addprocs raises one error naming the host and both versions.

The remote worker really runs another version: it imports a copy of this tree (or of
cloudpickle) whose version string is patched, through ``env={"PYTHONPATH": copy}``.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import cloudpickle
import pytest

import pydistributed
from pydistributed import LaunchError, addprocs, remotecall_fetch, workers
from pydistributed.errors import AuthenticationError
from pydistributed.handshake import VersionMismatchError, _mismatch, versions

from .conftest import ROOT, SRC, NetnsHosts, Sshd, process_state


def _patched_copy(tmp: Path, package: str, source: str, new: str) -> Path:
    """``tmp/<package>``: a copy of the package at ``source`` whose ``__version__`` is ``new``."""
    dest = tmp / package
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    init = dest / "__init__.py"
    text, n = re.subn(
        r'^__version__ = "[^"]*"$', f'__version__ = "{new}"', init.read_text(), flags=re.M
    )
    assert n == 1, f"no __version__ line in {init}"
    init.write_text(text)
    return tmp


def _no_worker_left(before: set[int], hostname: str, netns: NetnsHosts) -> None:
    assert set(workers()) == before
    # the refused worker exits by itself at once (not after PYDIST_WORKER_TIMEOUT, 60 s by
    # default): a process with the cookie and other versions connected
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        left = [
            pid
            for pid in os.listdir("/proc")
            if pid.isdigit()
            and process_state(int(pid)) not in (None, "Z", "X")
            and _in_netns(int(pid), netns.names[netns.addresses.index(hostname)])
            and b"pydistributed.worker" in _cmdline(int(pid))
        ]
        if not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"refused workers still running on {hostname}: {left}")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _in_netns(pid: int, name: str) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return False


def test_another_pydistributed_is_refused(
    sshd: Sshd,
    netns_hosts: NetnsHosts,
    tmp_path: Path,
    cleanup_workers: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "60")
    h2 = netns_hosts.addresses[1]
    copy = _patched_copy(tmp_path, "pydistributed", f"{SRC}/pydistributed", "0.0.1+other")
    mine = pydistributed.__version__
    before = set(workers())
    start = time.monotonic()
    with pytest.raises(VersionMismatchError) as info:
        addprocs([f"root@{h2}"], **dict(sshd.kw, env={"PYTHONPATH": f"{copy}:{ROOT}"}))
    took = time.monotonic() - start
    err = info.value
    msg = str(err)
    assert isinstance(err, LaunchError) and isinstance(err, AuthenticationError), msg
    assert f"root@{h2}" in msg and f" at {h2}:" in msg, msg
    assert "pydistributed 0.0.1+other" in msg and f"pydistributed {mine}" in msg, msg
    assert "EOF" not in msg and "closed" not in msg, msg
    assert took < 15, took
    _no_worker_left(before, h2, netns_hosts)
    # the host itself is fine: with this tree, a worker joins there
    pids = addprocs([f"root@{h2}"], **sshd.kw)
    cleanup_workers += pids
    assert remotecall_fetch(lambda: 1 + 1, pids[0]) == 2


def test_another_cloudpickle_is_refused(
    sshd: Sshd, netns_hosts: NetnsHosts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "60")
    h1 = netns_hosts.addresses[0]
    source = str(Path(cloudpickle.__file__).parent)
    copy = _patched_copy(tmp_path, "cloudpickle", source, "0.0.1")
    before = set(workers())
    with pytest.raises(VersionMismatchError) as info:
        addprocs([f"root@{h1}"], **dict(sshd.kw, env={"PYTHONPATH": f"{copy}:{SRC}:{ROOT}"}))
    msg = str(info.value)
    assert f"root@{h1}" in msg and "cloudpickle" in msg, msg
    assert "cloudpickle 0.0.1" in msg and f"cloudpickle {cloudpickle.__version__}" in msg, msg
    _no_worker_left(before, h1, netns_hosts)


def test_mismatch_names_every_difference() -> None:
    mine = versions()
    assert set(mine) == {"protocol", "python", "pydistributed", "cloudpickle"}
    theirs = dict(mine, python="2.7", cloudpickle="1.0")
    problem = _mismatch(theirs)
    assert problem is not None
    assert f"Python {mine['python']}" in problem and "Python 2.7" in problem, problem
    assert f"cloudpickle {mine['cloudpickle']}" in problem and "cloudpickle 1.0" in problem
    assert f"pydistributed {mine['pydistributed']}" not in problem, problem  # it matches
    assert _mismatch(dict(mine)) is None
    # an older peer that sends only protocol and python
    old = {"protocol": mine["protocol"], "python": mine["python"]}
    assert "unknown" in (_mismatch(old) or "")
