"""SSH workers against a real sshd on loopback: launching, the cookie's path, removing."""

from __future__ import annotations

import os
import socket
import time

import pytest

from pydistributed import addprocs, nprocs, remotecall_fetch, rmprocs, workers
from pydistributed.cluster import current_cluster

from .conftest import Sshd, alive, wait_gone


def _whoami() -> tuple[int, int, str]:
    return os.getpid(), os.getppid(), socket.gethostname()


def _cmdline_and_environ() -> tuple[bytes, bytes]:
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    with open("/proc/self/environ", "rb") as f:
        environ = f.read()
    return cmdline, environ


def _every_cmdline() -> list[bytes]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    out.append(f.read())
            except OSError:
                pass
    return out


def test_two_workers_on_one_host(sshd: Sshd, cleanup_workers: list[int]) -> None:
    pids = addprocs([(sshd.spec, 2)], **sshd.kw)
    cleanup_workers += pids
    assert len(pids) == 2 and set(pids) <= set(workers())
    answers = [remotecall_fetch(_whoami, p) for p in pids]
    ospids = {a[0] for a in answers}
    assert len(ospids) == 2 and os.getpid() not in ospids
    # not our children: started by sshd
    assert all(a[1] != os.getpid() for a in answers)
    assert remotecall_fetch(lambda: 6 * 7, pids[0]) == 42


def test_cookie_and_env_values_are_on_no_command_line(
    sshd: Sshd, cleanup_workers: list[int]
) -> None:
    secret = "s3cr3t value with 'quotes' and $dollars"
    kw = dict(sshd.kw)
    kw["env"] = {**kw["env"], "PD_SECRET": secret}  # type: ignore[dict-item]
    (pid,) = addprocs([sshd.spec], **kw)
    cleanup_workers.append(pid)
    cookie = current_cluster().cookie.encode()
    cmdline, environ = remotecall_fetch(_cmdline_and_environ, pid)
    assert b"pydistributed.worker" in cmdline
    assert cookie not in cmdline and cookie not in environ
    assert secret.encode() not in cmdline
    assert remotecall_fetch(lambda: os.environ["PD_SECRET"], pid) == secret
    # nor on any command line of this host (the local ssh client included)
    for line in _every_cmdline():
        assert cookie not in line and secret.encode() not in line


def test_machine_spec_forms_and_keywords(sshd: Sshd, cleanup_workers: list[int]) -> None:
    # a Host alias from the client config, with its own port; bind_addr; exeflags; dir
    alias = sshd.dir / "alias_config"
    alias.write_text(
        f"Host pdtest\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        + sshd.client_config.read_text()
    )
    kw = dict(sshd.kw)
    kw.update(sshflags=["-F", str(alias)], exeflags=["-X", "utf8"], dir=str(sshd.dir))
    pids = addprocs(["pdtest 127.0.0.1", ("pdtest", 1)], **kw)
    cleanup_workers += pids
    assert len(pids) == 2
    for p in pids:
        cwd, utf8 = remotecall_fetch(lambda: (os.getcwd(), __import__("sys").flags.utf8_mode), p)
        assert cwd == str(sshd.dir) and utf8 == 1
    hosts = {current_cluster().registry.get(p).host for p in pids}  # type: ignore[union-attr]
    assert "127.0.0.1" in hosts  # the one with a bind_addr listens there


def test_auto_count_and_max_parallel(sshd: Sshd, cleanup_workers: list[int]) -> None:
    ncpu = len(os.sched_getaffinity(0))
    start = time.monotonic()
    pids = addprocs([(sshd.spec, "auto")], max_parallel=1, **sshd.kw)
    cleanup_workers += pids
    assert len(pids) == ncpu, time.monotonic() - start


def test_multiplex_shares_one_connection(sshd: Sshd, cleanup_workers: list[int]) -> None:
    from pydistributed.managers.ssh import SSHManager

    manager = SSHManager([(sshd.spec, 3)])
    try:
        pids = addprocs(manager, multiplex=True, **sshd.kw)
        cleanup_workers += pids
        assert len(pids) == 3
        assert len(manager._masters) == 1
        ((master, path),) = manager._masters.values()
        assert master.poll() is None and os.path.exists(path)
        assert all(remotecall_fetch(lambda: 1, p) == 1 for p in pids)
        rmprocs(pids, waitfor=10)
    finally:
        manager.close()
    assert master.poll() is not None and not os.path.exists(path)


def test_rmprocs_ends_the_remote_worker(sshd: Sshd) -> None:
    (pid,) = addprocs([sshd.spec], **sshd.kw)
    ospid = remotecall_fetch(os.getpid, pid)
    n = nprocs()
    rmprocs(pid, waitfor=10)
    assert nprocs() == n - 1
    assert wait_gone(ospid, 5), f"remote worker {ospid} still runs after rmprocs"


def test_tunnel_needs_master_worker(sshd: Sshd) -> None:
    with pytest.raises(ValueError, match="tunnel=True\\) needs topology='master_worker'"):
        addprocs([sshd.spec], tunnel=True, **sshd.kw)
    assert alive(sshd.pid)
