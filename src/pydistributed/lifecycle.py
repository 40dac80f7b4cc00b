"""The master's side of the workers' life cycle: adding, admitting, removing, reaping.

Adding (``addprocs``; ``addcall.py`` and ``admission.py``)::

    addprocs thread      coordinator          launch thread          one setup thread per worker
    ---------------      -----------          -------------          ---------------------------
    check the keywords
    start the call ----> start launch ------> manager.launch(params,
                                                launched, launch_ntfy)
                                              append a WorkerConfig,
                         (waits on the  <---- notify
                          condition)
                         start a setup thread per new config ------> relay its stdout/stderr;
    (waits on                                                        read its banner
     call.finished)                                                  "pydist_worker:PORT#HOST"
                                                                     (or take host and port
                                                                     from the config); admit:
                                                                     manager.connect, handshake,
                                                                     JoinPGRP(pid, topology,
                                                                     peers), wait for its answer;
                                                                     tell the others
                         join every setup;                           (PeerUpdate);
                         call.finished                               manage(pid, "register")
    the new ids, sorted

A Ctrl-C lands in the addprocs thread only, which keeps no record of the call's workers (the
coordinator does: ``addcall.py`` says why). Interrupted, the call ends the workers launched and
not yet set up, lets those being set up finish, and removes those that joined: ``ABANDON_WAIT``
seconds at most in the call, the rest in the background; then it raises ``KeyboardInterrupt``.
No worker of an interrupted call stays with an id the caller never got.

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
import logging
import secrets
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .addcall import AddCall
from .admission import Admission
from .calls import Calls
from .connections import Connections
from .errors import describe_exit
from .heartbeat import Heartbeat
from .managers.base import ClusterManager, check_params, extra_params_of
from .messages import PeerUpdate
from .outputloss import OutputLoss
from .peer import Peer
from .refstore import RefStore
from .registry import TOPOLOGIES, Registry, WorkerInfo
from .workerexit import KILL_WAIT, end_process
from .workerexit import exit_code as _exit_code

if TYPE_CHECKING:  # imported by add_workers: a worker relays nothing
    from .relay import OutputRelay

__all__ = ["COMMON_PARAMS", "Lifecycle", "end_process"]

log = logging.getLogger("pydistributed")
ABANDON_WAIT = 5.0  # s an interrupted addprocs waits at most to remove what it started

COMMON_PARAMS = frozenset(
    {"dir", "exename", "exeflags", "topology", "lazy", "enable_threaded_blas", "env"}
)


class Lifecycle(Admission):
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
        for flag in ("lazy", "enable_threaded_blas"):
            if not isinstance(params[flag], bool):
                v = params[flag]
                raise TypeError(f"{flag} must be True or False, not {type(v).__name__} ({v!r})")
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

        call = AddCall(
            lambda launched, ntfy: manager.launch(params, launched, ntfy),
            lambda config, results: self._setup_one(manager, config, params, results),
        )
        failure: BaseException | None = None
        more = 0
        try:
            call.start()
            call.finished.wait()  # (all the call's records are kept off this thread: addcall.py)
            pids = sorted(call.joined())
            errors = call.errors()
            if call.launch_error or errors:
                if pids:
                    self.remove_workers(pids, waitfor=10.0)
                failure = call.launch_error[0] if call.launch_error else errors[0]
                more = len(errors) - (0 if call.launch_error else 1)
        except BaseException:  # Ctrl-C: nothing of this call stays
            self._abandon(call)
            raise
        if failure is not None:
            if more:
                log.error("%d more workers failed to start", more)
            raise failure
        return pids

    def _abandon(self, call: AddCall) -> None:
        """``addprocs`` was interrupted (Ctrl-C): end the workers launched and not yet set up,
        let those being set up finish, and remove the ones that joined."""
        call.abandon()
        self.remove_interrupted(call.joined, call.settled)  # (a launch may still run)

    def remove_interrupted(
        self, joined: Callable[[], list[int]], ready: threading.Event | None = None
    ) -> None:
        """An interrupted ``addprocs`` leaves none of its workers: remove ``joined()`` (once
        ``ready`` is set), ``ABANDON_WAIT`` seconds at most here (another Ctrl-C ends the wait),
        the rest in the background."""
        cleaned = threading.Event()

        def clean() -> None:
            try:
                if ready is not None:
                    ready.wait()
                pids = joined()
                if pids:
                    self.remove_workers(pids, waitfor=10.0)
            except Exception:
                log.exception("addprocs interrupted: removing its workers failed")
            finally:
                cleaned.set()

        try:
            threading.Thread(target=clean, name="pydist-addprocs-undo", daemon=True).start()
            cleaned.wait(ABANDON_WAIT)
        except BaseException:
            pass  # a second Ctrl-C: the rest goes on in the background
        if not cleaned.is_set():
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
