"""Functions that the benchmark contenders run remotely.

They live in an importable module (not ``__main__``) so that every contender, pickle and
cloudpickle alike, sends them by reference: the worker imports ``_funcs`` from ``bench/``, which
is on its ``sys.path`` because workers inherit the master's.
"""

from __future__ import annotations

from typing import Any


def identity(x: Any) -> Any:
    """Return ``x`` unchanged (W1, W4)."""
    return x


def array_sum(arr: Any) -> float:
    """Return the sum of a numpy array as a Python float (W3)."""
    return float(arr.sum())
