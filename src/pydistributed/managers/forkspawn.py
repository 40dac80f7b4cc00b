"""The master's side of the forkserver (``pydistributed/forkserver.py``): starting it, asking it
for workers, and a ``Popen``-like handle on each worker it forks.

A forked worker is the forkserver's child, not the master's: the master cannot ``waitpid`` it.
Its handle (:class:`ForkedProcess`) learns the exit code from the forkserver, which reaps it and
reports ``{"exit": pid, "code": c}``, and signals it through a pidfd the forkserver took before
it could be reaped (so a kill never reaches a reused pid). One reader thread per forkserver
takes its messages. When the forkserver ends, every worker it forked has died with it (their
death signal): their handles report code -9 (SIGKILL), and the next request starts a new one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["ForkServerClient", "ForkServerError", "ForkedProcess", "spawn_mode"]

READY_TIMEOUT = 60.0  # how long a new forkserver may take to import pydistributed
ANSWER_TIMEOUT = 30.0  # how long a fork may take to be answered
MAX_MESSAGE = 1 << 16


class ForkServerError(RuntimeError):
    """The forkserver could not be started, or died, or refused a request."""


def spawn_mode() -> str:
    """``PYDIST_SPAWN``: ``forkserver`` (the default) or ``exec`` (a new interpreter a worker)."""
    mode = os.environ.get("PYDIST_SPAWN", "").strip().lower() or "forkserver"
    if mode not in ("forkserver", "exec"):
        raise ValueError(
            f"PYDIST_SPAWN={os.environ['PYDIST_SPAWN']!r}: it is 'forkserver' (the default: local "
            "workers forked from a preloaded process) or 'exec' (a new interpreter per worker)"
        )
    if mode == "forkserver" and not (
        sys.platform.startswith("linux") and hasattr(socket, "send_fds") and hasattr(os, "fork")
    ):
        return "exec"
    return mode


class ForkedProcess:
    """A worker forked by the forkserver, with what ``Popen`` offers the lifecycle: ``pid``,
    ``stdout``, ``stderr``, ``wait``, ``poll``, ``kill``, ``terminate``, ``send_signal``."""

    def __init__(self, pid: int, pidfd: int | None, stdout: Any, stderr: Any) -> None:
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = None
        self.returncode: int | None = None
        self.args = ["pydistributed.forkserver", str(pid)]
        self._pidfd = pidfd
        self._done = threading.Event()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} returncode={self.returncode}>"

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self._done.is_set():
                return
            try:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _exited(self, code: int) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.returncode = code
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._done.set()


class _Pending:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.error: str | None = None


class ForkServerClient:
    """One running forkserver: :meth:`spawn` forks a worker from it."""

    def __init__(
        self,
        popen: Callable[..., subprocess.Popen[bytes]],
        env: dict[str, str],
        meanwhile: Callable[[], object] | None = None,
    ) -> None:
        """Start a forkserver (``popen``, environment ``env``) and wait until it is ready;
        ``meanwhile`` runs while it starts (tens of ms, on another processor)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = popen(
                [sys.executable, "-m", "pydistributed.forkserver", "--fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # a Ctrl-C in the terminal is not its own
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.env = env
        self.pid = self.proc.pid
        self.alive = True
        self._lock = threading.Lock()  # one request at a time; answers come in order
        self._pending: deque[_Pending] = deque()
        self._children: dict[int, ForkedProcess] = {}
        self._early: dict[int, int] = {}  # exit codes that came before their handle
        self._ready = threading.Event()
        self._stderr_text = ""
        self._reader = threading.Thread(target=self._read, name="pydist-forkserver", daemon=True)
        self._reader.start()
        if meanwhile is not None:
            try:
                meanwhile()
            except Exception:  # only a head start: what it does is done again where needed
                pass
        if not self._ready.wait(READY_TIMEOUT) or not self.alive:
            self.close()  # the reader ends and reads its stderr
            raise ForkServerError(f"the forkserver did not start{self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        self._reader.join(10)
        text = self._stderr_text.strip()
        code = self.proc.returncode
        return f" (exit code {code}){': ' + text[-2000:] if text else ''}"

    def spawn(self, cwd: str, env: dict[str, str], bind_to: str, cookie: str) -> ForkedProcess:
        """Fork a worker; its cookie goes on its stdin, as for a worker started by exec."""
        return self._finish(self._request(cwd, env, bind_to), cookie)

    def spawn_many(
        self, count: int, cwd: str, env: dict[str, str], bind_to: str, cookie: str
    ) -> Iterator[ForkedProcess]:
        """Fork ``count`` workers, the requests sent all at once (the forkserver forks the next
        while this process sets up the one before); each is yielded as its answer comes."""
        sent: deque[tuple[_Pending, list[int]]] = deque()
        try:
            for _ in range(count):
                sent.append(self._request(cwd, env, bind_to))
            while sent:
                yield self._finish(sent.popleft(), cookie)
        finally:
            for pending, ours in sent:  # an error or an abandoned generator: not started
                self._abandon(pending, ours)

    def _request(self, cwd: str, env: dict[str, str], bind_to: str) -> tuple[_Pending, list[int]]:
        """Send one fork request; the answer comes to the returned handle."""
        fds = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr
        theirs = [fds[0][0], fds[1][1], fds[2][1]]
        ours = [fds[0][1], fds[1][0], fds[2][0]]
        req = {"spawn": {"cwd": cwd, "env": env, "bind_to": bind_to, "new_session": True}}
        pending = _Pending()
        try:
            with self._lock:
                if not self.alive:
                    raise ForkServerError("the forkserver has ended")
                self._pending.append(pending)
                try:
                    socket.send_fds(self.sock, [json.dumps(req).encode()], theirs)
                except OSError as e:
                    self._pending.remove(pending)
                    raise ForkServerError(f"the forkserver is gone: {e}") from e
        except BaseException:
            for fd in theirs + ours:
                os.close(fd)
            raise
        for fd in theirs:
            os.close(fd)
        return pending, ours

    def _finish(self, sent: tuple[_Pending, list[int]], cookie: str) -> ForkedProcess:
        """Wait for the answer to a request; give the worker its cookie; its handle."""
        pending, ours = sent
        stdin_w, stdout_r, stderr_r = ours
        if not pending.done.wait(ANSWER_TIMEOUT) or pending.pid is None:
            for fd in ours:
                os.close(fd)
            raise ForkServerError(
                f"the forkserver could not fork a worker: {pending.error or 'no answer'}"
            )
        try:
            os.write(stdin_w, (cookie + "\n").encode("ascii"))
        except OSError:
            pass  # it died at once; the master reports its stderr
        os.close(stdin_w)
        proc = ForkedProcess(pending.pid, pending.pidfd, open(stdout_r, "rb"), open(stderr_r, "rb"))
        with self._lock:
            self._children[proc.pid] = proc
            code = self._early.pop(proc.pid, None)
            if not self.alive and code is None:
                code = -signal.SIGKILL
        if code is not None:
            proc._exited(code)
        return proc

    def _abandon(self, pending: _Pending, ours: list[int]) -> None:
        """A request whose worker is not wanted after all (an earlier one failed): killed if it
        was forked (without its cookie it would exit anyway)."""
        for fd in ours:
            os.close(fd)
        if pending.done.wait(ANSWER_TIMEOUT) and pending.pidfd is not None:
            try:
                signal.pidfd_send_signal(pending.pidfd, signal.SIGKILL)
            except OSError:
                pass
            os.close(pending.pidfd)

    def _read(self) -> None:
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
                if not data:
                    break
                self._handle(json.loads(data), fds)
        except (OSError, ValueError):
            pass
        finally:
            self._ended()

    def _handle(self, msg: dict[str, Any], fds: list[int]) -> None:
        if "ready" in msg:
            self._ready.set()
        elif "forked" in msg or "error" in msg:
            with self._lock:
                pending = self._pending.popleft()
            pending.pid = msg.get("forked")
            pending.pidfd = fds[0] if fds else None
            pending.error = msg.get("error")
            pending.done.set()
        elif "exit" in msg:
            with self._lock:
                proc = self._children.pop(msg["exit"], None)
                if proc is None:
                    self._early[msg["exit"]] = int(msg["code"])
            if proc is not None:
                proc._exited(int(msg["code"]))

    def _ended(self) -> None:
        """The forkserver is gone: so are its workers (their death signal)."""
        with self._lock:
            self.alive = False
            children = list(self._children.values())
            self._children.clear()
            pending = list(self._pending)
            self._pending.clear()
        for p in pending:
            p.error = "the forkserver has ended"
            p.done.set()
        for proc in children:
            proc._exited(-signal.SIGKILL)
        self._ready.set()
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()  # it closed its socket and lingers: it has nothing left to do
        err = self.proc.stderr
        if err is not None:
            try:
                self._stderr_text = err.read(65536).decode(errors="replace")
            except (OSError, ValueError):
                pass
            err.close()

    def close(self) -> None:
        """End the forkserver (and so its workers)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.proc.kill()
        except OSError:
            pass
