"""``python -m pydistributed.forkserver --fd N``: the preloaded spawner of local workers.

A master starts one on its first ``addprocs`` of local workers (``managers/forkspawn.py``),
through its spawner thread, and talks to it over the Unix socket ``N`` (``SOCK_SEQPACKET``, one
JSON message a packet). It has imported pydistributed, cloudpickle and every module a worker
needs to serve; each request forks a worker from it, so a local worker costs a fork, not an
interpreter start.

::

    master (managers/forkspawn.py)                 forkserver (this module)
    start it (spawner thread, new session)  ---->  die with the master (PR_SET_PDEATHSIG),
                                                   import the worker's modules
                                            <----  {"ready": pid}
    {"spawn": {cwd, env, bind_to, ...}}
      + fds: stdin, stdout, stderr pipes    ---->  fork; the child becomes a worker
                                            <----  {"forked": pid} + a pidfd of the child
                                            <----  {"exit": pid, "code": c} when it ends
    closes the socket (or dies)             ---->  exits (its workers die with it)

The child: its own session (``start_new_session``), the pipes on fds 0-2, the master's ``dir``
and ``env`` (the whole environment, applied before any of the worker's code runs), its own
``sys.stdin``, ``sys.stdout`` and ``sys.stderr`` made for those pipes as a fresh interpreter with
that environment makes them (:func:`_standard_streams`), and then
``python -m pydistributed.worker``'s main: it reads its cookie from stdin, asks the kernel to
kill it when the forkserver dies, takes the master's sys.path, listens, prints its banner,
serves. So the master's death kills every worker even when the master is SIGKILLed: the kernel
kills the forkserver (its death signal), and the forkserver's death kills its children.

No fork after threads: this process stays single-threaded (checked before every fork from
``/proc/self/task``: a thread started by C code counts too); it reaps its children from its
one loop (``SIGCHLD`` wakes its ``select``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import types
from typing import Any, NoReturn

from . import worker

__all__ = ["main"]

MAX_MESSAGE = 1 << 20  # a request carries a whole environment

# this interpreter's standard streams as it made them: (encoding, errors, write_through) of fds
# 0-2 (set by main)
_stdio: list[tuple[str, str, bool]] = []


def thread_count() -> int:
    """The threads of this process, those of C code included."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def _preload() -> None:
    """Import what a worker needs to serve calls, so that no child imports it again (the
    cluster's modules too: imported once here they cost a cold start less than in each child
    at once, which share the processors with the master then)."""
    import resource  # noqa: F401  (worker._raise_fd_limit)

    import pydistributed.cluster
    import pydistributed.outputloss
    import pydistributed.processes
    import pydistributed.serve  # noqa: F401


def _preload_later() -> None:
    """What a worker needs for functions sent by value (cloudpickle: ~12 ms), imported once
    the forkserver has been idle ``LATER_IDLE`` seconds: the first workers, which a cold
    start waits for, are not held up by it (they import it when a lambda comes); later ones
    have it."""
    import cloudpickle  # noqa: F401

    import pydistributed.cpickler  # noqa: F401  (the codec's, on a worker's first such message)


LATER_IDLE = 0.2


def _send(sock: socket.socket, msg: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--fd" or not args[1].isdigit():
        sys.exit("usage: python -m pydistributed.forkserver --fd N (started by a master)")
    sock = socket.socket(fileno=int(args[1]))
    for name in ("__stdin__", "__stdout__", "__stderr__"):
        stream = getattr(sys, name)
        if stream is None:
            sys.exit(f"pydistributed forkserver: started without sys.{name.strip('_')}")
        _stdio.append((stream.encoding, stream.errors, stream.write_through))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the master's to relay
    worker._die_with_parent()  # reads PYDIST_PARENT_PID: the master
    worker._apply_sys_path()
    worker._raise_fd_limit()
    _preload()
    if thread_count() != 1:
        sys.exit(
            f"pydistributed forkserver: {thread_count()} threads after the imports; "
            "it forks only while it has one"
        )
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    _send(sock, {"ready": os.getpid()})
    _serve(sock, wake_r, wake_w)


def _serve(sock: socket.socket, wake_r: int, wake_w: int) -> None:
    children: set[int] = set()
    later = True  # _preload_later still to do
    while True:
        readable, _, _ = select.select(
            [sock.fileno(), wake_r], [], [], LATER_IDLE if later else None
        )
        if not readable:
            later = False
            _preload_later()
            continue
        if wake_r in readable:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        _reap(sock, children)
        if sock.fileno() not in readable:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 3)
        except OSError:
            data, fds = b"", []
        if not data:  # the master closed its end, or died
            sys.exit(0)
        try:
            pid = _fork(json.loads(data)["spawn"], fds, sock, (wake_r, wake_w))
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
            _send(sock, {"error": f"{type(e).__name__}: {e}"})
            continue
        finally:
            for fd in fds:
                os.close(fd)
        children.add(pid)
        pidfd = -1
        try:
            pidfd = os.pidfd_open(pid)  # not reaped yet: this is the child, never a reused pid
        except (AttributeError, OSError):
            pass
        try:
            _send(sock, {"forked": pid}, [pidfd] if pidfd >= 0 else None)
        finally:
            if pidfd >= 0:
                os.close(pidfd)


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send(sock, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _fork(req: dict[str, Any], fds: list[int], sock: socket.socket, wake: tuple[int, int]) -> int:
    if len(fds) != 3:
        raise ValueError(f"a spawn request carries 3 fds, not {len(fds)}")
    if not isinstance(req.get("env"), dict) or not isinstance(req.get("cwd"), str):
        raise ValueError("a spawn request has an env (a dict) and a cwd (a str)")
    n = thread_count()
    assert n == 1, f"the forkserver has {n} threads: it must not fork"
    for f in (sys.stdout, sys.stderr):
        if f is not None:
            f.flush()
    server = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    _child(req, fds, sock, wake, server)


def _child(
    req: dict[str, Any], fds: list[int], sock: socket.socket, wake: tuple[int, int], server: int
) -> NoReturn:
    code: Any = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sock.close()
        for fd in wake:
            os.close(fd)
        if req.get("new_session", True):
            os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        env = {str(k): str(v) for k, v in req["env"].items()}
        env["PYDIST_PARENT_PID"] = str(server)  # die with the forkserver (worker.py)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(req["cwd"])
        _standard_streams()
        main_module = types.ModuleType("__main__")  # not the forkserver's names
        sys.modules["__main__"] = main_module
        sys.argv = [worker.__file__ or "pydistributed.worker", "--bind-to", str(req["bind_to"])]
        worker.forked_main(str(req["bind_to"]))
        code = 0
    except SystemExit as e:
        code = e.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        if code is None:
            code = 0
        elif not isinstance(code, int):
            try:
                print(code, file=sys.stderr)
            except Exception:
                pass
            code = 1
        for f in (sys.stdout, sys.stderr):
            try:
                if f is not None:
                    f.flush()
            except Exception:
                pass
        os._exit(code)


def _standard_streams() -> None:
    """A child's ``sys.stdin``, ``sys.stdout``, ``sys.stderr`` (and their ``__std*__``): made
    for its fds 0-2, the pipes now, as a fresh interpreter would (stdout and stderr
    guarded, as ``outputloss.guard_streams`` does on a worker started by exec).

    The forkserver's own were made for its descriptors (``/dev/null`` among them), and a
    ``TextIOWrapper`` remembers that its file was seekable: on a worker's pipe, ``tell()`` and
    ``reconfigure()`` failed with "Illegal seek". Encoding, errors and buffering are the
    forkserver's: a worker whose environment differs from the forkserver's in what an
    interpreter reads as it starts (``PYTHON*``, the locale: ``managers.local``'s
    ``startup_environment``) is started by exec, not forked."""
    from .outputloss import standard_stream

    # (the forkserver's own, made by the interpreter, do not close fds 0-2 when collected)
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        stream = standard_stream(fd, *_stdio[fd])
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


if __name__ == "__main__":
    main()
