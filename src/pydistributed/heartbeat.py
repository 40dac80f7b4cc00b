"""The master's heartbeat: notice a worker that no longer answers (stopped, deadlocked, cut off).

A killed worker closes its connection and is noticed at once; a worker that is stopped
(``SIGSTOP``), deadlocked or behind a cut link sends nothing, ever, and a caller waiting on it
would wait for ever. So the master watches every worker connection::

    every INTERVAL s, for each worker:
      heard from it in the last INTERVAL s?     nothing to do
      else                                      send Ping (its reading thread answers Pong)
      nothing heard for UNRESPONSIVE_AFTER s:   "warn": log a warning, once, naming the
                                                worker and how many answers are pending
                                                "remove": also drop the connection: pending
                                                calls raise ProcessExitedException, the worker
                                                is deregistered and its process reaped

Any message counts as a sign of life, a ``Pong`` or anything else. The default policy only
warns: a worker inside one long C call that holds the GIL cannot answer either, and must not
be killed by mistake.

Dead links are another matter, decided by the kernels, not by the worker's Python: every
second, for each connection to another host (a TCP link with keepalive, ``sockets.py``), the
master asks its kernel how long the data it sent (a call, a Ping) has waited without the
peer's kernel acknowledging anything (``sockets.link_silence``). The peer's kernel answers
however busy its process is; after ``PYDIST_LINK_TIMEOUT`` seconds of that silence the link is
dead: the connection is dropped whatever the policy (pending calls raise
ProcessExitedException, the worker is deregistered). An idle link needs no data for that: the
kernel's keepalive ends it (ETIMEDOUT) after about 5 s. So a host cut off is noticed within
``PYDIST_LINK_TIMEOUT`` + 0.5 s, idle or not (a thread of its own looks twice a second, and
never sends: a send stuck on the dead link cannot hold it up); loopback links are never
checked this way.

A worker behind an ssh forward (``tunnel=True``) has no such link: its connection is to the
sshd on its own host's loopback, which keeps it up when the master's host is cut off. So the
master beats for it: every tunnelled worker gets a ``Ping`` at least every ``TUNNEL_BEAT``
(2) s, whatever ``PYDIST_HEARTBEAT`` says, and the worker (told by the ``PYDIST_MASTER_SILENCE``
its launch sets, ``TUNNEL_SILENCE`` = 10 s) exits when its kernel has seen no data arrive from
the master for that long (``serve.py``): about 10 s after a cut. The master's own side of a
cut forward is ended by its ssh client (``ServerAliveInterval`` 2 s, 4 unanswered: 8-10 s).
A master that cannot run its heartbeat thread for 10 s (a C call holding its GIL) loses its
tunnelled workers.

Settings, read at every tick (environment variables):

* ``PYDIST_HEARTBEAT``: ``INTERVAL`` in seconds (default 5; 0 turns the Pings off);
* ``PYDIST_UNRESPONSIVE_AFTER``: seconds of silence before a worker counts as unresponsive
  (default 60);
* ``PYDIST_UNRESPONSIVE``: ``warn`` (default) or ``remove``;
* ``PYDIST_LINK_TIMEOUT``: seconds that data sent on a link to another host may wait for an
  acknowledgement before the link counts as dead (default 8; 0 turns the check off).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time

from .connections import Connections
from .messages import Ping
from .registry import Registry
from .sockets import link_silence
from .timeouts import link_timeout

__all__ = ["TUNNEL_BEAT", "TUNNEL_SILENCE", "Heartbeat", "link_timeout", "settings"]

log = logging.getLogger("pydistributed")

_DEFAULT_INTERVAL = 5.0
_DEFAULT_AFTER = 60.0
_LINK_TICK = 0.5
TUNNEL_BEAT = 2.0  # a tunnelled worker gets a Ping at least this often (s)
TUNNEL_SILENCE = 10.0  # and exits when nothing came from the master for this long (s)


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def settings() -> tuple[float, float, str]:
    """``(interval, unresponsive_after, policy)`` from the environment."""
    policy = os.environ.get("PYDIST_UNRESPONSIVE", "warn").strip().lower()
    if policy not in ("warn", "remove"):
        policy = "warn"
    interval = _seconds("PYDIST_HEARTBEAT", _DEFAULT_INTERVAL)
    return interval, _seconds("PYDIST_UNRESPONSIVE_AFTER", _DEFAULT_AFTER), policy


class Heartbeat:
    """The master's watch over its workers' connections (see the module's docstring)."""

    def __init__(self, registry: Registry, connections: Connections) -> None:
        self.registry = registry
        self.connections = connections
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._nonces = itertools.count(1)
        self._warned: set[int] = set()
        self._beats: dict[int, float] = {}  # tunnelled worker -> when it was last sent a Ping

    def start(self) -> None:
        """Start watching (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="pydist-heartbeat", daemon=True
                )
                self._thread.start()
                threading.Thread(
                    target=self._link_loop, name="pydist-linkcheck", daemon=True
                ).start()

    def _loop(self) -> None:
        while True:
            interval, after, policy = settings()
            time.sleep(min(interval, 1.0) if interval else 1.0)
            try:
                self.beat_tunnels()
            except Exception:
                log.exception("the heartbeat failed; going on")
            if not interval:
                continue
            try:
                self.tick(interval, after, policy)
            except Exception:
                log.exception("the heartbeat failed; going on")

    def beat_tunnels(self) -> None:
        """Send a Ping to every tunnelled worker that has had none for ``TUNNEL_BEAT`` s: it
        exits when nothing arrives for ``TUNNEL_SILENCE`` s (``serve.py``)."""
        now = time.monotonic()
        peers = self.connections.snapshot()
        for pid in [p for p in self._beats if p not in peers]:
            del self._beats[pid]
        for pid, peer in peers.items():
            if peer.closed or pid == self.registry.myid:
                continue
            info = self.registry.get(pid)
            if info is None or not getattr(info.config, "tunnel", False):
                continue
            if now - self._beats.get(pid, 0.0) < TUNNEL_BEAT:
                continue
            try:
                # not while a message is being written (data arrives there anyway): a beat
                # never waits on a link that may be dead
                if peer.send(Ping(next(self._nonces)), wait=False):
                    self._beats[pid] = now
            except Exception:
                pass  # closed meanwhile: its loss is handled where it is noticed

    def _link_loop(self) -> None:
        # a thread of its own: it never sends, so a send blocked on a dead link cannot stop it
        while True:
            time.sleep(_LINK_TICK)
            try:
                self.check_links(link_timeout())
            except Exception:
                log.exception("the link check failed; going on")

    def check_links(self, timeout: float) -> None:
        """Drop every connection to another host whose data in flight has waited ``timeout``
        seconds or more for the peer's kernel to acknowledge anything (a dead link)."""
        if not timeout:
            return
        for pid, peer in self.connections.snapshot().items():
            if peer.closed or pid == self.registry.myid:
                continue
            silence = link_silence(getattr(peer, "sock", None))
            if silence is not None and silence >= timeout:
                log.warning(
                    "the link to worker %d is dead: what was sent to it has had no "
                    "acknowledgement for %.1f s (PYDIST_LINK_TIMEOUT=%g); removing it: "
                    "%d calls waiting on it get ProcessExitedException",
                    pid,
                    silence,
                    timeout,
                    len(peer.pending),
                )
                self.connections.drop(pid, f"link dead: no acknowledgement for {silence:.1f} s")

    def tick(self, interval: float, after: float, policy: str) -> None:
        """Look once at every worker connection."""
        now = time.monotonic()
        for pid, peer in self.connections.snapshot().items():
            if peer.closed or pid == self.registry.myid:
                continue
            silent = now - peer.last_heard
            if silent < interval:
                self._warned.discard(pid)
                continue
            if silent >= after:
                self._unresponsive(pid, silent, len(peer.pending), policy)
            sending = getattr(peer, "_send_lock", None)
            if sending is not None and sending.locked():
                continue  # a message is being written: no Ping, nor a wait behind it
            try:
                peer.send(Ping(next(self._nonces)))
            except Exception:
                pass  # closed meanwhile: its loss is handled where it is noticed

    def _unresponsive(self, pid: int, silent: float, pending: int, policy: str) -> None:
        if policy == "remove":
            log.warning(
                "worker %d has not answered for %.0f s; removing it (PYDIST_UNRESPONSIVE=remove): "
                "%d calls waiting on it get ProcessExitedException",
                pid,
                silent,
                pending,
            )
            self.connections.drop(pid, f"unresponsive for {silent:.0f} s")
            return
        if pid in self._warned:
            return
        self._warned.add(pid)
        log.warning(
            "worker %d has not answered for %.0f s (%d calls waiting on it): stopped, "
            "deadlocked, cut off, or in a long call that holds the GIL; "
            "set PYDIST_UNRESPONSIVE=remove to remove such workers",
            pid,
            silent,
            pending,
        )
