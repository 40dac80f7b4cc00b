"""``addprocs(machines, bootstrap=True)``: a host with Python but without pydistributed (here
an interpreter of a bare venv: the standard library only) gets the master's copy of
pydistributed, cloudpickle and tqdm over the ssh session, runs it from memory, and serves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pydistributed import (
    addprocs,
    pmap,
    remotecall_fetch,
    rmprocs,
    workers,
)
from pydistributed.managers.ssh import SSHLaunchError
from pydistributed.managers.sshbootstrap import BOOT_CODE, archive, shipped_packages
from pydistributed.managers.sshcommand import stdin_payload

from .conftest import NetnsHosts, Sshd, wait_gone


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An interpreter that has the standard library only (a venv without pip or packages)."""
    d = tmp_path_factory.mktemp("barevenv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True, timeout=60)
    python = str(d / "bin" / "python")
    probe = subprocess.run(
        [python, "-c", "import pydistributed"], capture_output=True, text=True, timeout=30,
        env={"PATH": os.environ["PATH"]}, cwd="/",
    )  # fmt: skip
    assert probe.returncode != 0 and "No module named" in probe.stderr
    yield python


def test_the_archive_holds_the_packages_sources() -> None:
    import io
    import zipfile

    names = set(zipfile.ZipFile(io.BytesIO(archive())).namelist())
    assert "pydistributed/__init__.py" in names and "pydistributed/worker.py" in names
    assert "pydistributed/managers/local.py" in names
    assert "cloudpickle/__init__.py" in names
    assert not any("__pycache__" in n or not n.endswith(".py") for n in names)
    assert set(shipped_packages()) >= {"pydistributed", "cloudpickle"}


def test_the_boot_code_runs_a_worker_from_memory(bare_python: str) -> None:
    """Without ssh: the bare interpreter, the payload on stdin, the worker's banner."""
    with subprocess.Popen(
        [bare_python, "-c", BOOT_CODE, "--bind-to", "127.0.0.1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={"PATH": os.environ["PATH"], "PYDIST_WORKER_TIMEOUT": "5"}, cwd="/",
    ) as proc:  # fmt: skip
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(stdin_payload([], "x" * 32, "posix", archive()))
            proc.stdin.close()
            line = proc.stdout.readline().decode()
            assert line.startswith("pydist_worker:"), line
            assert line.rstrip().endswith("#127.0.0.1"), line
            # nobody joins it: it exits after PYDIST_WORKER_TIMEOUT like any worker
            assert proc.wait(20) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_no_archive_is_a_clear_error(bare_python: str) -> None:
    r = subprocess.run(
        [bare_python, "-c", BOOT_CODE], input=b"cookie\n", capture_output=True, timeout=30,
        env={"PATH": os.environ["PATH"]}, cwd="/",
    )  # fmt: skip
    assert r.returncode == 1 and b"no archive on standard input" in r.stderr


def test_a_host_without_pydistributed(
    sshd: Sshd,
    netns_hosts: NetnsHosts,
    bare_python: str,
    cleanup_workers: list[int],
    tmp_path: Path,
) -> None:
    h1 = netns_hosts.addresses[0]
    kw = dict(sshd.kw, exename=bare_python, env={}, dir=str(tmp_path))
    before = workers()
    with pytest.raises(SSHLaunchError, match="pydistributed"):
        addprocs([f"root@{h1}"], **kw)  # the host lacks it: diagnosed
    assert workers() == before
    start = time.monotonic()
    (w,) = addprocs([f"root@{h1}"], bootstrap=True, **kw)
    cleanup_workers.append(w)
    where = remotecall_fetch(
        lambda: (
            __import__("pydistributed").__file__,
            __import__("cloudpickle").__file__,
            __import__("socket").gethostname(),
            __import__("os").getpid(),
        ),
        w,
    )
    took = time.monotonic() - start
    # the same with the package there (this tree, on PYTHONPATH), for the figure
    start = time.monotonic()
    (installed,) = addprocs([f"root@{h1}"], **sshd.kw)
    cleanup_workers.append(installed)
    remotecall_fetch(lambda: 1, installed)
    usual = time.monotonic() - start
    rmprocs(installed, waitfor=10)
    print(
        f"\nFIGURE bootstrap: addprocs to the first call's answer {took:.2f} s "
        f"(installed on the host: {usual:.2f} s)"
    )
    assert where[0].startswith("<pydist-bootstrap>/pydistributed/"), where
    assert where[1].startswith("<pydist-bootstrap>/cloudpickle/"), where
    assert where[2] == netns_hosts.names[0]
    assert pmap(lambda x: x * 2, range(20)) == [x * 2 for x in range(20)]
    rmprocs(w, waitfor=10)
    assert wait_gone(where[3], 5)
