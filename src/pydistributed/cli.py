"""``pydist``: python with workers already added, as ``julia -p N`` is julia with workers.

``pydist [-p N|auto] [-c CODE | -m MODULE | SCRIPT | -] [ARGS...]`` adds ``N`` local workers,
then runs the program as ``python`` would: as ``__main__``, with ``sys.argv`` and ``sys.path[0]``
set as python sets them. The first of ``-c``, ``-m``, ``-`` or ``SCRIPT`` ends pydist's own
options; everything after it is the program's. Without a program, the program is read from
standard input, or an interactive prompt opens when that is a terminal.

``--machine-file FILE`` adds workers over ssh, as Julia's does: one line per host,
``[count*][user@]host[:port] [bind_addr[:port]]`` (``#`` starts a comment; blank lines are
ignored), after the ``-p`` local workers when both are given.

Everything that can be refused is refused before a worker starts: a bad command line, a
script or a machine file that cannot be opened, a malformed machine-file line (status 2), a
module that cannot be found and a syntax error (status 1).

The exit status is the program's, as with python: ``sys.exit(N)`` gives ``N``,
``sys.exit("message")`` prints the message and gives 1, an uncaught exception prints the
program's own frames (none of pydist's or runpy's) and gives 1, ``KeyboardInterrupt`` gives
130. The workers are removed when the program ends, however it ends: the cluster's exit
handler removes them as the interpreter exits, after any threads the program left running
(as python waits for them); a worker whose master is gone exits on its own.
"""

from __future__ import annotations

import argparse
import code
import contextlib
import os
import runpy
import sys
import types
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.util import MAGIC_NUMBER
from typing import Any, NoReturn

__all__ = ["main"]

# pydist's options that take a value (as a separate argument: `-p 2`; `-p2`, `--procs=2` are
# one argument)
_VALUED = ("-p", "--procs", "--machine-file")

_USAGE = (
    "pydist [-h] [--version] [-p N|auto] [--machine-file FILE]\n"
    "              [-c CODE | -m MODULE | SCRIPT | -] [ARGS ...]"
)

_DESCRIPTION = """\
Python with pydistributed workers already added, as `julia -p N` is Julia with workers:
pydist adds the workers, then runs the program as python would (as __main__, with ARGS in
sys.argv[1:]). Without a program, it reads one from standard input, or opens an interactive
prompt when that is a terminal. The workers are removed when the program ends, however it
ends."""

_EPILOG = """\
exit status:
  the program's, as with python: 0 when it ends; N for sys.exit(N); 1 for an uncaught
  exception (its traceback is printed) or sys.exit("message") (the message is printed);
  130 for KeyboardInterrupt (Ctrl-C). pydist's own: 2 for a bad command line, a script or
  machine file that cannot be opened or a malformed machine-file line; 1 for a module not
  found, a syntax error or workers that could not start. Nothing runs and no worker starts
  when pydist refuses.

examples:
  pydist -p 2 examples/hello.py       two local workers, then the script
  pydist -p auto job.py --size 10     a worker per CPU; sys.argv is ['job.py', '--size', '10']
  pydist -p 2 -c 'from pydistributed import workers; print(workers())'
  pydist -p 2 -m mypackage.tool       run a module, as python -m does
  echo 'print(1 + 1)' | pydist -p 1 -
  pydist --machine-file hosts job.py   workers over ssh, as listed in the file hosts
"""


class _UsageError(Exception):
    """A command line pydist cannot take (status 2, with the usage)."""


class _NoModule(Exception):
    """``-m MODULE``: the module cannot be found (runpy's message, status 1)."""


@dataclass
class _Program:
    """What to run: ``kind`` is "script", "code" (-c), "module" (-m), "stdin" or "prompt"."""

    kind: str
    target: str = ""
    args: list[str] = field(default_factory=list)


def _nprocs(value: str) -> int:
    if value == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-p takes a number or 'auto', not {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError("-p takes a non-negative number")
    return n


def _version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("pydistributed")
    except metadata.PackageNotFoundError:
        import pydistributed

        return str(getattr(pydistributed, "__version__", "unknown"))


class _VersionAction(argparse.Action):
    """``--version``: print ``pydist <version>`` and exit (the version is looked up then)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> NoReturn:
        print(f"pydist {_version()}")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pydist",
        usage=_USAGE,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        add_help=False,
    )
    opts = parser.add_argument_group("options")
    opts.add_argument("-h", "--help", action="help", help="show this help and exit")
    opts.add_argument("--version", action=_VersionAction, help="print pydist's version and exit")
    opts.add_argument(
        "-p",
        "--procs",
        type=_nprocs,
        default=None,
        metavar="N|auto",
        help="add N local worker processes before the program runs (auto: one per CPU, "
        "os.cpu_count()); without -p, no worker is added (the program may add its own)",
    )
    opts.add_argument(
        "--machine-file",
        default=None,
        metavar="FILE",
        help="add workers over ssh, as Julia's --machine-file: one line of FILE per host, "
        "[count*][user@]host[:port] [bind_addr[:port]] ('#' starts a comment); with -p, "
        "after the local workers. The hosts need the same Python at the same path, with "
        "pydistributed, and ssh logins without a password (keys, ~/.ssh/config)",
    )
    # Shown in the help only: main() takes the program off the command line itself, since the
    # first of these ends pydist's options, as in python.
    prog = parser.add_argument_group(
        "program (the first of these ends pydist's options, as in python; what follows is ARGS)"
    )
    prog.add_argument(
        "-c",
        metavar="CODE",
        dest="_code",
        help="run the Python statements CODE (sys.argv[0] is '-c')",
    )
    prog.add_argument(
        "-m",
        metavar="MODULE",
        dest="_module",
        help="run library module MODULE as __main__, as python -m does (sys.argv[0] is the "
        "module's file; a package runs its __main__ submodule)",
    )
    prog.add_argument(
        "script",
        nargs="?",
        metavar="SCRIPT",
        default=argparse.SUPPRESS,
        help="run the Python file SCRIPT (or a directory or zip file with a __main__.py); "
        "sys.argv[0] is SCRIPT and its directory is sys.path[0]. '-' reads the program from "
        "standard input (sys.argv[0] is '-')",
    )
    prog.add_argument(
        "args",
        nargs="*",
        metavar="ARGS",
        default=argparse.SUPPRESS,
        help="the program's arguments, in sys.argv[1:]",
    )
    return parser


def _split(argv: list[str]) -> tuple[list[str], _Program]:
    """pydist's own options, and the program: the first -c, -m, - or non-option and the rest."""
    own: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rest = argv[i + 1 :]
            if not rest:
                break
            kind = "stdin" if rest[0] == "-" else "script"
            return own, _Program(kind, rest[0], rest[1:])
        if a == "-":
            return own, _Program("stdin", "-", argv[i + 1 :])
        if a[:2] in ("-c", "-m"):
            kind = "code" if a[1] == "c" else "module"
            if len(a) > 2:  # -cCODE, as python takes it
                return own, _Program(kind, a[2:], argv[i + 1 :])
            if i + 1 == len(argv):
                raise _UsageError(f"argument {a}: expected one argument")
            return own, _Program(kind, argv[i + 1], argv[i + 2 :])
        if not a.startswith("-"):
            return own, _Program("script", a, argv[i + 1 :])
        own.append(a)
        if a in _VALUED and i + 1 < len(argv):
            own.append(argv[i + 1])
            i += 1
        i += 1
    return own, _Program("prompt")


def _flush_stdout() -> None:
    """What the program printed comes before what pydist prints about its end."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):  # closed, or a broken pipe: python says nothing either
        pass


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _set_path(program: _Program, replace: bool) -> None:
    """``sys.path[0]`` as python sets it for the program (before workers copy ``sys.path``).

    ``replace``: pydist runs as a program, so ``sys.path[0]`` is the entry python set for
    pydist itself (its own directory, or the current one under ``python -m``), which the user's
    program must not see; none when python set none (``-I``, ``-P``).
    """
    if program.kind == "script":
        path = program.target
        if not (os.path.isdir(path) or zipfile.is_zipfile(path)):
            path = os.path.dirname(os.path.realpath(path))
    elif program.kind == "module":
        path = os.getcwd()
    else:
        path = ""
    if not replace:
        sys.path.insert(0, path)
    elif not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
        sys.path[0] = path


def _is_internal(frame: types.FrameType) -> bool:
    """A frame of pydist's or of the machinery that runs the program (runpy, importlib)."""
    g = frame.f_globals
    return (
        g is globals()
        or g is vars(runpy)
        or g.get("__name__")
        in ("importlib", "importlib._bootstrap", "importlib._bootstrap_external")
    )


def _report(e: BaseException) -> None:
    """Print ``e`` as python prints an uncaught exception, without pydist's leading frames."""
    tb = e.__traceback__
    while tb is not None and _is_internal(tb.tb_frame):
        tb = tb.tb_next
    # a Ctrl-C that landed in a write of the program's, inside the wrapper that keeps worker
    # lines whole (linestreams.py): it landed in the program's write, for all it can tell
    cur, prev = tb, None
    while cur is not None:
        if cur.tb_frame.f_globals.get("__name__") == "pydistributed.linestreams":
            if prev is not None:
                prev.tb_next = None
            break
        cur, prev = cur.tb_next, cur
    _flush_stdout()
    sys.excepthook(type(e), e.with_traceback(tb), tb)


def _exit_status(code: object) -> int:
    """The status python gives for ``SystemExit(code)``; a message is printed, as python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _flush_stdout()
    _say(str(code))
    return 1


class _Refused(Exception):
    """The program cannot run: ``status``, with the message already printed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _compile(source: bytes | str, filename: str) -> types.CodeType:
    """Compile the program now, so that a syntax error is reported before workers start."""
    try:
        # dont_inherit: not this module's `from __future__ import annotations`
        return compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes, before 3.12
        _report(e)
        raise _Refused(1) from None


def _has_main(path: str) -> bool:
    """A directory or zip file that python can run: it holds a ``__main__`` module."""
    names = ("__main__.py", "__main__.pyc")
    if os.path.isdir(path):
        return any(os.path.isfile(os.path.join(path, n)) for n in names)
    try:
        with zipfile.ZipFile(path) as z:
            return any(n in z.namelist() for n in names)
    except (OSError, zipfile.BadZipFile):
        return False


@contextlib.contextmanager
def _as_main(main: types.ModuleType) -> Iterator[dict[str, Any]]:
    """``main`` is ``sys.modules["__main__"]`` meanwhile (as runpy does); its namespace."""
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        yield main.__dict__
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved


def _exec_as_main(compiled: types.CodeType, file: str | None = None) -> None:
    """Run ``compiled`` in a fresh ``__main__`` module (``__file__``: ``file``, if given)."""
    main = types.ModuleType("__main__")
    if file is not None:
        main.__file__ = file
        main.__cached__ = None  # type: ignore[attr-defined]
    with _as_main(main) as namespace:
        exec(compiled, namespace)


def _prompt() -> None:
    """The interactive prompt, in a fresh ``__main__`` (so ``everywhere`` defines names there)."""
    try:
        import readline  # noqa: F401  (line editing for input(), as python's prompt has)
    except ImportError:
        pass
    from pydistributed import workers

    ws = workers()
    which = f"workers {ws}" if ws != [1] else "no workers"
    banner = (
        f"Python {sys.version} on {sys.platform}\n"
        f"pydist {_version()}: process 1 with {which}. Ctrl-D to exit."
    )
    with _as_main(types.ModuleType("__main__")) as namespace:
        code.interact(banner=banner, local=namespace, exitmsg="")


def _prepare(program: _Program) -> Callable[[], object]:
    """Check the program and read it, before any worker starts; what runs it.

    Raises:
        _Refused: it cannot run (the reason printed).
    """
    kind, target = program.kind, program.target
    if kind == "code":
        sys.argv = ["-c", *program.args]
        compiled = _compile(target, "<string>")
        return lambda: _exec_as_main(compiled)
    if kind == "stdin":
        sys.argv = ["-", *program.args]
        source = sys.stdin.buffer.read() if sys.stdin is not None else b""
        compiled = _compile(source, "<stdin>")
        return lambda: _exec_as_main(compiled)
    if kind == "module":
        try:
            runpy._get_module_details(target, _NoModule)  # type: ignore[attr-defined]
        except _NoModule as e:  # python -m's own check, and message
            _say(f"pydist: {e}")
            raise _Refused(1) from None
        except Exception as e:  # the module's package failed to import
            _report(e)
            raise _Refused(1) from None
        sys.argv = ["-m", *program.args]  # run_module sets argv[0] to the module's file
        return lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)
    if kind == "prompt":
        sys.argv = [""]
        return _prompt
    sys.argv = [target, *program.args]
    if os.path.isdir(target) or zipfile.is_zipfile(target):
        if not _has_main(target):
            _say(f"pydist: can't find '__main__' module in {target!r}")
            raise _Refused(1)
    else:
        try:
            with open(target, "rb") as f:
                source = f.read()
        except OSError as e:
            _say(f"pydist: can't open file {target!r}: [Errno {e.errno}] {e.strerror}")
            raise _Refused(2) from None
        if source[:4] != MAGIC_NUMBER and not target.endswith(".pyc"):
            # run what was read (once: a pipe such as /dev/stdin cannot be read again)
            compiled = _compile(source, target)
            return lambda: _exec_as_main(compiled, target)
    return lambda: runpy.run_path(target, run_name="__main__")


def _add_workers(what: int | list[tuple[str, int]], option: str) -> None:
    """``addprocs(what)`` (``-p N``, or the machine file's hosts); refused (status 1) if the
    workers cannot start."""
    from pydistributed import addprocs

    try:
        addprocs(what)
    except Exception as e:
        _say(f"pydist: {option}: the workers could not start: {type(e).__name__}: {e}")
        raise _Refused(1) from None


def _read_machine_file(path: str) -> list[tuple[str, int]]:
    """The machine file's ``[(spec, count)]``; refused (status 2) unreadable or malformed."""
    from pydistributed.managers.sshcommand import parse_machine_file

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = f"[Errno {e.errno}] {e.strerror}" if isinstance(e, OSError) else str(e)
        _say(f"pydist: can't open machine file {path!r}: {why}")
        raise _Refused(2) from None
    try:
        return parse_machine_file(text, f"machine file {path!r}")
    except ValueError as e:
        _say(f"pydist: --machine-file: {e}")
        raise _Refused(2) from None


def main(argv: list[str] | None = None) -> int:
    """Run ``pydist`` with ``argv`` (default: the command line); the exit status.

    Called with ``argv=None``, pydist is the program: ``sys.path[0]`` (python's entry for
    pydist itself) becomes the program's. Otherwise the program's entry is put before it.
    """
    parser = _parser()
    try:
        own, program = _split(sys.argv[1:] if argv is None else list(argv))
    except _UsageError as e:
        parser.error(str(e))
    ns = parser.parse_args(own)
    machines: list[tuple[str, int]] = []
    if ns.machine_file is not None:
        try:
            machines = _read_machine_file(ns.machine_file)
        except _Refused as e:
            return e.status
    if program.kind == "prompt" and not (sys.stdin is not None and sys.stdin.isatty()):
        program = _Program("stdin", "-")  # python reads a program from a pipe or a file
    _set_path(program, replace=argv is None)
    try:
        run = _prepare(program)
        if ns.procs:
            _add_workers(ns.procs, f"-p {ns.procs}")
        if ns.machine_file is not None and machines:  # an empty file adds nobody
            _add_workers(machines, f"--machine-file {ns.machine_file}")
        run()
    except _Refused as e:
        return e.status
    except SystemExit as e:
        return _exit_status(e.code)
    except KeyboardInterrupt as e:
        _report(e)
        return 130
    except BaseException as e:
        _report(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
