"""Every script in ``examples/`` runs under ``python -m pydistributed -p 2`` and says what it
should. Each test starts a fresh master with two workers; the script's exit ends them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(150)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` with two workers; return its standard output."""
    script = EXAMPLES / name
    assert script.is_file(), f"missing example {script}"
    proc = subprocess.run(
        [sys.executable, "-m", "pydistributed", "-p", "2", str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr}"
    return proc.stdout


def test_hello() -> None:
    out = run_example("hello.py")
    lines = out.splitlines()
    workers = [
        re.fullmatch(r"worker (\d+): process (\d+) on (\S+), os pid (\d+)", ln) for ln in lines
    ]
    found = [m for m in workers if m]
    assert [m.group(1) for m in found] == ["2", "3"], out
    # computed remotely: the id it reports is its own, and the OS pids differ
    assert all(m.group(1) == m.group(2) for m in found), out
    master = re.search(r"^master: process 1 on \S+, os pid (\d+)$", out, re.M)
    assert master, out
    ospids = {m.group(4) for m in found} | {master.group(1)}
    assert len(ospids) == 3, out


def test_montecarlo() -> None:
    out = run_example("montecarlo.py", "100000")
    m = re.search(r"^(\d+) heads in 100000 tosses on 2 workers: (0\.\d+)$", out, re.M)
    assert m, out
    # 100000 fair tosses: the share of heads is 0.5 +- 0.0016 (one sigma); 0.48..0.52 is ~12 sigma
    assert 0.48 < int(m.group(1)) / 100_000 < 0.52, out


def test_everywhere_pmap() -> None:
    out = run_example("everywhere_pmap.py")
    assert re.search(r"^workers used: \[2, 3\]$", out, re.M), out
    m = re.search(r"^(\d+) heads in 800000 tosses: 0\.\d+$", out, re.M)
    assert m, out
    assert 0.48 < int(m.group(1)) / 800_000 < 0.52, out


def test_sync_spawnat() -> None:
    out = run_example("sync_spawnat.py")
    slept = re.findall(r"^process (\d+) \(os pid \d+\) slept 0\.5 s$", out, re.M)
    assert slept == ["2", "3"], out
    assert re.search(r"^2 calls of 0\.5 s each, all done in \d+\.\d s$", out, re.M), out
