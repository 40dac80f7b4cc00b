"""The master's admission of one launched worker: its output relayed, its address read from its
banner (``pydist_worker:PORT#HOST``) or taken from its config, then connected, handshaken, sent
``JoinPGRP`` (with the others it may reach and the pair keys) and entered in the table once it
answers. The base of ``lifecycle.Lifecycle`` (see its docstring for the whole of ``addprocs``).

Each pair of workers shares a secret (the *pair key*) that only they and the master know, with
which a worker proves who it is to another (``Identify``).
"""

from __future__ import annotations

import hmac
import logging
import threading
from typing import TYPE_CHECKING, Any

from .calls import Calls
from .errors import LaunchError, LaunchTimeoutError, ProcessExitedException
from .managers.base import ClusterManager, overrides
from .messages import JoinPGRP, PeerUpdate
from .outputloss import OutputLoss
from .registry import WorkerInfo
from .removal import Removal
from .timeouts import seconds, worker_timeout
from .workerexit import describe_tail as _describe_tail
from .workerexit import end_process
from .workerexit import output_tail as _output_tail

if TYPE_CHECKING:  # imported when a worker is set up: a worker relays nothing
    from .managers.workerconfig import WorkerConfig
    from .relay import OutputRelay, RelayedStream

__all__ = ["Admission"]

log = logging.getLogger("pydistributed")


class Admission(Removal):
    """Sets up launched workers and admits them (process 1 only); the base of ``Lifecycle``."""

    calls: Calls
    output_loss: OutputLoss
    _join_lock: threading.Lock
    _relay: OutputRelay | None
    _relay_lock: threading.Lock
    _pair_secret: bytes

    def pair_key(self, a: int, b: int) -> bytes:
        """The secret that workers ``a`` and ``b`` share."""
        lo, hi = min(a, b), max(a, b)
        return hmac.digest(self._pair_secret, f"pair {lo} {hi}".encode(), "sha256")

    def _relay_stream(self, file: Any, kind: str, banner: bool) -> RelayedStream:
        from .relay import OutputRelay

        with self._relay_lock:
            if self._relay is None:
                self._relay = OutputRelay()
        return self._relay.add(file, kind, banner)

    def _setup_one(
        self,
        manager: ClusterManager,
        config: WorkerConfig,
        params: dict[str, Any],
        results: list[tuple[int | None, BaseException | None]],
    ) -> None:
        streams: list[RelayedStream] = []
        pid: int | None = None
        try:
            proc = config.process
            err_file = getattr(proc, "stderr", None) if proc is not None else None
            if err_file is not None:
                streams.append(self._relay_stream(err_file, "stderr", False))
            out_stream = None
            if config.io is not None:
                out_stream = self._relay_stream(config.io, "stdout", True)
                streams.insert(0, out_stream)
            custom_transport = overrides(manager, "connect")
            if (config.host is None or config.port is None) and config.connect_at is None:
                if out_stream is not None:
                    self._await_banner(config, out_stream, streams)
                elif not custom_transport:
                    raise ValueError("a WorkerConfig needs host and port, connect_at, or io")
            pid = self._admit(manager, config, params, streams)
            results.append((pid, None))
        except BaseException as e:
            end_process(config.process)
            results.append((pid, e))

    def _await_banner(
        self, config: WorkerConfig, out: RelayedStream, streams: list[RelayedStream]
    ) -> None:
        timeout = worker_timeout()
        out.banner_event.wait(timeout)
        if out.banner is None:
            if out.eof.is_set():
                proc = config.process
                code = None
                if proc is not None and hasattr(proc, "wait"):
                    try:
                        code = proc.wait(timeout=2)
                    except Exception:
                        code = None
                for s in streams:
                    s.eof.wait(2)
                output = _output_tail(streams)
                raise LaunchError(
                    f"worker (os pid {config.ospid}) exited with code {code} before reporting "
                    f"its address{_describe_tail(output, streams)}",
                    output,
                    config.ospid,
                )
            output = _output_tail(streams)
            raise LaunchTimeoutError(
                f"worker (os pid {config.ospid}) did not report its address within "
                f"{seconds(timeout)} s (PYDIST_WORKER_TIMEOUT){_describe_tail(output, streams)}",
                output,
                config.ospid,
            )
        config.host, config.port = out.banner[0], out.banner[1]
        if config.bind_addr is None:
            config.bind_addr = out.banner[0]

    def _admit(
        self,
        manager: ClusterManager,
        config: WorkerConfig,
        params: dict[str, Any],
        streams: list[RelayedStream],
    ) -> int:
        """Connect to a launched worker, send it ``JoinPGRP``, wait for it to join."""
        pid = self.registry.assign_pid()
        # a manager whose workers dial in (ElasticManager) hands over their authenticated link
        linked = getattr(manager, "authenticated_link", None)
        link = linked(config) if callable(linked) else None
        if link is not None:
            peer = self.connections.adopt(pid, *link[:3], secure=link[3])
        else:
            peer = self.connections.connect(pid, config, manager)
        info = WorkerInfo(pid, config.bind_addr or config.host, config.port, config, manager)
        topology = params["topology"]
        with self._join_lock:
            others = self.registry.admit(info)
            self.connections.install(pid, peer)
            if topology == "all_to_all":
                reachable = others
            elif topology == "custom":
                reachable = [w for w in others if _connected(config, w.config)]
            else:
                reachable = []
            table = tuple((w.pid, w.host or "", w.port or 0) for w in reachable)
            keys = tuple((w.pid, self.pair_key(pid, w.pid)) for w in reachable)
            # the others it may talk to learn the new worker's address and the secret with
            # which each side proves itself: whichever has the higher id dials (peerlinks.py),
            # and ids are not given in the order in which workers are admitted here
            added = ((pid, info.host or "", info.port or 0),)
            for w in reachable:
                key = ((pid, self.pair_key(w.pid, pid)),)
                self.connections.send_quietly(w.pid, PeerUpdate(added=added, keys=key))
            self.connections.start(peer)
            _, rid, slot = self.calls.request_on(
                peer,
                lambda rid: JoinPGRP(
                    rid, pid, topology, bool(params["lazy"]), table, "localhost", keys
                ),
            )
        try:
            joined = self.calls.wait_answer(peer, rid, slot, worker_timeout())
        except TimeoutError as e:
            output = _output_tail(streams)
            raise LaunchTimeoutError(
                f"worker {pid} (os pid {config.ospid}) did not join within "
                f"{worker_timeout():g} s (PYDIST_WORKER_TIMEOUT){_describe_tail(output, streams)}",
                output,
                config.ospid,
            ) from e
        info.ospid = joined.ospid
        if config.ospid is None:
            config.ospid = joined.ospid
        for s in streams:
            s.set_pid(pid)
        if not self.registry.joined(pid):  # its connection closed meanwhile
            raise ProcessExitedException(pid, "exited while joining")
        # its output pipes may lose their reader while it stays (an ssh session that ends)
        carrier = getattr(manager, "output_carrier", "its output pipe")
        self.output_loss.watch(streams, pid, str(carrier))
        try:
            manager.manage(pid, config, "register")
        except Exception:
            log.exception("manage(register) failed for worker %d", pid)
        return pid


def _connected(a: WorkerConfig, b: WorkerConfig | None) -> bool:
    """Custom topology: workers ``a`` and ``b`` are connected when either lists the other's
    ``ident`` in its ``connect_idents`` (whichever joined first)."""
    if b is None:
        return False
    return (b.ident is not None and b.ident in (a.connect_idents or ())) or (
        a.ident is not None and a.ident in (b.connect_idents or ())
    )
