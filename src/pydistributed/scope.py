"""Which cluster a thread works for.

Every thread that the runtime starts for a cluster (a connection's reader thread, an executor
thread) is bound to that cluster here, and a caller that reads its own answer binds itself while
it reads (``Peer.read_until`` sets ``state.owner`` and puts back what was there). The code
that the runtime reaches without a cluster in hand (an object being unpickled from a message,
an owner-side operation run by a remote call) finds its cluster through
``cluster.current_cluster()``, which asks this module first and falls back to the process's
default cluster. So two clusters can live in one process (tests build them over a
``socketpair``) without one's messages landing in the other's tables.

No I/O and no locks: the binding is a thread-local attribute.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["bind", "owner", "state"]


class _Scope(threading.local):
    owner: Any = None


# the thread-local binding itself (``state.owner``), read directly by ``current_cluster``
state = _Scope()
_scope = state


def owner() -> Any:
    """The cluster this thread is bound to, or None."""
    return _scope.owner


def bind(obj: Any) -> None:
    """Bind this thread to ``obj`` for the rest of its life (a thread the runtime owns)."""
    _scope.owner = obj
