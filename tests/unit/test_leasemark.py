"""The used mark's pages (leasemark.py): a page left behind by a consumer that died before its
owner mapped it is removed by the next page made; pages of live processes stay."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pydistributed import leasemark

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait(timeout=30)
    return p.pid


def test_sweep_removes_the_pages_of_dead_consumers_only() -> None:
    dead = f"/dev/shm/pydist-lease-{_dead_pid()}-00000000deadbeef"
    alive = f"/dev/shm/pydist-lease-{os.getpid()}-00000000a11ce000"
    other = "/dev/shm/pydist-lease-notapid"
    for path in (dead, alive, other):
        with open(path, "wb") as f:
            f.write(b"\0" * 8)
    try:
        removed = leasemark.sweep()
        assert dead in removed and not os.path.exists(dead)
        assert os.path.exists(alive) and os.path.exists(other)
        assert alive not in removed and other not in removed
    finally:
        for path in (dead, alive, other):
            if os.path.exists(path):
                os.unlink(path)


def test_the_first_page_a_process_makes_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"/dev/shm/pydist-lease-{_dead_pid()}-00000000deadbee2"
    with open(dead, "wb") as f:
        f.write(b"\0" * 8)
    monkeypatch.setattr(leasemark, "_swept", False)
    mark = leasemark.UsedMark()
    try:
        assert not os.path.exists(dead)
        assert os.path.exists(mark.path)
    finally:
        mark.close()
        if os.path.exists(dead):
            os.unlink(dead)
    assert not os.path.exists(mark.path)
