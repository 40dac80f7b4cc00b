"""Shared by the ports of Julia's Distributed test suite (tests/integration/test_julia_suite_*):
the four workers the suite runs on, and the helpers that read a process's ``Main``."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

from tests.conftest import end_workers

T = 20.0  # the timeout of every blocking call that is expected to succeed


def four_workers() -> Iterator[list[int]]:
    """``addprocs_with_testenv(4)``, ended after the module (a module fixture yields from it)."""
    from pydistributed import addprocs

    pids = addprocs(4)
    yield pids
    end_workers(pids)


def main_global(name: str) -> Any:
    """``getfield(Main, sym)`` on the process this runs on (a ``KeyError`` if undefined)."""
    return vars(sys.modules["__main__"])[name]


def main_has(name: str) -> bool:
    """``isdefined(Main, sym)`` on the process this runs on."""
    return name in vars(sys.modules["__main__"])


def master_only_module(name: str, source: str) -> types.ModuleType:
    """A module that exists on the master only (Julia's ``module LocalFoo ... end``)."""
    mod = types.ModuleType(name)
    exec(source, mod.__dict__)
    sys.modules[name] = mod
    return mod
