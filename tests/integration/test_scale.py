"""Scale: 128 local workers join, stay small, and serve a pmap. Marked `scale`; not run by
default (`python -m pytest -m scale` runs it; it takes ~15 s and ~3.5 GB on 2 cores)."""

from __future__ import annotations

import time

import pytest

from pydistributed import addprocs, pmap, workers
from tests.conftest import end_workers, worker_table


def _rss_kb(ospid: int) -> int:
    with open(f"/proc/{ospid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.scale
@pytest.mark.timeout(300)
def test_128_workers() -> None:
    pids: list[int] = []
    try:
        pids = addprocs(128, topology="master_worker")
        assert len(pids) == 128 and workers() == pids
        time.sleep(1.0)
        rss = sorted(_rss_kb(worker_table()[p].ospid or 0) for p in pids)
        median_mb = rss[len(rss) // 2] / 1024
        print(f"idle worker RSS: median {median_mb:.1f} MB, max {rss[-1] / 1024:.1f} MB")
        assert median_mb <= 25.0  # DESIGN.md: idle worker RSS <= 25 MB
        assert pmap(lambda x: x * 2, range(1000)) == [x * 2 for x in range(1000)]
    finally:
        end_workers(pids)
