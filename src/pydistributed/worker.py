"""``python -m pydistributed.worker [--join HOST:PORT] [--cookie-file F] [--bind-to HOST[:PORT]]``:
a worker process.

The cookie comes from ``--cookie-file`` (its first line), else the environment variable
``PYDIST_COOKIE``, else the first line of standard input (local workers always get it there;
read without echo from a terminal). ``--cookie C`` works too, with a warning: every user of the
host can read a command line; with ``--join`` it is refused.

Without ``--join``, the worker listens on ``HOST`` (default 127.0.0.1) and a free port unless one
is given, prints ``pydist_worker:PORT#HOST`` and serves until its connection to the master
closes. With ``--join HOST:PORT`` it dials the master's ``ElasticManager`` there and joins by
itself (``joinworker.py``); it exits with code 1 and a message when it cannot.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse


def _line_streams() -> None:
    """The master writes the cookie to a worker's stdin in ASCII and reads its stdout and
    stderr as lines of UTF-8 (the banner among them): a standard stream whose encoding does not
    write ASCII as ASCII (``PYTHONIOENCODING=utf-16`` in the master's environment, which the
    worker inherits) is switched to UTF-8, with the same error handler, before anything is read
    or written (Julia's workers write UTF-8 whatever the locale)."""
    for name in ("stdin", "stdout", "stderr"):
        stream = getattr(sys, name, None)
        encoding = getattr(stream, "encoding", None)
        if not encoding or not hasattr(stream, "reconfigure"):
            continue
        try:
            fits = "pydist_worker:1#\n".encode(encoding) == b"pydist_worker:1#\n"
        except (LookupError, UnicodeError):
            fits = False
        if not fits:
            try:
                stream.reconfigure(encoding="utf-8")  # type: ignore[union-attr]
            except (ValueError, OSError):
                pass


def _apply_sys_path() -> None:
    """Start with the master's sys.path (set by LocalManager), so its modules import here."""
    raw = os.environ.pop("PYDIST_SYS_PATH", None)
    if not raw:
        return
    try:
        master = [p for p in json.loads(raw) if isinstance(p, str)]
    except ValueError:
        return
    sys.path[:] = master + [p for p in sys.path if p not in master and p != ""]


def _die_with_parent() -> bool:
    """Ask the kernel to kill this worker when its parent, the master, dies (local workers).
    Returns whether it did (elsewhere a watchdog process does it, see ``serve.py``).

    The master's connection closing makes a worker exit, but only a thread of the worker can
    notice that; a call stuck in C code holding the GIL would outlive the master. The kernel
    does not need the GIL.
    """
    raw = os.environ.pop("PYDIST_PARENT_PID", None)
    if not raw or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig, sigkill = 1, 9
        libc.prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
    except (OSError, AttributeError):
        return False
    if str(os.getppid()) != raw:  # the master died before we asked
        sys.exit(1)
    return True


def _raise_fd_limit() -> None:
    """Allow as many open files as the hard limit does: a worker holds a socket per peer and
    per connection in its handshake, and its user code must still open files."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY:
            hard = max(soft, 1 << 20)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _cookie(args: argparse.Namespace) -> str | None:
    """The cookie from the command line, a file or the environment; None: read stdin."""
    if args.cookie is not None:
        print(
            "pydistributed worker: warning: --cookie puts the cluster cookie on the command "
            "line, where every user of this host can read it; use --cookie-file, "
            "PYDIST_COOKIE or standard input",
            file=sys.stderr,
        )
        return str(args.cookie)
    if args.cookie_file is not None:
        with open(args.cookie_file) as f:
            return f.readline().rstrip("\r\n")
    env = os.environ.pop("PYDIST_COOKIE", None)
    return env if env else None


def forked_main(bind_to: str) -> None:
    """A worker forked by the forkserver (``forkserver.py``): what :func:`main` does for
    ``--bind-to BIND_TO`` with the cookie on stdin, without parsing a command line (and so
    without importing ``argparse`` in the forkserver)."""
    _line_streams()
    tied = _die_with_parent()
    _apply_sys_path()
    _raise_fd_limit()
    from pydistributed.processes import start_worker

    cookie = os.environ.pop("PYDIST_COOKIE", None) or None  # as _cookie: else stdin
    try:
        start_worker(sys.stdout, cookie, bind_to=bind_to, watchdog=not tied)
    except ValueError as e:  # the cookie read from stdin is not a valid one
        print(f"python -m pydistributed.worker: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    _line_streams()
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pydistributed.worker")
    parser.add_argument(
        "--cookie-file", default=None, metavar="FILE", help="read the cluster cookie from FILE"
    )
    parser.add_argument(
        "--cookie", default=None, help="the cluster cookie (visible to other users: avoid)"
    )
    parser.add_argument("--bind-to", default=None, metavar="HOST[:PORT]")
    parser.add_argument(
        "--join",
        default=None,
        metavar="HOST:PORT",
        help="join the master whose ElasticManager listens at HOST:PORT",
    )
    args = parser.parse_args(argv)
    if args.join is not None:
        _join(parser, args)
    tied = _die_with_parent()
    _apply_sys_path()
    _raise_fd_limit()
    from pydistributed.processes import start_worker

    try:
        cookie = _cookie(args)
    except OSError as e:
        parser.error(f"cannot read the cookie: {e}")
    try:
        start_worker(sys.stdout, cookie, bind_to=args.bind_to, watchdog=not tied)
    except ValueError as e:  # the cookie (read here or from stdin) is not a valid one
        parser.exit(2, f"{parser.prog}: {e}\n")


def _join(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--join HOST:PORT``: dial the master and join it (never returns)."""
    if args.cookie is not None:
        parser.exit(
            2,
            f"{parser.prog}: --cookie is refused with --join: a command line is readable by "
            "every user of this host; give the cookie in PYDIST_COOKIE, a file named by "
            "--cookie-file, or on standard input\n",
        )
    _apply_sys_path()
    _raise_fd_limit()
    try:
        cookie = _cookie(args)
        if cookie is None:
            cookie = _stdin_cookie()
    except OSError as e:
        parser.error(f"cannot read the cookie: {e}")
    os.environ.pop("PYDIST_COOKIE", None)  # not for the processes this worker starts
    from pydistributed.joinworker import join_master

    try:
        join_master(args.join, cookie, bind_to=args.bind_to)
    except ValueError as e:  # the address or the cookie is not a valid one
        parser.exit(2, f"{parser.prog}: {e}\n")


def _stdin_cookie() -> str:
    if sys.stdin is None:
        raise OSError("no cookie: no PYDIST_COOKIE, no --cookie-file and no standard input")
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("cluster cookie: ")
    line = sys.stdin.readline()
    if not line:
        raise OSError("no cookie: no PYDIST_COOKIE, no --cookie-file, and standard input is empty")
    return line.rstrip("\r\n")


if __name__ == "__main__":
    main()
