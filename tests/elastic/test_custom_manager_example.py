"""``examples/custom_manager.py``, the worked example of docs/clusters.md ("A cluster manager of
your own"), runs as a user would run it and does what the page says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.elastic.conftest import worker_env

pytestmark = pytest.mark.timeout(150)

ROOT = Path(__file__).resolve().parents[2]


def test_custom_manager_example() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "custom_manager.py")],
        env=worker_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    mine = os.nice(0)  # the script inherits it; a worker's cannot go past 19
    above = min(19, mine + 5) - mine
    assert out.splitlines() == [
        "workers: [2, 3]",
        f"niceness above the master's: [{above}, {above}]",
        "sum of squares: 328350",
        "register: [2, 3]",
        "deregister: [2, 3]",
    ], out + err
