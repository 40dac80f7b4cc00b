"""Functions that the pmap benchmarks (``bench_pmap.py``) run on workers.

They live in an importable module so that pydistributed and multiprocessing alike send them by
reference: workers import ``_pmap_funcs`` from ``bench/``, which is on their path.
"""

from __future__ import annotations


def inc(x: int) -> int:
    """``x + 1``: the tiny task of W2a and W2b."""
    return x + 1


def cpu_work(n: int) -> int:
    """Pure-Python CPU work, about ``n`` loop steps, holding the GIL throughout (W5)."""
    s = 0
    for i in range(n):
        s = (s + i * i) % 1_000_003
    return s
