"""A real OpenSSH server on loopback for the SSH workers' tests (session-scoped).

The fixture generates a host key and a user key in a temporary directory, writes an
``sshd_config`` (``StrictModes no``: the keys live under a mode-1777 /tmp; ``MaxStartups``
raised for parallel logins), starts ``/usr/sbin/sshd -D`` on a free loopback port and stops it
by PID at the end. Tests reach it with ``sshflags=["-F", <a client config>]``: the client
config names the key and sends no host key to ``~/.ssh/known_hosts``. Skipped with a reason
only where there is no sshd or ssh client (``.ci/run`` installs them, and sets
``PYDIST_REQUIRE_SSH_TESTS`` so that they fail instead of skipping).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pydistributed

SSHD = "/usr/sbin/sshd"
SRC = str(Path(pydistributed.__file__).resolve().parents[1])  # the tree under test
ROOT = str(Path(__file__).resolve().parents[2])  # the repository (tests/ importable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``host:port`` accepts connections within ``timeout`` s (False at once when
    ``proc``, the server, has exited)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server this fixture started: SIGTERM, then SIGKILL after 10 s; reaped."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def stranger_sshflags(sshd: Sshd, tmp_path: Path) -> list[str]:
    """ssh flags that log in to ``sshd`` with a key it does not know (refused)."""
    keygen(tmp_path / "stranger")
    config = tmp_path / "config"
    config.write_text(
        sshd.client_config.read_text().replace(
            str(sshd.dir / "user_key"), str(tmp_path / "stranger")
        )
    )
    return ["-F", str(config)]


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``Z``: a zombie), None when there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


@dataclass
class Sshd:
    """A running test sshd: ``spec`` to log in (``root@127.0.0.1:PORT``), ``sshflags`` for
    the client, ``kw`` the addprocs keywords that make a remote worker import this tree."""

    dir: Path
    port: int
    pid: int
    user: str
    client_config: Path
    log: Path
    kw: dict[str, object] = field(default_factory=dict)
    bindir: Path | None = None  # holds an `ssh` that logs in here with this tree's PYTHONPATH

    @property
    def spec(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def sshflags(self) -> list[str]:
        return ["-F", str(self.client_config)]

    def ssh(self, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "ssh",
                *self.sshflags,
                "-p",
                str(self.port),
                "-o",
                "BatchMode=yes",
                f"{self.user}@127.0.0.1",
                command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _why_no_sshd() -> str | None:
    if not os.path.exists(SSHD):
        return f"no OpenSSH server at {SSHD} (apt-get install openssh-server; .ci/run does)"
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        return "no OpenSSH client (apt-get install openssh-client)"
    return None


@pytest.fixture(scope="session")
def sshd() -> Iterator[Sshd]:
    why = _why_no_sshd()
    if why:
        if os.environ.get("PYDIST_REQUIRE_SSH_TESTS"):  # set by .ci/run: no silent skip
            pytest.fail(f"PYDIST_REQUIRE_SSH_TESTS is set, but {why}")
        pytest.skip(why)
    d = Path(tempfile.mkdtemp(prefix="pydist-sshd-"))
    proc = None
    try:
        keygen(d / "host_key")
        keygen(d / "user_key")
        keygen(d / "other_key")  # a key the server does not know
        auth = d / "authorized_keys"
        shutil.copy(d / "user_key.pub", auth)
        auth.chmod(0o600)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        for _attempt in range(5):
            port = free_port()
            (d / "sshd_config").write_text(
                f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n"
                f"PidFile {d}/sshd.pid\nAuthorizedKeysFile {auth}\nStrictModes no\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PermitRootLogin prohibit-password\nUsePAM no\nAllowTcpForwarding yes\n"
                "MaxStartups 100:30:200\nMaxSessions 100\nPrintMotd no\nAcceptEnv PYTHONPATH\n"
            )
            log = d / "sshd.log"
            with open(log, "ab") as logf:
                proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    start_new_session=True,
                )
            if wait_listening("127.0.0.1", port, proc, 10):
                break
            proc.kill()
            proc.wait(10)
            proc = None
        if proc is None:
            pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()[-2000:]}")
        config = d / "ssh_config"
        config.write_text(
            f"Host *\n  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        )
        server = Sshd(d, port, proc.pid, user, config, d / "sshd.log")
        server.kw = {
            "sshflags": server.sshflags,
            "exename": sys.executable,
            "env": {"PYTHONPATH": f"{SRC}:{ROOT}"},
            "dir": ROOT,
        }
        # `ssh` for programs that call it by name (pydist --machine-file): this server's
        # client config, and PYTHONPATH to this tree for the remote side (AcceptEnv above)
        bindir = d / "bin"
        bindir.mkdir()
        wrapper = bindir / "ssh"
        wrapper.write_text(
            f"#!/bin/sh\nexec {shutil.which('ssh')} -F {config} "
            f'-o SetEnv=PYTHONPATH={SRC}:{ROOT} "$@"\n'
        )
        wrapper.chmod(0o755)
        server.bindir = bindir
        r = server.ssh("true")
        assert r.returncode == 0, f"cannot log in to the test sshd: {r.stderr}"
        yield server
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cleanup_workers() -> Iterator[list[int]]:
    """A list for the test to extend with worker ids; they are removed after the test, and any
    remote worker process still alive then (by its OS pid) is killed."""
    from pydistributed import workers
    from tests.conftest import end_workers, worker_table

    pids: list[int] = []
    before = set(workers())
    yield pids
    table = worker_table()
    ospids = [info.ospid for p, info in table.items() if p not in before and info.ospid]
    end_workers([p for p in table if p not in before])
    for ospid in ospids:
        if not wait_gone(ospid, 10):
            os.kill(ospid, signal.SIGKILL)


# -- hosts with their own addresses: network namespaces ------------------------------------


@dataclass
class NetnsHosts:
    """Two namespace hosts on a bridge, each with its own address, hostname and sshd."""

    names: list[str]  # namespace names, also the hostnames
    addresses: list[str]
    bridge: str
    vethnames: list[str]
    sshd_pids: list[int]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _must(*args: str) -> None:
    r = _ip(*args)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _why_no_netns() -> str | None:
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "no `ip` (iproute2) or `unshare` here"
    probe = f"pdprobe{os.getpid()}"
    r = _ip("netns", "add", probe)
    if r.returncode != 0:
        return f"this machine cannot create network namespaces: {r.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture(scope="session")
def netns_hosts(sshd: Sshd) -> Iterator[NetnsHosts]:
    """Hosts h1 and h2 (unique names per session), 10.<N>.<M>.1 and .2 on a bridge that this
    host reaches at .254, each running its own sshd with the loopback sshd's keys."""
    why = _why_no_netns()
    if why:
        pytest.skip(why)
    tag = f"{os.getpid() % 100000}"
    bridge = f"pdbr{tag}"
    net = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    names = [f"pdh{i}x{tag}" for i in (1, 2)]
    addresses = [f"{net}.{i}" for i in (1, 2)]
    veths = [f"pdv{i}x{tag}" for i in (1, 2)]
    procs: list[subprocess.Popen[bytes]] = []
    made_ns: list[str] = []
    made_bridge = False
    try:
        _must("link", "add", bridge, "type", "bridge")
        made_bridge = True
        _must("addr", "add", f"{net}.254/24", "dev", bridge)
        _must("link", "set", bridge, "up")
        for name, addr, veth in zip(names, addresses, veths, strict=True):
            _must("netns", "add", name)
            made_ns.append(name)
            _must("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
            _must("link", "set", f"{veth}p", "netns", name)
            _must("-n", name, "link", "set", f"{veth}p", "name", "eth0")
            _must("-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
            _must("-n", name, "link", "set", "lo", "up")
            _must("-n", name, "link", "set", "eth0", "up")
            _must("-n", name, "route", "add", "default", "via", f"{net}.254")
            _must("link", "set", veth, "master", bridge)
            _must("link", "set", veth, "up")
            conf = sshd.dir / f"sshd_config_{name}"
            conf.write_text(
                (sshd.dir / "sshd_config")
                .read_text()
                .replace(f"Port {sshd.port}\n", "Port 22\n")
                .replace("ListenAddress 127.0.0.1\n", f"ListenAddress {addr}\n")
                .replace(f"PidFile {sshd.dir}/sshd.pid", f"PidFile {sshd.dir}/sshd_{name}.pid")
            )
            with open(sshd.dir / f"sshd_{name}.log", "ab") as logf:
                procs.append(
                    subprocess.Popen(
                        [
                            "ip", "netns", "exec", name, "unshare", "--uts", "sh", "-c",
                            f'hostname {name} && exec {SSHD} -D -e -f "$0"', str(conf),
                        ],
                        stdin=subprocess.DEVNULL,
                        stdout=logf,
                        stderr=logf,
                        start_new_session=True,
                    )
                )  # fmt: skip
        for addr, p in zip(addresses, procs, strict=True):
            assert wait_listening(addr, 22, p, 10), f"the sshd of {addr} did not start"
        yield NetnsHosts(names, addresses, bridge, veths, [p.pid for p in procs])
    finally:
        for p in procs:
            stop(p)
        for name in made_ns:
            _ip("netns", "del", name)
        for veth in veths:
            _ip("link", "del", veth)  # gone with its namespace already, normally
        if made_bridge:
            _ip("link", "del", bridge)
