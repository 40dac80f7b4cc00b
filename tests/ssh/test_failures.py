"""Launch diagnosis: a host that cannot run a worker makes addprocs raise ONE error naming
it, with the end of the session's stderr, within a bounded time; the other hosts' workers
stay in the cluster."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pydistributed import LaunchError, addprocs, remotecall_fetch, workers
from pydistributed.managers.ssh import SSHLaunchError

from .conftest import Sshd, free_port, stranger_sshflags


def _launch_fails(machines: list[object], limit: float, **kw: object) -> SSHLaunchError:
    before = set(workers()) - {1}
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        addprocs(machines, **kw)
    took = time.monotonic() - start
    assert took < limit, f"took {took:.1f} s"
    assert isinstance(info.value, SSHLaunchError)
    assert set(workers()) - {1} == before | set(info.value.started)
    return info.value


def test_host_down(sshd: Sshd) -> None:
    spec = f"root@127.0.0.1:{free_port()}"  # nothing listens there
    err = _launch_fails([spec], 15, **sshd.kw)
    assert spec in str(err) and "could not reach" in str(err)
    assert "Connection refused" in str(err)
    assert err.failures == [(spec, err.failures[0][1])] and err.started == []


def test_unreachable_host_is_bounded_by_the_worker_timeout(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYDIST_WORKER_TIMEOUT", "2")
    err = _launch_fails(["root@192.0.2.1"], 12, **sshd.kw)  # TEST-NET-1: never answers
    assert "192.0.2.1" in str(err)


def test_key_refused(sshd: Sshd, tmp_path: Path) -> None:
    kw = dict(sshd.kw, sshflags=stranger_sshflags(sshd, tmp_path))
    err = _launch_fails([sshd.spec], 15, **kw)
    assert sshd.spec in str(err) and "refused the login" in str(err)
    assert "Permission denied" in str(err)


def test_a_host_with_a_count_is_listed_once(sshd: Sshd, tmp_path: Path) -> None:
    kw = dict(sshd.kw, sshflags=stranger_sshflags(sshd, tmp_path))
    err = _launch_fails([(sshd.spec, 3)], 20, **kw)
    text = str(err)
    assert text.count("Permission denied") == 1, text
    assert f"{sshd.spec} (3 workers): the host refused the login" in text
    assert len(err.failures) == 1


def test_no_python_there(sshd: Sshd) -> None:
    kw = dict(sshd.kw, exename="/nonexistent/bin/python3")
    err = _launch_fails([sshd.spec], 15, **kw)
    assert "no Python at '/nonexistent/bin/python3'" in str(err)
    assert "/nonexistent/bin/python3" in err.output


def test_no_pydistributed_there(sshd: Sshd) -> None:
    # -S: no site-packages, where pydistributed is installed; and no PYTHONPATH to this tree
    kw = dict(sshd.kw, exeflags=["-S"], env={})
    err = _launch_fails([sshd.spec], 15, **kw)
    assert "pydistributed is not installed there" in str(err)
    assert "No module named" in err.output


def test_a_bad_dir(sshd: Sshd) -> None:
    err = _launch_fails([sshd.spec], 15, **dict(sshd.kw, dir="/nonexistent/dir"))
    assert "/nonexistent/dir" in err.output


def test_worker_dies_before_its_banner(sshd: Sshd) -> None:
    code = "import sys; sys.stderr.write('boom: it broke\\n'); sys.exit(3)"
    err = _launch_fails([sshd.spec], 15, **dict(sshd.kw, exeflags=["-c", code]))
    assert "status 3" in str(err) and "boom: it broke" in str(err)


def test_worker_dies_after_printing_something(sshd: Sshd) -> None:
    code = "print('hello'); import sys; sys.stderr.write('then: broke\\n'); sys.exit(4)"
    before = set(workers()) - {1}
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        addprocs([sshd.spec], **dict(sshd.kw, exeflags=["-c", code]))
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert msg.startswith(f"over ssh to {sshd.spec}: ") and "then: broke" in msg, msg
    assert set(workers()) - {1} == before


def test_good_hosts_stay_usable(sshd: Sshd, cleanup_workers: list[int]) -> None:
    bad = f"root@127.0.0.1:{free_port()}"
    err = _launch_fails([(sshd.spec, 2), bad], 20, **sshd.kw)
    cleanup_workers += err.started
    assert len(err.started) == 2 and bad in str(err) and sshd.spec not in str(err).split(";")[0]
    assert f"workers {err.started} started" in str(err)
    assert [remotecall_fetch(os.getpid, p) != os.getpid() for p in err.started] == [True] * 2


def test_bad_specs_are_refused_before_any_login(sshd: Sshd) -> None:
    for bad, why in (
        ("host:99999", "bad port"),
        ("host:x", "bad port"),
        ("", "expected"),
        ("a b c", "expected"),
        ("@host", "empty user"),
    ):
        with pytest.raises(ValueError, match=why):
            addprocs([bad], **sshd.kw)
    with pytest.raises(ValueError, match="count"):
        addprocs([(sshd.spec, -1)], **sshd.kw)
    with pytest.raises(ValueError, match="shell"):
        addprocs([sshd.spec], shell="fish", **sshd.kw)
    with pytest.raises(ValueError, match="newline"):
        addprocs([sshd.spec], **dict(sshd.kw, env={"A": "x\ny"}))
    with pytest.raises(TypeError, match="bogus"):
        addprocs([sshd.spec], bogus=1, **sshd.kw)
    assert sys.executable  # nothing was started: the sshd log shows no login attempt
