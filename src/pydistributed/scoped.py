"""``procs_added``: a ``with`` block that adds workers and removes exactly those on exit.

::

    with procs_added(4) as pids:      # addprocs(4)
        pmap(f, xs)                   # the cluster has them (and whatever it had before)
    # rmprocs(pids): also when the body raised, and on Ctrl-C

Workers added by others meanwhile (another block, a plain ``addprocs``) stay. A worker of the
block that has exited already is simply not there to remove. Ctrl-C during ``addprocs`` itself
removes the workers that had joined by then (the ones that appeared since the block began).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .cluster import current_cluster
from .processes import addprocs, rmprocs

__all__ = ["REMOVE_WAIT", "procs_added"]

REMOVE_WAIT = 30.0  # seconds rmprocs lets the block's workers exit before it kills them


def _alive(pids: list[int]) -> list[int]:
    reg = current_cluster().registry
    return [p for p in pids if reg.is_alive(p)]


@contextlib.contextmanager
def procs_added(np_or_machines: Any = None, /, **kw: Any) -> Iterator[list[int]]:
    """Add workers for the ``with`` block (``addprocs``'s arguments) and yield their ids;
    remove exactly those on exit, however the block ends.

    Raises:
        what ``addprocs`` raises; RuntimeError on a worker (only process 1 adds workers).
    """
    before = set(current_cluster().registry.worker_ids())
    pids: list[int] | None = None
    try:
        if np_or_machines is None:
            pids = addprocs(**kw)
        else:
            pids = addprocs(np_or_machines, **kw)
        yield pids
    finally:
        if pids is None:  # addprocs did not return (Ctrl-C, an error): what joined meanwhile
            pids = sorted(set(current_cluster().registry.worker_ids()) - before - {1})
        _remove(pids)


def _remove(pids: list[int]) -> None:
    live = _alive(pids)
    if not live:
        return
    try:
        rmprocs(live, waitfor=REMOVE_WAIT)
    except KeyboardInterrupt:
        # a second Ctrl-C: do not wait, but do not leave them behind either
        rest = _alive(live)
        if rest:
            rmprocs(rest, waitfor=0)
        raise
