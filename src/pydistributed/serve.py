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

A worker that nobody joins within ``PYDIST_WORKER_TIMEOUT`` seconds exits, so a master that
died while launching leaves nothing behind.

Dying with the master. A worker exits when its master's connection closes, but only a thread
of the worker can notice that, and no thread runs while a C call holds the GIL. A local worker
is therefore also killed by the kernel when the master dies (``PR_SET_PDEATHSIG``, set in
``worker.py``); any other worker (over ssh, from a scheduler, by hand) starts a *watchdog*
process when it joins: it holds a duplicate of the master connection's socket, waits in
``poll`` for the master's end to hang up (``POLLRDHUP``), gives the worker a moment to exit by
itself, then kills it. The kernel kills the watchdog when the worker dies.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

from .connections import Connections
from .execution import Executor, exit_process
from .messages import Exit, JoinComplete, JoinPGRP, PeerUpdate
from .peer import Peer
from .refcount import RefCounter
from .refstore import RefStore
from .registry import Registry
from .sockets import data_silence, kept_alive, link_silence
from .timeouts import link_timeout, seconds, worker_timeout

__all__ = ["Server"]

log = logging.getLogger("pydistributed")


class Server:
    """The worker's part: serving the master's connection and the other workers'.

    :attr:`exit` ends the process (``execution.exit_process``); a test that runs a worker-role
    cluster inside its own process replaces it, so that the end of the master's connection
    does not end the test.
    """

    exit: Callable[[int], Any] = staticmethod(exit_process)  # type: ignore[assignment]
    watchdog = False  # start_worker turns it on for a worker the kernel does not tie to the master

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

    def serve(
        self,
        bind_host: str,
        port: int,
        out: Any,
        announce: Callable[[tuple[str, int]], None] | None = None,
    ) -> NoReturn:
        """Listen, print the banner on ``out``, and serve calls forever (a worker's main).

        ``announce``, if given, tells the master the address instead of the banner (a worker
        that dialed its master: ``joinworker.py``)."""
        self.address = self.connections.listen(bind_host, port)
        if self.connections.listener is not None:
            self.connections.listener.on_version_mismatch = self._refused_versions
        threading.Thread(target=self._watchdog, name="pydist-watchdog", daemon=True).start()
        self.refcount.ensure_flusher()
        if threading.current_thread() is threading.main_thread():
            self.executor.install_sigint_handler()
        if announce is not None:
            announce(self.address)
        else:
            host, port = self.address
            out.write(f"pydist_worker:{port}#{host}\n")
            out.flush()
        self.executor.run_main()
        raise AssertionError("unreachable")

    def _refused_versions(self, problem: str) -> None:
        """A process that knows the cookie connected with other versions: a worker that no
        master has joined yet cannot serve the one that started it, so it exits now (its
        message goes to the master's error) instead of after PYDIST_WORKER_TIMEOUT."""
        if self.joined.is_set():
            return
        try:
            print(
                f"pydistributed worker (pid {os.getpid()}): refused the process that connected "
                f"with the cookie: {problem}; exiting",
                file=sys.stderr,
            )
        except (OSError, ValueError):
            pass
        self.exit(1)

    def _watchdog(self) -> None:
        timeout = worker_timeout()
        if not self.joined.wait(timeout):
            try:
                print(
                    f"pydistributed worker (pid {os.getpid()}): no master connected within "
                    f"{seconds(timeout)} s (PYDIST_WORKER_TIMEOUT); exiting",
                    file=sys.stderr,
                )
            except (OSError, ValueError):  # stderr gone: an ssh session that has ended
                pass
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
        if self.watchdog and peer.sock is not None:
            _start_watchdog(peer.sock)
        if kept_alive(peer.sock):  # a link to another host
            threading.Thread(
                target=_watch_master_link, args=(peer,), name="pydist-linkcheck", daemon=True
            ).start()
        silence = _master_silence()
        if silence:  # a tunnelled worker: the master beats, this worker listens (heartbeat.py)
            threading.Thread(
                target=_watch_master_silence,
                args=(peer, silence),
                name="pydist-beatcheck",
                daemon=True,
            ).start()
        self.joined.set()
        if threading.current_thread() is not threading.main_thread():
            self.executor.source = (peer.serve, peer.wake)
            self.executor.wake_main()
        if msg.topology in ("all_to_all", "custom") and not msg.lazy:
            # as Julia (connect_to_peer under @sync before JoinCompleteMsg): the connections
            # to the workers admitted before this one are up before it reports, so that
            # addprocs(lazy=False) returns with every connection made. Each waits only on
            # workers admitted earlier, whose own joins never wait on this one.
            links = [
                threading.Thread(target=self._try_connect, args=(pid,), daemon=True)
                for pid, _, _ in msg.peers
            ]
            for t in links:
                t.start()
            for t in links:
                t.join()
        peer.send(JoinComplete(msg.response_id, os.getpid(), socket.gethostname()))
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


_WATCHDOG = r"""
import ctypes, os, select, signal, sys, time
fd, worker = int(sys.argv[1]), int(sys.argv[2])
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # die with the worker
except Exception:
    pass
if os.getppid() != worker:
    sys.exit(0)
p = select.poll()
p.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
while not p.poll():
    pass
deadline = time.monotonic() + 2.0  # the worker exits by itself when it can
while time.monotonic() < deadline:
    time.sleep(0.05)
os.kill(worker, signal.SIGKILL)
"""


def _watch_master_link(peer: Peer) -> None:
    """A worker on another host than its master: close the master's connection (and so end
    this worker) when what it sent has had no acknowledgement from the master's kernel for
    ``PYDIST_LINK_TIMEOUT`` s: its host was cut off while this worker was sending (keepalive
    ends an idle link by itself; a link with data waiting would last ~15 minutes)."""
    while not peer.closed:
        time.sleep(0.5)
        timeout = link_timeout()
        silence = link_silence(peer.sock)
        if timeout and silence is not None and silence >= timeout:
            log.warning(
                "the link to the master is dead: what this worker sent has had no "
                "acknowledgement for %.1f s (PYDIST_LINK_TIMEOUT=%g); exiting",
                silence,
                timeout,
            )
            peer.close(f"link dead: no acknowledgement for {silence:.1f} s")
            return


def _master_silence() -> float:
    """``PYDIST_MASTER_SILENCE`` (seconds; 0: not watched), taken out of the environment so
    that this worker's own children do not inherit it."""
    raw = os.environ.pop("PYDIST_MASTER_SILENCE", "")
    try:
        return max(0.0, float(raw)) if raw else 0.0
    except ValueError:
        return 0.0


def _watch_master_silence(peer: Peer, limit: float) -> None:
    """A worker whose link to the master is a loopback connection to an ssh forward's sshd
    (``tunnel=True``): no kernel tells it when the master's host is cut off, but the master
    sends it a heartbeat every ``heartbeat.TUNNEL_BEAT`` s; close the master's connection
    (and so end this worker) when nothing has arrived on it for ``limit`` s. The kernel
    counts the time since data last arrived, so a busy worker (a long call, the GIL held) is
    not mistaken for a silent master."""
    while not peer.closed:
        time.sleep(0.5)
        silence = data_silence(peer.sock)
        if silence is None:
            silence = time.monotonic() - peer.last_heard
        if silence >= limit:
            log.warning(
                "nothing has come from the master for %.1f s (PYDIST_MASTER_SILENCE=%g: its "
                "heartbeats stopped): its host is cut off or it is gone; exiting",
                silence,
                limit,
            )
            peer.close(f"the master silent for {silence:.1f} s")
            return


def _start_watchdog(sock: socket.socket) -> None:
    """Start the watchdog of the master connection ``sock`` (see the module's docstring).

    Called on the thread that serves the master's connection: the kernel ties the watchdog's
    death signal to the thread that forked it, and this one lives as long as the worker does.
    """
    if not sys.platform.startswith("linux"):
        return
    import subprocess

    try:
        subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG, str(sock.fileno()), str(os.getpid())],
            pass_fds=(sock.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError as e:
        log.warning("could not start the watchdog of this worker: %s", e)
