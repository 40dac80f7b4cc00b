"""Distributed reference counting: the handles this process holds, and the notices that keep
each owner's counts (``refstore.RefStore``) right.

A handle (a ``Future`` or ``RemoteChannel`` object) names storage on its owner. The owner frees
the storage once no process holds a handle, so every process tells each owner which handles it
holds, with ``RefCount`` notices:

* a handle made here is announced to its owner at once (:meth:`RefCounter.add_handle`);
* a handle pickled into a message is announced *for the receiver* by the sender, before the
  message leaves (:meth:`RefCounter.announce`, called by ``Peer.send`` with the references the
  codec saw), on the same connection when the owner is the receiver, so the add arrives first;
* a handle that is garbage collected, or whose value is now cached here, is released: its
  finalizer calls :meth:`RefCounter.queue_release`, which only appends to a deque (a finalizer
  may run on any thread, at any bytecode, even while that thread holds a lock a sender needs),
  and a flusher thread sends the queued releases in batches, one notice per owner, every
  ``FLUSH_INTERVAL`` seconds.

The table of handles (:meth:`RefCounter.get_or_make`) keeps one object per reference per
process: a process that receives a reference it already holds keeps the object it has.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .connections import Connections
from .ids import RRID, IdCounter
from .messages import RefCount
from .peer import Peer
from .refstore import RefStore
from .registry import Registry

__all__ = ["FLUSH_INTERVAL", "RefCounter"]

log = logging.getLogger("pydistributed")

FLUSH_INTERVAL = 0.05


class RefCounter:
    """The handles held here and the add/release notices to their owners.

    Args:
        registry: this process's id; who is dead.
        refs: the counts of the references owned here.
        connections: where notices go.
        on_tick: also called by the flusher thread at every tick (housekeeping); more with
            :meth:`add_tick`.
    """

    def __init__(
        self,
        registry: Registry,
        refs: RefStore,
        connections: Connections,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.refs = refs
        self.connections = connections
        self._ticks: list[Callable[[], None]] = [on_tick] if on_tick is not None else []
        self._handles: weakref.WeakValueDictionary[RRID, Any] = weakref.WeakValueDictionary()
        # serialises get-or-make: two readers may unpickle one reference at once; held only
        # for a lookup and an insert (no I/O), and finalizers never take it
        self._handles_lock = threading.Lock()
        self._queue: deque[tuple[int, RRID]] = deque()
        self._flusher: threading.Thread | None = None
        self._flusher_lock = threading.Lock()
        self._ids = IdCounter()

    def next_id(self) -> int:
        """The id of the next reference created here (``RRID(myid, next_id())``)."""
        return self._ids.next()

    # -- the table of handles --------------------------------------------------------------

    def get_or_make(
        self, rrid: RRID, reuse: Callable[[Any], bool], make: Callable[[], Any]
    ) -> tuple[Any, bool]:
        """The handle of ``rrid`` held here if ``reuse(handle)`` accepts it; else ``make()``,
        entered in the table. Returns ``(handle, made)``."""
        with self._handles_lock:
            existing = self._handles.get(rrid)
            if existing is not None and reuse(existing):
                return existing, False
            obj = make()
            self._handles[rrid] = obj
        self.ensure_flusher()
        return obj, True

    def register(self, rrid: RRID, handle: Any) -> None:
        """Enter a handle made here in the table."""
        self._handles[rrid] = handle
        self.ensure_flusher()

    def lookup(self, rrid: RRID) -> Any:
        """The handle of ``rrid`` held here, or None."""
        return self._handles.get(rrid)

    # -- adds and releases -----------------------------------------------------------------

    def queue_release(self, owner: int, rrid: RRID) -> None:
        """Release one handle of ``rrid`` held here. Safe in a finalizer: it only appends."""
        self._queue.append((owner, rrid))

    def add_handle(self, owner: int, rrid: RRID, *, make_storage: bool = True) -> None:
        """Announce a new handle of ``rrid`` held here to its owner, before anything else.

        When this process is the owner, the handle is counted here, and the storage made
        unless ``make_storage`` is False (an unpickled handle: its storage exists, or is gone).
        """
        myid = self.registry.myid
        if owner == myid:
            if make_storage:
                self.refs.add(rrid, myid)
            else:
                self.refs.add(rrid, myid, make=None)
            return
        self.connections.send_quietly(owner, RefCount(adds=((rrid.whence, rrid.id, myid),)))
        self.ensure_flusher()

    def announce(self, peer: Peer, refs: list[Any]) -> None:
        """Before a message carrying ``refs`` goes to ``peer``: tell each owner first."""
        dest = peer.pid or 0
        myid = self.registry.myid
        same: list[tuple[int, int, int]] = []
        for ref in refs:
            owner, rrid = ref.where, ref.rrid
            if owner == myid:
                self.refs.add(rrid, dest, make=None)
            elif owner == dest:
                same.append((rrid.whence, rrid.id, dest))
            else:
                self.connections.send_quietly(owner, RefCount(adds=((rrid.whence, rrid.id, dest),)))
        if same:
            peer.send(RefCount(adds=tuple(same)))

    def flush(self) -> None:
        """Send the queued releases to their owners, batched per owner."""
        q = self._queue
        myid = self.registry.myid
        by_owner: dict[int, list[tuple[int, int, int]]] = {}
        while True:
            try:
                owner, rrid = q.popleft()
            except IndexError:
                break
            by_owner.setdefault(owner, []).append((rrid.whence, rrid.id, myid))
        for owner, dels in by_owner.items():
            if owner == myid:
                for w, i, c in dels:
                    self.refs.release(RRID(w, i), c)
                continue
            if self.registry.is_dead(owner):
                continue
            try:
                self.connections.get(owner).send(RefCount(dels=tuple(dels)))
            except Exception:
                pass  # gone, or unreachable: its storage went with it

    # -- the flusher -----------------------------------------------------------------------

    def ensure_flusher(self) -> None:
        """Start the flusher thread if it is not running yet."""
        if self._flusher is not None:
            return
        with self._flusher_lock:
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="pydist-refs", daemon=True
                )
                self._flusher.start()

    def add_tick(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the flusher thread at every tick (every ``FLUSH_INTERVAL`` s), from
        now on; it must be quick and must not block."""
        self._ticks = [*self._ticks, fn]  # (the loop reads the list without a lock)
        self.ensure_flusher()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            for tick in self._ticks:
                try:
                    tick()
                except Exception:
                    log.exception("housekeeping failed")
            if self._queue:
                try:
                    self.flush()
                except Exception:
                    log.exception("reference release failed")
