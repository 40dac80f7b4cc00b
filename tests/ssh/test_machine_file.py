"""``pydist --machine-file`` against the loopback sshd, with ``-p`` too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, SRC, Sshd, wait_gone

_SCRIPT = """\
import json, os, sys
from pydistributed import remotecall_fetch, workers
ws = workers()
def parents():  # a local worker is forked by the master's forkserver: its grandparent
    with open(f"/proc/{os.getppid()}/stat") as f:
        return os.getpid(), [os.getppid(), int(f.read().rsplit(")", 1)[1].split()[1])]
info = [remotecall_fetch(parents, w) for w in ws]
print(json.dumps({"argv": sys.argv, "workers": ws, "info": info, "me": os.getpid()}))
"""


def test_machine_file_with_local_workers(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text(
        f"# the loopback sshd, twice, once with a bind address\n\n"
        f"2*{sshd.spec}\n{sshd.spec} 127.0.0.1   # a comment\n"
    )
    (tmp_path / "job.py").write_text(_SCRIPT)
    env = dict(os.environ)
    env["PATH"] = f"{sshd.bindir}:{env['PATH']}"  # its `ssh` knows the key and the port
    env["PYTHONPATH"] = f"{SRC}:{ROOT}"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pydistributed",
            "-p",
            "1",
            "--machine-file",
            "hosts",
            "job.py",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["argv"] == ["job.py", "x"]
    assert out["workers"] == [2, 3, 4, 5]
    ospids = [pid for pid, _ in out["info"]]
    assert len(set(ospids)) == 4
    # the first is the local worker (forked by pydist's forkserver); the three others were
    # started by sshd
    assert [out["me"] in ppids for _, ppids in out["info"]] == [True, False, False, False]
    for pid in ospids:
        assert wait_gone(pid, 10), f"worker {pid} outlived pydist"


def test_machine_file_host_that_fails(sshd: Sshd, tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("root@127.0.0.1:1\n")
    (tmp_path / "job.py").write_text("open('ran', 'w').close()\n")
    env = dict(os.environ, PATH=f"{sshd.bindir}:{os.environ['PATH']}")
    r = subprocess.run(
        [sys.executable, "-m", "pydistributed", "--machine-file", "hosts", "job.py"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode == 1, r.stderr
    assert "--machine-file hosts: the workers could not start: SSHLaunchError" in r.stderr
    assert "root@127.0.0.1:1" in r.stderr and "Connection refused" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "ran").exists()
