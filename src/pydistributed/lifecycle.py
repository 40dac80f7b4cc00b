"""The master's side of the workers' life cycle: adding, admitting, removing, reaping.

Adding (``addprocs``)::

    addprocs thread        launch thread              one setup thread per worker
    ---------------        -------------              ---------------------------
    check the keywords
    start launch --------> manager.launch(params,
                             launched, launch_ntfy)
                           append a WorkerConfig,
                           notify  -----------------> relay its stdout/stderr; read its
    (waits on the                                     banner "pydist_worker:PORT#HOST" (or
     condition; starts a                              take host and port from the config)
     setup thread per                                 admit: manager.connect, handshake,
     new config)                                      JoinPGRP(pid, topology, peers) and wait
                                                      for JoinComplete; tell the others
    join every setup;                                 (PeerUpdate); manage(pid, "register")
    the new ids, sorted

If any worker fails, the ones that joined in this call are removed again and the first error is
raised (a :class:`~pydistributed.errors.LaunchError` carrying the end of the worker's output,
when it never got as far as the connection).

Removing (``rmprocs``) escalates within ``waitfor``: an exit request (``manager.kill``, or an
``Exit`` message when the manager does not override it), then an interrupt, then killing the
process (when the manager gave a ``Popen``) and closing its connection. A worker is gone from
the table (*deregistered*) when its connection closes, whoever closed it: callers waiting on
it get ``ProcessExitedException``, the other workers are told (``PeerUpdate``), and the
references it held are released.
"""

from __future__ import annotations

import atexit
import hmac
import logging
import secrets
import threading
from typing import TYPE_CHECKING, Any

from .calls import Calls
from .connections import Connections
from .errors import LaunchError, LaunchTimeoutError, ProcessExitedException, describe_exit
from .heartbeat import Heartbeat
from .managers.base import ClusterManager, check_params, extra_params_of, overrides
from .messages import JoinPGRP, PeerUpdate
from .outputloss import OutputLoss
from .peer import Peer
from .refstore import RefStore
from .registry import TOPOLOGIES, Registry, WorkerInfo
from .removal import Removal
from .timeouts import seconds, worker_timeout
from .workerexit import KILL_WAIT, end_process
from .workerexit import describe_tail as _describe_tail
from .workerexit import exit_code as _exit_code
from .workerexit import output_tail as _output_tail

if TYPE_CHECKING:  # imported by add_workers: a worker relays nothing
    from .managers.workerconfig import WorkerConfig
    from .relay import OutputRelay, RelayedStream

__all__ = ["COMMON_PARAMS", "Lifecycle", "end_process"]

log = logging.getLogger("pydistributed")
ABANDON_WAIT = 5.0  # s an interrupted addprocs waits at most to remove what it started

COMMON_PARAMS = frozenset(
    {"dir", "exename", "exeflags", "topology", "lazy", "enable_threaded_blas", "env"}
)


class Lifecycle(Removal):
    """Adds, removes and interrupts workers (process 1 only), and notices them leave."""

    def __init__(
        self,
        registry: Registry,
        connections: Connections,
        calls: Calls,
        refs: RefStore,
        heartbeat: Heartbeat,
    ) -> None:
        self.registry = registry
        self.heartbeat = heartbeat
        self.connections = connections
        self.calls = calls
        self.refs = refs
        self._join_lock = threading.Lock()
        self._relay: OutputRelay | None = None
        self.output_loss = OutputLoss(registry, connections, calls)
        self._relay_lock = threading.Lock()
        self._atexit = False
        self._lazy = True  # the laziness of the workers there are
        self.closing = False
        self.reaping = {}
        # the pair keys: each pair of workers shares a secret that only they (and the master)
        # know, with which a worker proves who it is to another (Identify)
        self._pair_secret = secrets.token_bytes(32)

    def pair_key(self, a: int, b: int) -> bytes:
        """The secret that workers ``a`` and ``b`` share."""
        lo, hi = min(a, b), max(a, b)
        return hmac.digest(self._pair_secret, f"pair {lo} {hi}".encode(), "sha256")

    @property
    def lazy(self) -> bool:
        """Whether the workers there are connect to each other lazily."""
        return self._lazy

    # -- adding ----------------------------------------------------------------------------

    def add_workers(self, manager: ClusterManager, kw: dict[str, Any], cookie: str) -> list[int]:
        """``addprocs(manager, **kw)``: launch, connect and admit workers; their ids, sorted.

        Raises:
            RuntimeError: called on a worker.
            TypeError: an unknown keyword.
            ValueError: an unknown topology, or a topology or ``lazy`` other than the existing
                workers' (as in Julia); nothing was added.
            LaunchError: a worker exited, or did not report, before joining.
        """
        self._check_master()
        known = COMMON_PARAMS | extra_params_of(manager)
        for key in kw:
            if key not in known:
                hint = manager.keyword_hints.get(key)
                raise TypeError(
                    f"addprocs() got an unexpected keyword argument {key!r}"
                    + (f": {type(manager).__name__} does not take it ({hint})" if hint else "")
                )
        check_params(kw, known)
        params: dict[str, Any] = {
            "dir": None,
            "exename": None,
            "exeflags": (),
            "topology": "all_to_all",
            "lazy": True,
            "enable_threaded_blas": False,
            "env": None,
        }
        params.update(kw)
        if params["topology"] not in TOPOLOGIES:
            raise ValueError(
                f"topology must be one of {', '.join(map(repr, TOPOLOGIES))}, "
                f"not {params['topology']!r}"
            )
        if params["topology"] != "all_to_all":
            params["lazy"] = False  # as Julia: only all_to_all connects workers lazily
        self._check_like_the_others(params["topology"], bool(params["lazy"]))
        params["cookie"] = cookie
        self.registry.topology = params["topology"]
        from . import relay  # noqa: F401  (registers its atexit on import: it runs after ours)

        if not self._atexit:
            self._atexit = True
            atexit.register(self.shutdown)
        self.heartbeat.start()

        launched: list[WorkerConfig] = []
        cond = threading.Condition()
        launch_error: list[BaseException] = []
        done = threading.Event()

        def launch() -> None:
            try:
                manager.launch(params, launched, cond)
            except BaseException as e:
                launch_error.append(e)
            finally:
                done.set()
                with cond:
                    cond.notify_all()

        threading.Thread(target=launch, name="pydist-launch", daemon=True).start()
        results: list[tuple[int | None, BaseException | None]] = []
        setups: list[threading.Thread] = []
        seen = 0
        try:
            while True:
                with cond:
                    while len(launched) == seen and not done.is_set():
                        cond.wait(0.5)
                    new = launched[seen:]
                    seen = len(launched)
                for config in new:
                    t = threading.Thread(
                        target=self._setup_one,
                        args=(manager, config, params, results),
                        name="pydist-setup",
                        daemon=True,
                    )
                    t.start()
                    setups.append(t)
                if done.is_set() and len(launched) == seen:
                    break
            for t in setups:
                t.join()
        except BaseException:  # Ctrl-C: nothing of this call stays (see _abandon)
            self._abandon(launched, cond, done, setups, results)
            raise
        pids = sorted(pid for pid, err in results if pid is not None and err is None)
        errors = [err for _, err in results if err is not None]
        if launch_error or errors:
            if pids:
                self.remove_workers(pids, waitfor=10.0)
            first = launch_error[0] if launch_error else errors[0]
            more = len(errors) - (0 if launch_error else 1)
            if more:
                log.error("%d more workers failed to start", more)
            raise first
        return pids

    def _abandon(
        self,
        launched: list[WorkerConfig],
        cond: threading.Condition,
        done: threading.Event,
        setups: list[threading.Thread],
        results: list[tuple[int | None, BaseException | None]],
    ) -> None:
        """``addprocs`` was interrupted (Ctrl-C): end the workers launched and not yet set up,
        let those being set up finish, and remove the ones that joined; ``ABANDON_WAIT``
        seconds at most here (another Ctrl-C ends the wait), the rest in the background."""

        def clean() -> None:
            done.wait()  # (the manager's launch is not interruptible: its workers are ended)
            with cond:  # (setups start in launch order: those after them have none)
                late = launched[len(setups) :]
            for config in late:
                end_process(config.process)
            for t in setups:
                t.join()
            pids = [pid for pid, err in results if pid is not None and err is None]
            if pids:
                try:
                    self.remove_workers(pids, waitfor=10.0)
                except Exception:
                    log.exception("addprocs interrupted: removing workers %s failed", pids)

        cleaner = threading.Thread(target=clean, name="pydist-addprocs-undo", daemon=True)
        cleaner.start()
        try:
            cleaner.join(ABANDON_WAIT)
        except BaseException:
            pass  # a second Ctrl-C: the rest goes on in the background
        if cleaner.is_alive():
            log.warning("addprocs interrupted: workers still starting are removed when they join")

    def _check_like_the_others(self, topology: str, lazy: bool) -> None:
        """New workers take the topology and laziness of the workers there are (Julia's
        messages); with no workers, anything goes."""
        if self.registry.worker_ids() != [1]:
            if topology != self.registry.topology:
                raise ValueError(
                    f"Workers with Topology {self.registry.topology} already exist. "
                    f"Requested Topology {topology} cannot be set."
                )
            if lazy != self._lazy:
                raise ValueError(f"Active workers with lazy={self._lazy}. Cannot set lazy={lazy}")
        self._lazy = lazy

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

    # -- leaving ---------------------------------------------------------------------------

    def on_lost(self, peer: Peer, reason: str) -> None:
        """The connection to a worker closed: it has left the cluster (deregister it)."""
        pid = peer.pid
        if pid is None:
            return
        info = self.registry.remove(pid)
        self.refs.drop_client(pid)
        if info is None:
            return
        code = _exit_code(info.process) if not peer.removing else None
        if code is not None:  # its callers learn how it exited (e.g. sys.exit(3) in a call)
            peer.close_reason = describe_exit(code)
        update = PeerUpdate(removed=(pid,))
        for other in self.connections.snapshot().values():
            try:
                other.send(update)
            except Exception:
                pass
        self._manage(info, "deregister")
        info.exited.set()
        threading.Thread(target=self._reap, args=(info,), name="pydist-reap", daemon=True).start()

    def _reap(self, info: WorkerInfo) -> None:
        self.reaping[id(info)] = info  # (shutdown ends it at once if this process exits)
        try:
            end_process(info.process, grace=KILL_WAIT)
        finally:
            self.reaping.pop(id(info), None)
        self._manage(info, "finalize")


def _connected(a: WorkerConfig, b: WorkerConfig | None) -> bool:
    """Custom topology: workers ``a`` and ``b`` are connected when either lists the other's
    ``ident`` in its ``connect_idents`` (whichever joined first)."""
    if b is None:
        return False
    return (b.ident is not None and b.ident in (a.connect_idents or ())) or (
        a.ident is not None and a.ident in (b.connect_idents or ())
    )
