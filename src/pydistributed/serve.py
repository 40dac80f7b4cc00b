"""A worker's side of the life cycle: listen, announce, join, serve, exit with the master.

::

    worker process                                       master
    --------------                                       ------
    Server.serve: listen on HOST:PORT (and its
    Unix-socket twin); print
    "pydist_worker:PORT#HOST" on stdout   ------------>  reads the banner (lifecycle)
    accept, handshake  <-------------------------------  connects, authenticates
    on_join(JoinPGRP(pid, topology, peers)):
      become worker ``pid``, learn the other workers,
      answer JoinComplete(ospid, hostname)  ---------->  the worker has joined
    serve calls on the main thread when it is free
    (``execution``), on pool threads otherwise
    PeerUpdate(added, removed)  <----------------------  workers join and leave
    Exit(), or the master's connection closes:
      os._exit at once, whatever runs

A worker that nobody joins within ``PYDIST_WORKER_TIMEOUT`` seconds exits (a watchdog), so a
master that died while launching leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from .connections import Connections
from .execution import Executor, exit_process
from .messages import Exit, JoinComplete, JoinPGRP, PeerUpdate
from .peer import Peer
from .refcount import RefCounter
from .refstore import RefStore
from .registry import Registry
from .timeouts import worker_timeout

__all__ = ["Server"]

log = logging.getLogger("pydistributed")


class Server:
    """The worker's part: serving the master's connection and the other workers'.

    :attr:`exit` ends the process (``execution.exit_process``); a test that runs a worker-role
    cluster inside its own process replaces it, so that the end of the master's connection
    does not end the test.
    """

    exit: Callable[[int], Any] = staticmethod(exit_process)  # type: ignore[assignment]

    def __init__(
        self,
        registry: Registry,
        connections: Connections,
        refcount: RefCounter,
        refs: RefStore,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.connections = connections
        self.refcount = refcount
        self.refs = refs
        self.executor = executor
        self.address: tuple[str, int] | None = None
        self.joined = threading.Event()

    def serve(self, bind_host: str, port: int, out: Any) -> NoReturn:
        """Listen, print the banner on ``out``, and serve calls forever (a worker's main)."""
        self.address = self.connections.listen(bind_host, port)
        threading.Thread(target=self._watchdog, name="pydist-watchdog", daemon=True).start()
        self.refcount.ensure_flusher()
        if threading.current_thread() is threading.main_thread():
            self.executor.install_sigint_handler()
        host, port = self.address
        out.write(f"pydist_worker:{port}#{host}\n")
        out.flush()
        self.executor.run_main()
        raise AssertionError("unreachable")

    def _watchdog(self) -> None:
        timeout = worker_timeout()
        if not self.joined.wait(timeout):
            print(
                f"pydistributed worker (pid {os.getpid()}): no master connected within "
                f"{timeout:g} s (PYDIST_WORKER_TIMEOUT); exiting",
                file=sys.stderr,
            )
            self.exit(1)

    # -- messages from the master ------------------------------------------------------------

    def on_join(self, peer: Peer, msg: JoinPGRP) -> bool:
        """The master's first message: become worker ``msg.pid``. False refuses a second one."""
        if self.joined.is_set():
            log.warning("a second master tried to join this worker; refused")
            return False
        reg = self.registry
        reg.join(msg.pid, msg.topology, msg.master_host)
        peer.pid = 1
        self.connections.install(1, peer)
        # this worker is in its own table too (Julia lists the local process), with the
        # address it listens at, if any (a worker on a custom transport has none)
        host, port = self.address if self.address is not None else (None, None)
        reg.learn((*msg.peers, (msg.pid, host, port)), msg.keys)
        self.joined.set()
        peer.send(JoinComplete(msg.response_id, os.getpid(), socket.gethostname()))
        if msg.topology in ("all_to_all", "custom") and not msg.lazy:
            for pid, _, _ in msg.peers:
                threading.Thread(target=self._try_connect, args=(pid,), daemon=True).start()
        return True

    def _try_connect(self, pid: int) -> None:
        try:
            self.connections.get(pid)
        except Exception as e:
            log.warning("could not connect to process %s: %s", pid, e)

    def on_peer_update(self, peer: Peer, msg: PeerUpdate) -> None:
        """Workers joined or left: learn the new ones, forget the ones that left."""
        if msg.added or msg.keys:
            self.registry.learn(msg.added, msg.keys)
        for pid in msg.removed:
            self.registry.remove(pid)
            self.connections.drop(pid, "removed from the cluster")
            self.refs.drop_client(pid)

    def on_exit(self, peer: Peer, msg: Exit) -> None:
        self.exit(0)

    def on_lost(self, peer: Peer, reason: str) -> None:
        """A connection closed: the master's ends this worker at once."""
        if peer.pid == 1:
            log.debug("the master closed the connection: %s", reason)
            self.exit(0)
