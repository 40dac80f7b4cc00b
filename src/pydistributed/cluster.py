"""The Cluster: this process's view of the whole — its id, its peers, the worker table, its
stored references, its executor — and the processes' life cycle.

All state lives in one :class:`Cluster` object; the Julia-style functions (``myid``,
``addprocs``...) act on the current one (:func:`current_cluster`), made on first use as the
master (process 1) or installed by ``start_worker`` in a worker.

How a call travels (``remotecall_fetch(f, 2, x)`` on the master)::

    caller thread                    worker 2                           master reader thread
    -------------                    --------                           --------------------
    encode CallFetch(rid, f, x)
    write it (send lock) ----------> reader thread decodes it
    wait on the slot of rid          executor: main thread if free,
                                       else a pool thread, runs f(x)
                                     encode Result(rid, value),
                                     write it from that thread --------> decode, fill the slot
    <------------------------------------------------------------------ wake the caller

Worker life cycle: the master launches workers through a ``ClusterManager``, reads each
worker's banner (or takes host and port from its config), connects, authenticates with the
cookie, and sends ``JoinPGRP`` with the worker's id and the addresses of the workers it may
call (``all_to_all``: everyone, connected lazily on first use). Each worker exits when its
connection to the master closes. When any connection to a worker drops, the worker is
deregistered: callers waiting on it get :class:`ProcessExitedException`, later calls raise at
once, and every reference it held is released.
"""

from __future__ import annotations

import _signal
import atexit
import logging
import os
import pickle
import signal
import socket
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from . import codec, transport
from .errors import (
    AuthenticationError,
    ProcessExitedException,
    ProtocolError,
    RemoteException,
    capture,
)
from .execution import Executor
from .handshake import check_cookie, client_handshake, random_cookie, server_handshake
from .ids import RRID, IdCounter
from .managers.base import ClusterManager, WorkerConfig
from .messages import (
    Call,
    CallFetch,
    CallWait,
    Exit,
    Identify,
    Interrupt,
    JoinComplete,
    JoinPGRP,
    Message,
    PeerUpdate,
    RefCount,
    RemoteDo,
    Result,
)
from .peer import Peer, ResponseSlot, describe_unpicklable
from .refstore import Failure, RefStore
from .relay import OutputRelay, RelayedStream

__all__ = [
    "Cluster",
    "WorkerInfo",
    "cluster_cookie",
    "current_cluster",
    "set_current_cluster",
    "worker_timeout",
]

log = logging.getLogger("pydistributed")

COMMON_PARAMS = frozenset(
    {"dir", "exename", "exeflags", "topology", "lazy", "enable_threaded_blas", "env"}
)
TOPOLOGIES = ("all_to_all", "master_worker", "custom")
_HANDSHAKE_TIMEOUT = 10.0
_FLUSH_INTERVAL = 0.05


def worker_timeout() -> float:
    """``PYDIST_WORKER_TIMEOUT`` in seconds (default 60)."""
    try:
        return max(0.1, float(os.environ.get("PYDIST_WORKER_TIMEOUT", "60")))
    except ValueError:
        return 60.0


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1", "") or host.startswith("127.")


def _host_key(host: str | None) -> str:
    """Hosts compare equal when they are this machine under another name."""
    if host is None or _is_loopback(host):
        return "localhost"
    try:
        if host in (socket.gethostname(), socket.getfqdn(), _primary_ip()):
            return "localhost"
    except OSError:
        pass
    return host


def _primary_ip() -> str:
    """This host's address as others would see it (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 1))
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


def _oob_args(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Let large ``bytes`` arguments travel out of band (see ``codec.oob``)."""
    for a in args:
        if type(a) is bytes:
            args = tuple(codec.oob(x) for x in args)
            break
    if kwargs:
        kwargs = {k: codec.oob(v) for k, v in kwargs.items()}
    return args, kwargs


class WorkerInfo:
    """One entry of the worker table."""

    __slots__ = ("config", "exited", "host", "manager", "ospid", "pid", "port", "streams")

    def __init__(
        self,
        pid: int,
        host: str | None = None,
        port: int | None = None,
        config: WorkerConfig | None = None,
        manager: ClusterManager | None = None,
    ) -> None:
        self.pid = pid
        self.host = host
        self.port = port
        self.config = config
        self.manager = manager
        self.ospid: int | None = None
        self.exited = threading.Event()
        self.streams: list[RelayedStream] = []


class Cluster:
    """This process's membership in a cluster."""

    def __init__(self, pid: int = 1, cookie: str | None = None, role: str = "master") -> None:
        self.myid = pid
        self.role = role
        self.cookie = check_cookie(cookie) if cookie is not None else random_cookie()
        self.refs = RefStore()
        self.buffers = transport.BufferPool()
        self.executor = Executor(use_main_thread=(role == "worker"))
        self._lock = threading.RLock()
        self._join_lock = threading.Lock()
        self.peers: dict[int, Peer] = {}
        self.workers: dict[int, WorkerInfo] = {}
        self.dead: set[int] = set()
        self._next_pid = 2
        self.rrids = IdCounter()
        self._rids = IdCounter()
        self.handles: weakref.WeakValueDictionary[RRID, Any] = weakref.WeakValueDictionary()
        self.refq: deque[tuple[int, RRID]] = deque()
        self.topology = "all_to_all"
        self.lazy = True
        self.master_host = "localhost"
        self.address: tuple[str, int] | None = None
        self.joined = threading.Event()
        self._relay: OutputRelay | None = None
        self._connect_locks: dict[int, threading.Lock] = {}
        self._flusher: threading.Thread | None = None
        self._atexit = False
        self._closing = False
        # per-process state of the layers above (e.g. CachingPool's function cache), by name
        self.extensions: dict[str, Any] = {}
        self._handlers: dict[type[Message], Callable[[Peer, Any], None]] = {
            Call: self._on_call,
            CallFetch: self._on_call_fetch,
            CallWait: self._on_call_wait,
            RemoteDo: self._on_remote_do,
            Result: self._on_result,
            RefCount: self._on_refcount,
            JoinComplete: self._on_result_like,
            PeerUpdate: self._on_peer_update,
            Interrupt: self._on_interrupt,
            Exit: self._on_exit,
        }

    def __repr__(self) -> str:
        return f"<Cluster myid={self.myid} role={self.role} workers={self.worker_ids()}>"

    # -- membership queries ---------------------------------------------------------------

    def worker_ids(self) -> list[int]:
        """Ids of the workers (``[1]`` when there are none, as in Julia)."""
        with self._lock:
            ids = sorted(p for p in self.workers if p != 1)
        return ids or [1]

    def proc_ids(self) -> list[int]:
        with self._lock:
            ids = {1, *self.workers}
        return sorted(ids)

    def procs_on_host(self, pid: int) -> list[int]:
        """Processes on the same host as ``pid`` (by the address workers are reached at)."""
        with self._lock:
            table = {1: self.master_host if self.myid != 1 else "localhost"}
            for p, info in self.workers.items():
                table[p] = info.host or "localhost"
        if pid not in table:
            raise ValueError(f"no process with id {pid}")
        key = _host_key(table[pid])
        return sorted(p for p, h in table.items() if _host_key(h) == key)

    # -- connections ----------------------------------------------------------------------

    def get_peer(self, pid: int) -> Peer:
        """The connection to ``pid``, opened now if this worker has not talked to it yet.

        Raises:
            ProcessExitedException: ``pid`` has exited.
            ValueError: there is no such process, or this topology gives no way to reach it.
        """
        peer = self.peers.get(pid)
        if peer is not None and not peer.closed:
            return peer
        if pid in self.dead:
            raise ProcessExitedException(pid)
        if self.myid == 1:
            if 1 < pid < self._next_pid:
                raise ProcessExitedException(pid)
            raise ValueError(f"no process with id {pid}")
        with self._lock:
            info = self.workers.get(pid)
            lock = self._connect_locks.setdefault(pid, threading.Lock())
        if pid == 1 or info is None or info.host is None or info.port is None:
            if self.topology != "all_to_all" and pid != 1:
                raise ValueError(
                    f"process {self.myid} has no connection to process {pid} "
                    f"(topology {self.topology!r})"
                )
            raise ValueError(f"no process with id {pid}")
        with lock:
            peer = self.peers.get(pid)
            if peer is not None and not peer.closed:
                return peer
            if pid in self.dead:
                raise ProcessExitedException(pid)
            try:
                peer = self._connect_worker(pid, info.host, info.port)
            except (OSError, EOFError) as e:
                raise ProcessExitedException(pid, f"cannot connect: {e}") from e
            return peer

    def _connect_worker(self, pid: int, host: str, port: int) -> Peer:
        """Worker-to-worker: connect, authenticate, identify ourselves, start reading."""
        sock = transport.connect(host, port, timeout=_HANDSHAKE_TIMEOUT)
        reader, writer = transport.socket_streams(sock)
        read_exact, write = transport.handshake_io(reader, writer)
        try:
            client_handshake(read_exact, write, self.cookie)
        except BaseException:
            writer.close()
            raise
        sock.settimeout(None)
        peer = self._make_peer(reader, writer, pid, sock)
        peer.send(Identify(self.myid))
        with self._lock:
            existing = self.peers.get(pid)
            if existing is None or existing.closed:
                self.peers[pid] = peer
        if existing is not None and not existing.closed:
            # it connected to us meanwhile: keep one connection per pair, so that what this
            # process sends to it stays in order
            peer.close("a connection already exists")
            return existing
        peer.start(self._on_message, self._on_decode_error, self._on_close)
        return peer

    def _make_peer(self, reader: Any, writer: Any, pid: int | None, sock: Any) -> Peer:
        peer = Peer(reader, writer, pid, announce=self._announce, sock=sock, alloc=self.buffers.get)
        peer.shield = self.executor.shield
        peer.unshield = self.executor.unshield
        return peer

    def _install_peer(self, peer: Peer) -> None:
        with self._lock:
            old = self.peers.get(peer.pid or 0)
            if old is None or old.closed:
                self.peers[peer.pid or 0] = peer

    # -- message dispatch -----------------------------------------------------------------

    def _on_message(self, peer: Peer, msg: Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            log.warning("unexpected %s from process %s; ignored", type(msg).__name__, peer.pid)
            return
        handler(peer, msg)

    def _on_decode_error(self, peer: Peer, err: codec.DecodeError) -> None:
        h = err.header
        captured = capture(err)
        log.debug("undecodable message from %s: %s", peer.pid, err)
        if err.tag in (CallFetch.TAG, CallWait.TAG):
            if err.tag == CallWait.TAG:
                slot = self.refs.add(RRID(h["whence"], h["id"]), h["whence"])
                self._store(slot, False, captured)
            self._reply(peer, h["response_id"], False, captured)
        elif err.tag == Call.TAG:
            slot = self.refs.add(RRID(h["whence"], h["id"]), h["whence"])
            self._store(slot, False, captured)
        elif err.tag in (Result.TAG, JoinComplete.TAG):
            rslot = peer.pending.pop(h["response_id"], None)
            if rslot is not None:
                rslot.set(False, RemoteException(peer.pid or 0, captured))
        else:
            log.warning("dropped an undecodable message from process %s: %s", peer.pid, err)

    def _run(self, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        """Run user code: ``(True, value)`` or ``(False, CapturedException)``."""
        if getattr(f, "_pydist_internal", False):
            # the runtime's own operations (on references and pools) serve other processes;
            # an interrupt is meant for the calls of this one, so they are not interruptible
            try:
                return True, f(*args, **kwargs)
            except BaseException as e:
                return False, capture(e)
        ex = self.executor
        ident = ex.enter_call()
        exited = False
        try:
            try:
                return True, f(*args, **kwargs)
            finally:
                ex.exit_call(ident)
                exited = True
        except SystemExit as e:
            if not exited:
                ex.exit_call(ident)
            if self.role == "worker":
                self._exit_now(e.code if isinstance(e.code, int) else 0)
            return False, capture(e)
        except BaseException as e:
            if not exited:  # an interrupt landed before exit_call had finished
                ex.exit_call(ident)
            return False, capture(e)

    def _store(self, slot: Any, ok: bool, value: Any) -> None:
        if slot is None:
            return
        try:
            slot.put(value if ok else Failure(self.myid, value))
        except RuntimeError:
            log.warning("a call's result arrived for a Future that was already set; dropped")

    def _reply(self, peer: Peer, rid: int, ok: bool, value: Any) -> None:
        try:
            peer.send(Result(rid, ok, codec.oob(value) if ok else value))
            return
        except ProcessExitedException:
            return  # the caller is gone
        except Exception as e:
            what = "the return value" if ok else "the exception"
            msg = describe_unpicklable(what, {what: value}, e)
            err = pickle.PicklingError(msg)
        try:
            peer.send(Result(rid, False, capture(err)))
        except Exception:
            log.exception("could not answer a call from process %s", peer.pid)

    @staticmethod
    def _main_ok(f: Any) -> bool:
        return not getattr(f, "_pydist_internal", False)

    def _on_call(self, peer: Peer, msg: Call) -> None:
        slot = self.refs.add(RRID(msg.whence, msg.id), msg.whence)

        def run() -> None:
            ok, value = self._run(msg.f, msg.args, msg.kwargs)
            self._store(slot, ok, value)

        self.executor.submit(run, self._main_ok(msg.f))

    def _on_call_fetch(self, peer: Peer, msg: CallFetch) -> None:
        def run() -> None:
            ok, value = self._run(msg.f, msg.args, msg.kwargs)
            self._reply(peer, msg.response_id, ok, value)

        self.executor.submit(run, self._main_ok(msg.f))

    def _on_call_wait(self, peer: Peer, msg: CallWait) -> None:
        slot = self.refs.add(RRID(msg.whence, msg.id), msg.whence)

        def run() -> None:
            ok, value = self._run(msg.f, msg.args, msg.kwargs)
            self._store(slot, ok, value)
            self._reply(peer, msg.response_id, True, None)

        self.executor.submit(run, self._main_ok(msg.f))

    def _on_remote_do(self, peer: Peer, msg: RemoteDo) -> None:
        def run() -> None:
            ok, value = self._run(msg.f, msg.args, msg.kwargs)
            if not ok:
                print(f"Error in remote_do from process {peer.pid}: {value}", file=sys.stderr)

        self.executor.submit(run, self._main_ok(msg.f))

    def _on_result(self, peer: Peer, msg: Result) -> None:
        slot = peer.pending.pop(msg.response_id, None)
        if slot is None:
            return  # its caller gave up
        if msg.ok:
            slot.set(True, msg.value)
        else:
            slot.set(False, RemoteException(peer.pid or 0, msg.value))

    def _on_result_like(self, peer: Peer, msg: Any) -> None:
        slot = peer.pending.pop(msg.response_id, None)
        if slot is not None:
            slot.set(True, msg)

    def _on_refcount(self, peer: Peer, msg: RefCount) -> None:
        self.refs.apply(
            [(RRID(w, i), c) for w, i, c in msg.adds],
            [(RRID(w, i), c) for w, i, c in msg.dels],
        )

    def _on_peer_update(self, peer: Peer, msg: PeerUpdate) -> None:
        with self._lock:
            for pid, host, port in msg.added:
                if pid not in self.dead:
                    self.workers[pid] = WorkerInfo(pid, host, port)
        for pid in msg.removed:
            self._forget(pid, "removed from the cluster")

    def _on_interrupt(self, peer: Peer, msg: Interrupt) -> None:
        self.executor.interrupt()

    def _on_exit(self, peer: Peer, msg: Exit) -> None:
        self._exit_now(0)

    def _on_close(self, peer: Peer, reason: str) -> None:
        pid = peer.pid
        if pid is None:
            return
        with self._lock:
            if self.peers.get(pid) is peer:
                del self.peers[pid]
            elif pid in self.peers:
                return  # a second connection to a live process closed
        if self.role == "worker" and pid == 1:
            if not self._closing:
                log.debug("the master closed the connection: %s", reason)
            self._exit_now(0)
        if self.myid == 1:
            self._deregister(pid, reason)

    # -- calls ----------------------------------------------------------------------------

    def _request(self, pid: int, make: Callable[[int], Message]) -> tuple[Peer, int, ResponseSlot]:
        peer = self.get_peer(pid)
        rid = self._rids.next()
        slot = ResponseSlot()
        peer.pending[rid] = slot
        try:
            peer.send(make(rid))
        except BaseException:
            peer.pending.pop(rid, None)
            raise
        if peer.closed and peer.pending.pop(rid, None) is not None:
            # closed between our check and our registration: nobody else will wake us
            slot.set(False, ProcessExitedException(pid, peer.close_reason))
        return peer, rid, slot

    def _await(self, peer: Peer, rid: int, slot: ResponseSlot, timeout: float | None = None) -> Any:
        """Wait for the answer to request ``rid``; Ctrl-C interrupts the remote call too."""
        try:
            if timeout is None and not slot.is_set():
                self._read_answer(peer, slot)
            answered = slot.wait(timeout)
        except KeyboardInterrupt:
            if peer.pending.pop(rid, None) is not None and peer.pid is not None:
                self.send_interrupt(peer.pid)
            raise
        if not answered:
            peer.pending.pop(rid, None)
            raise TimeoutError(f"no answer from process {peer.pid} within {timeout} s")
        if slot.ok:
            return slot.value
        raise slot.value

    def _read_answer(self, peer: Peer, slot: ResponseSlot) -> None:
        """Read the answer on this thread when the connection lets us (no hand-off).

        On the main thread a Ctrl-C that arrives meanwhile is held until the reading role is
        given back, then delivered: a message is never read in part.
        """
        if threading.current_thread() is not threading.main_thread():
            # an interrupt can land anywhere in a call on a pool thread (an asynchronous
            # exception): such a thread waits on its slot instead of reading the stream
            if threading.get_ident() not in self.executor._in_call:
                peer.read_until(slot.is_set)
            return
        # _signal, not signal: the enum wrapping of the latter costs more than the read
        old = _signal.getsignal(signal.SIGINT)
        if not callable(old):
            peer.read_until(slot.is_set)
            return
        held: list[Any] = []
        _signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
        try:
            peer.read_until(slot.is_set)
        finally:
            _signal.signal(signal.SIGINT, old)
        if held:
            old(signal.SIGINT, held[0])

    def call_fetch(
        self,
        pid: int,
        f: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Run ``f`` on ``pid`` and return its value (raise its error as RemoteException)."""
        kwargs = kwargs or {}
        if pid == self.myid:
            ok, value = self._run(f, args, kwargs)
            if ok:
                return value
            raise RemoteException(self.myid, value)
        args, kwargs = _oob_args(args, kwargs)
        try:
            peer, rid, slot = self._request(pid, lambda rid: CallFetch(rid, f, args, kwargs))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise self._unpicklable(f, args, kwargs, e) from e
        return self._await(peer, rid, slot, timeout)

    def call(
        self, pid: int, rrid: RRID, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Start ``f`` on ``pid``, its result to be stored under ``rrid`` there.

        Returns the local storage when ``pid`` is this process, else None.
        """
        if pid == self.myid:
            slot = self.refs.add(rrid, self.myid)

            def run() -> None:
                ok, value = self._run(f, args, kwargs)
                self._store(slot, ok, value)

            self.executor.submit(run, main_ok=False)
            return slot
        args, kwargs = _oob_args(args, kwargs)
        try:
            self.get_peer(pid).send(Call(rrid.whence, rrid.id, f, args, kwargs))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise self._unpicklable(f, args, kwargs, e) from e
        return None

    def call_wait(
        self, pid: int, rrid: RRID, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``f`` on ``pid``, store its result under ``rrid`` there, return when done."""
        if pid == self.myid:
            slot = self.refs.add(rrid, self.myid)
            ok, value = self._run(f, args, kwargs)
            self._store(slot, ok, value)
            return slot
        args, kwargs = _oob_args(args, kwargs)
        try:
            peer, rid, rslot = self._request(
                pid, lambda rid: CallWait(rid, rrid.whence, rrid.id, f, args, kwargs)
            )
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise self._unpicklable(f, args, kwargs, e) from e
        self._await(peer, rid, rslot)
        return None

    def remote_do(self, pid: int, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if pid == self.myid:

            def run() -> None:
                ok, value = self._run(f, args, kwargs)
                if not ok:
                    print(f"Error in remote_do: {value}", file=sys.stderr)

            self.executor.submit(run, main_ok=False)
            return
        args, kwargs = _oob_args(args, kwargs)
        try:
            self.get_peer(pid).send(RemoteDo(f, args, kwargs))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise self._unpicklable(f, args, kwargs, e) from e

    @staticmethod
    def _unpicklable(
        f: Any, args: tuple[Any, ...], kwargs: dict[str, Any], e: BaseException
    ) -> pickle.PicklingError:
        values: dict[str, Any] = {"the function": f}
        values.update({f"argument {i + 1}": a for i, a in enumerate(args)})
        values.update({f"keyword argument {k!r}": v for k, v in kwargs.items()})
        return pickle.PicklingError(describe_unpicklable("cannot send the call", values, e))

    def send_interrupt(self, pid: int) -> None:
        try:
            self.get_peer(pid).send(Interrupt())
        except (ProcessExitedException, ValueError):
            pass

    def send_exit(self, pid: int) -> None:
        try:
            self.get_peer(pid).send(Exit())
        except (ProcessExitedException, ValueError):
            pass

    # -- reference counting ---------------------------------------------------------------

    def queue_release(self, owner: int, rrid: RRID) -> None:
        """Release one handle of ``rrid`` held here. Safe in a finalizer: it only appends."""
        self.refq.append((owner, rrid))

    def add_handle(self, owner: int, rrid: RRID) -> None:
        """Announce a new handle of ``rrid`` held here to its owner, before anything else."""
        if owner == self.myid:
            self.refs.add(rrid, self.myid)
            return
        try:
            self.get_peer(owner).send(RefCount(adds=((rrid.whence, rrid.id, self.myid),)))
        except (ProcessExitedException, ValueError):
            pass
        self._ensure_flusher()

    def _announce(self, peer: Peer, refs: list[Any]) -> None:
        """Before a message carrying ``refs`` goes to ``peer``: tell each owner first."""
        dest = peer.pid or 0
        same: list[tuple[int, int, int]] = []
        for ref in refs:
            owner, rrid = ref.where, ref.rrid
            if owner == self.myid:
                self.refs.add(rrid, dest, make=None)
            elif owner == dest:
                same.append((rrid.whence, rrid.id, dest))
            else:
                try:
                    self.get_peer(owner).send(RefCount(adds=((rrid.whence, rrid.id, dest),)))
                except (ProcessExitedException, ValueError):
                    pass
        if same:
            peer.send(RefCount(adds=tuple(same)))

    def flush_refs(self) -> None:
        """Send the queued releases to their owners, batched per owner."""
        q = self.refq
        by_owner: dict[int, list[tuple[int, int, int]]] = {}
        while True:
            try:
                owner, rrid = q.popleft()
            except IndexError:
                break
            by_owner.setdefault(owner, []).append((rrid.whence, rrid.id, self.myid))
        for owner, dels in by_owner.items():
            if owner == self.myid:
                for w, i, c in dels:
                    self.refs.release(RRID(w, i), c)
                continue
            peer = self.peers.get(owner)
            if peer is None:
                if owner in self.dead:
                    continue
                try:
                    peer = self.get_peer(owner)
                except (ProcessExitedException, ValueError):
                    continue
            try:
                peer.send(RefCount(dels=tuple(dels)))
            except Exception:
                pass

    def _ensure_flusher(self) -> None:
        if self._flusher is not None:
            return
        with self._lock:
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="pydist-refs", daemon=True
                )
                self._flusher.start()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(_FLUSH_INTERVAL)
            self.buffers.trim()
            if self.refq:
                try:
                    self.flush_refs()
                except Exception:
                    log.exception("reference release failed")

    # -- the worker side ------------------------------------------------------------------

    def serve(self, bind_host: str, port: int, out: Any) -> NoReturn:
        """Listen, print the banner on ``out``, and serve calls forever (worker main)."""
        sock = transport.listen_tcp(bind_host, port)
        host = bind_host
        if bind_host in ("0.0.0.0", "", "::"):
            host = _primary_ip()
        self.address = (host, sock.getsockname()[1])
        threading.Thread(
            target=self._accept_loop, args=(sock,), name="pydist-accept", daemon=True
        ).start()
        local = transport.listen_local(host, self.address[1])
        if local is not None:
            threading.Thread(
                target=self._accept_loop, args=(local,), name="pydist-accept-local", daemon=True
            ).start()
        threading.Thread(target=self._join_watchdog, name="pydist-watchdog", daemon=True).start()
        self._ensure_flusher()
        if threading.current_thread() is threading.main_thread():
            self.executor.install_sigint_handler()
        out.write(f"pydist_worker:{self.address[1]}#{host}\n")
        out.flush()
        self.executor.run_main()
        raise AssertionError("unreachable")

    def _join_watchdog(self) -> None:
        timeout = worker_timeout()
        if not self.joined.wait(timeout):
            print(
                f"pydistributed worker (pid {os.getpid()}): no master connected within "
                f"{timeout:g} s (PYDIST_WORKER_TIMEOUT); exiting",
                file=sys.stderr,
            )
            self._exit_now(1)

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, addr = sock.accept()
            except OSError as e:
                log.error("accept failed: %s", e)
                time.sleep(0.1)
                continue
            threading.Thread(
                target=self._serve_incoming, args=(conn, addr), name="pydist-incoming", daemon=True
            ).start()

    def _serve_incoming(self, conn: socket.socket, addr: Any) -> None:
        try:
            remote = bool(addr) and not isinstance(addr, str) and not _is_loopback(str(addr[0]))
            transport.set_socket_options(conn, remote=remote)
            conn.settimeout(_HANDSHAKE_TIMEOUT)
            reader, writer = transport.socket_streams(conn)
            read_exact, write = transport.handshake_io(reader, writer)
            server_handshake(read_exact, write, self.cookie)
            first = codec.decode(transport.read_message(reader, limit=1 << 20))
            conn.settimeout(None)
        except (AuthenticationError, ProtocolError, OSError, EOFError) as e:
            log.warning("refused a connection from %s: %s", addr, e)
            try:
                conn.close()
            except OSError:
                pass
            return
        self.process_first(reader, writer, first, sock=conn)

    def process_first(self, reader: Any, writer: Any, first: Message, sock: Any = None) -> None:
        """Serve an authenticated incoming connection whose first message is ``first``."""
        peer = self._make_peer(reader, writer, None, sock)
        if isinstance(first, JoinPGRP):
            if self.joined.is_set():
                log.warning("a second master tried to join this worker; refused")
                peer.close("refused")
                return
            self._join(peer, first)
        elif isinstance(first, Identify):
            peer.pid = first.pid
            self._install_peer(peer)
        else:
            log.warning("refused a connection that opened with %s", type(first).__name__)
            peer.close("refused")
            return
        peer.start(self._on_message, self._on_decode_error, self._on_close, thread=False)

    def _join(self, peer: Peer, msg: JoinPGRP) -> None:
        with self._lock:
            self.myid = msg.pid
            peer.pid = 1
            self.peers[1] = peer
            self.topology = msg.topology
            self.lazy = msg.lazy
            self.master_host = msg.master_host or "localhost"
            for pid, host, port in msg.peers:
                self.workers[pid] = WorkerInfo(pid, host, port)
            if self.address is not None:
                self.workers[self.myid] = WorkerInfo(self.myid, *self.address)
        self.joined.set()
        peer.send(JoinComplete(msg.response_id, os.getpid(), socket.gethostname()))
        if msg.topology in ("all_to_all", "custom") and not msg.lazy:
            for pid, _, _ in msg.peers:
                threading.Thread(target=self._try_connect, args=(pid,), daemon=True).start()

    def _try_connect(self, pid: int) -> None:
        try:
            self.get_peer(pid)
        except Exception as e:
            log.warning("could not connect to process %s: %s", pid, e)

    def _exit_now(self, code: int) -> NoReturn:
        self._closing = True
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

    def _forget(self, pid: int, reason: str) -> None:
        """A process left the cluster: fail what waits on it, release what it held."""
        with self._lock:
            self.dead.add(pid)
            self.workers.pop(pid, None)
            peer = self.peers.pop(pid, None)
        if peer is not None:
            peer.close(reason)
        self.refs.drop_client(pid)

    # -- the master side: adding workers --------------------------------------------------

    def add_workers(self, manager: ClusterManager, kw: dict[str, Any]) -> list[int]:
        """``addprocs(manager, **kw)``: launch, connect and admit workers; their ids, sorted."""
        if self.myid != 1:
            raise RuntimeError("Only process 1 can add and remove workers")
        known = COMMON_PARAMS | manager.extra_params
        for key in kw:
            if key not in known:
                raise TypeError(f"addprocs() got an unexpected keyword argument {key!r}")
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
        self.topology = params["topology"]
        self.lazy = bool(params["lazy"])
        self._ensure_atexit()
        self._ensure_flusher()

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
        results: list[tuple[WorkerConfig, int | None, BaseException | None]] = []
        setups: list[threading.Thread] = []
        seen = 0
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
        pids = sorted(pid for _, pid, err in results if pid is not None and err is None)
        errors = [err for _, _, err in results if err is not None]
        if launch_error or errors:
            if pids:
                self.remove_workers(pids, waitfor=10.0, quiet=True)
            first = launch_error[0] if launch_error else errors[0]
            if len(errors) > 1 or (launch_error and errors):
                log.error(
                    "%d more workers failed to start", len(errors) - (0 if launch_error else 1)
                )
            raise first
        return pids

    def _relay_stream(self, file: Any, kind: str, banner: bool) -> RelayedStream:
        if self._relay is None:
            with self._lock:
                if self._relay is None:
                    self._relay = OutputRelay()
        return self._relay.add(file, kind, banner)

    def _setup_one(
        self,
        manager: ClusterManager,
        config: WorkerConfig,
        params: dict[str, Any],
        results: list[tuple[WorkerConfig, int | None, BaseException | None]],
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
            custom_transport = type(manager).connect is not ClusterManager.connect
            if (config.host is None or config.port is None) and config.connect_at is None:
                if out_stream is not None:
                    self._await_banner(config, out_stream, streams)
                elif not custom_transport:
                    raise ValueError("a WorkerConfig needs host and port, connect_at, or io")
            pid = self._admit(manager, config, params, streams)
            results.append((config, pid, None))
        except BaseException as e:
            proc = config.process
            if proc is not None and hasattr(proc, "kill"):
                try:
                    proc.kill()
                    proc.wait(timeout=5)
                except Exception:
                    pass
            results.append((config, pid, e))

    @staticmethod
    def _tail(streams: list[RelayedStream]) -> str:
        for s in streams:
            if s.kind == "stderr" and s.tail:
                return "; its stderr ended with:\n" + s.tail_text()
        for s in streams:
            if s.tail:
                return "; its output ended with:\n" + s.tail_text()
        return "; it printed nothing"

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
                raise RuntimeError(
                    f"worker (os pid {config.ospid}) exited with code {code} before reporting "
                    f"its address{self._tail(streams)}"
                )
            raise TimeoutError(
                f"worker (os pid {config.ospid}) did not report its address within "
                f"{timeout:g} s (PYDIST_WORKER_TIMEOUT){self._tail(streams)}"
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
        with self._lock:
            pid = self._next_pid
            self._next_pid += 1
        instream, outstream = manager.connect(pid, config)
        read_exact, write = transport.handshake_io(instream, outstream)
        sock = getattr(outstream, "sock", None)
        if sock is not None:
            sock.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            client_handshake(read_exact, write, self.cookie)
        except BaseException:
            try:
                transport.as_frame_writer(outstream).close()
            except Exception:
                pass
            raise
        if sock is not None:
            sock.settimeout(None)
        peer = self._make_peer(instream, outstream, pid, sock)
        info = WorkerInfo(pid, config.bind_addr or config.host, config.port, config, manager)
        info.streams = streams
        with self._join_lock:
            with self._lock:
                others = [w for w in self.workers.values() if w.pid != pid]
                self.workers[pid] = info
                self.peers[pid] = peer
            topology = params["topology"]
            if topology == "all_to_all":
                table = [(w.pid, w.host or "", w.port or 0) for w in others]
            elif topology == "custom":
                wanted = set(config.connect_idents or ())
                ident_of = {w.pid: w.config.ident for w in others if w.config is not None}
                table = [
                    (w.pid, w.host or "", w.port or 0)
                    for w in others
                    if ident_of.get(w.pid) in wanted
                ]
            else:
                table = []
            peer.start(self._on_message, self._on_decode_error, self._on_close)
            rid = self._rids.next()
            slot = ResponseSlot()
            peer.pending[rid] = slot
            peer.send(JoinPGRP(rid, pid, topology, bool(params["lazy"]), tuple(table), "localhost"))
            if topology == "all_to_all":
                update = PeerUpdate(added=((pid, info.host or "", info.port or 0),))
                for w in others:
                    p = self.peers.get(w.pid)
                    if p is not None:
                        try:
                            p.send(update)
                        except ProcessExitedException:
                            pass
        joined = self._await(peer, rid, slot, worker_timeout())
        info.ospid = joined.ospid
        if config.ospid is None:
            config.ospid = joined.ospid
        for s in streams:
            s.set_pid(pid)
        try:
            manager.manage(pid, config, "register")
        except Exception:
            log.exception("manage(register) failed for worker %d", pid)
        return pid

    def _deregister(self, pid: int, reason: str) -> None:
        with self._lock:
            info = self.workers.pop(pid, None)
            self.dead.add(pid)
            others = list(self.peers.values())
        self.refs.drop_client(pid)
        if info is None:
            return
        update = PeerUpdate(removed=(pid,))
        for p in others:
            try:
                p.send(update)
            except Exception:
                pass
        config, manager = info.config, info.manager
        if manager is not None and config is not None:
            try:
                manager.manage(pid, config, "deregister")
            except Exception:
                log.exception("manage(deregister) failed for worker %d", pid)
        info.exited.set()
        threading.Thread(target=self._reap, args=(info,), name="pydist-reap", daemon=True).start()

    @staticmethod
    def _reap(info: WorkerInfo) -> None:
        proc = info.config.process if info.config is not None else None
        if proc is not None and hasattr(proc, "wait"):
            try:
                proc.wait(timeout=5)
            except Exception:
                try:
                    proc.kill()
                    proc.wait(timeout=5)
                except Exception:
                    pass
        if info.manager is not None and info.config is not None:
            try:
                info.manager.manage(info.pid, info.config, "finalize")
            except Exception:
                log.exception("manage(finalize) failed for worker %d", info.pid)

    # -- the master side: removing and interrupting ---------------------------------------

    def remove_workers(
        self, pids: Iterable[int], waitfor: float | None = None, quiet: bool = False
    ) -> None:
        """``rmprocs``: ask each worker to exit, then interrupt, then kill; within ``waitfor``.

        Raises:
            RuntimeError: called on a worker.
            TimeoutError: some workers were still there after ``waitfor`` seconds.
        """
        if self.myid != 1:
            raise RuntimeError("Only process 1 can add and remove workers")
        with self._lock:
            infos = [self.workers[p] for p in dict.fromkeys(pids) if p != 1 and p in self.workers]
        if not infos:
            return
        start = time.monotonic()
        deadline = None if waitfor is None else start + waitfor
        grace = 1.0 if waitfor is None else max(0.05, min(1.0, waitfor / 3))

        def wait_until(t: float | None) -> list[WorkerInfo]:
            for info in infos:
                remaining = None if t is None else t - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                info.exited.wait(remaining)
            return [i for i in infos if not i.exited.is_set()]

        def step(info: WorkerInfo, what: str) -> None:
            try:
                if info.manager is None or info.config is None:
                    self.send_exit(info.pid)
                elif what == "kill":
                    info.manager.kill(info.pid, info.config)
                else:
                    info.manager.manage(info.pid, info.config, "interrupt")
            except Exception:
                log.exception("%s of worker %d failed", what, info.pid)

        for info in infos:
            step(info, "kill")
        left = wait_until(min(start + grace, deadline) if deadline else start + grace)
        if left:
            for info in left:
                step(info, "interrupt")
            t2 = start + 2 * grace
            left = wait_until(min(t2, deadline) if deadline else t2)
        if left:
            late = deadline is not None and time.monotonic() >= deadline
            for info in left:
                proc = info.config.process if info.config is not None else None
                if proc is not None and hasattr(proc, "kill"):
                    try:
                        proc.kill()
                        proc.wait(timeout=5)
                    except Exception:
                        pass
                peer = self.peers.get(info.pid)
                if peer is not None:
                    peer.close("removed by rmprocs")
            # killed and disconnected: they are deregistered at once; bound the wait anyway
            still = wait_until(max(deadline or 0.0, time.monotonic() + 5))
            if late or still:
                raise TimeoutError(
                    f"workers {[i.pid for i in left]} did not exit within {waitfor} s; "
                    "they were killed"
                )
        # reap the processes, so that none is left behind as a zombie
        for info in infos:
            proc = info.config.process if info.config is not None else None
            if proc is not None and hasattr(proc, "wait"):
                remaining = 5.0 if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    proc.wait(timeout=remaining)
                except Exception:
                    pass

    def interrupt(self, pids: Iterable[int]) -> None:
        targets = list(pids) or [p for p in self.worker_ids() if p != 1]
        for pid in targets:
            info = self.workers.get(pid)
            if info is not None and info.manager is not None and info.config is not None:
                try:
                    info.manager.manage(pid, info.config, "interrupt")
                except Exception:
                    log.exception("interrupting worker %d failed", pid)
            else:
                self.send_interrupt(pid)

    # -- shutdown -------------------------------------------------------------------------

    def _ensure_atexit(self) -> None:
        if not self._atexit:
            self._atexit = True
            atexit.register(self.shutdown)

    def shutdown(self) -> None:
        """At the master's exit: tell every worker to exit, and make sure they do."""
        self._closing = True
        with self._lock:
            infos = list(self.workers.values())
        for info in infos:
            self.send_exit(info.pid)
        deadline = time.monotonic() + 2.0
        for info in infos:
            info.exited.wait(max(0.0, deadline - time.monotonic()))
        for info in infos:
            proc = info.config.process if info.config is not None else None
            if proc is not None and hasattr(proc, "wait"):
                try:
                    proc.wait(timeout=max(0.05, deadline - time.monotonic()))
                except Exception:
                    try:
                        proc.kill()
                        proc.wait(timeout=2)
                    except Exception:
                        pass


_current: Cluster | None = None
_current_lock = threading.Lock()


def current_cluster() -> Cluster:
    """The cluster this process belongs to (as the master, process 1, if none was set)."""
    c = _current
    if c is None:
        with _current_lock:
            if _current is None:
                set_current_cluster(Cluster(1))
            c = _current
    assert c is not None
    return c


def set_current_cluster(cluster: Cluster) -> None:
    global _current
    _current = cluster


def cluster_cookie(cookie: str | None = None) -> str:
    """The cluster cookie; with an argument, set it first (printable ASCII, <= 64 chars)."""
    c = current_cluster()
    if cookie is not None:
        c.cookie = check_cookie(cookie)
    return c.cookie
