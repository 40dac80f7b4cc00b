"""The program ``pydist`` runs, found, checked and run as python would run it.

``prepare(program)`` checks the program and reads it before any worker starts (a script that
cannot be opened, a module that cannot be found, a syntax error: ``Refused``, with the reason
printed), and returns what runs it: as ``__main__``, with ``sys.argv`` set. ``report(e)``
prints an uncaught exception as python does, without pydist's own frames; ``exit_status``
is python's status for a ``SystemExit``. The command line itself is ``cli``'s.
"""

from __future__ import annotations

import code
import contextlib
import os
import runpy
import sys
import types
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.util import MAGIC_NUMBER
from typing import Any

__all__ = [
    "Program",
    "Refused",
    "exit_status",
    "flush_stdout",
    "prepare",
    "report",
    "say",
    "set_path",
    "version",
]


class _NoModule(Exception):
    """``-m MODULE``: the module cannot be found (runpy's message, status 1)."""


@dataclass
class Program:
    """What to run: ``kind`` is "script", "code" (-c), "module" (-m), "stdin" or "prompt"."""

    kind: str
    target: str = ""
    args: list[str] = field(default_factory=list)


def version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    from importlib import metadata

    try:
        return metadata.version("pydistributed")
    except metadata.PackageNotFoundError:
        import pydistributed

        return str(getattr(pydistributed, "__version__", "unknown"))


def flush_stdout() -> None:
    """What the program printed comes before what pydist prints about its end."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except (OSError, ValueError):  # closed, or a broken pipe: python says nothing either
        pass


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def set_path(program: Program, replace: bool) -> None:
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


# cli.py: its frames are pydist's too (its module may run as __main__: python -m ...cli)
_CLI_FILE = os.path.join(os.path.dirname(__file__), "cli.py")


def _is_internal(frame: types.FrameType) -> bool:
    """A frame of pydist's or of the machinery that runs the program (runpy, importlib)."""
    g = frame.f_globals
    return (
        g is globals()
        or g.get("__file__") == _CLI_FILE
        or g is vars(runpy)
        or g.get("__name__")
        in ("importlib", "importlib._bootstrap", "importlib._bootstrap_external")
    )


def report(e: BaseException) -> None:
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
    flush_stdout()
    sys.excepthook(type(e), e.with_traceback(tb), tb)


def exit_status(code: object) -> int:
    """The status python gives for ``SystemExit(code)``; a message is printed, as python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    flush_stdout()
    say(str(code))
    return 1


class Refused(Exception):
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
        report(e)
        raise Refused(1) from None


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
        f"pydist {version()}: process 1 with {which}. Ctrl-D to exit."
    )
    with _as_main(types.ModuleType("__main__")) as namespace:
        code.interact(banner=banner, local=namespace, exitmsg="")


def prepare(program: Program) -> Callable[[], object]:
    """Check the program and read it, before any worker starts; what runs it.

    Raises:
        Refused: it cannot run (the reason printed).
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
            say(f"pydist: {e}")
            raise Refused(1) from None
        except Exception as e:  # the module's package failed to import
            report(e)
            raise Refused(1) from None
        sys.argv = ["-m", *program.args]  # run_module sets argv[0] to the module's file
        return lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)
    if kind == "prompt":
        sys.argv = [""]
        return _prompt
    sys.argv = [target, *program.args]
    if os.path.isdir(target) or zipfile.is_zipfile(target):
        if not _has_main(target):
            say(f"pydist: can't find '__main__' module in {target!r}")
            raise Refused(1)
    else:
        try:
            with open(target, "rb") as f:
                source = f.read()
        except OSError as e:
            say(f"pydist: can't open file {target!r}: [Errno {e.errno}] {e.strerror}")
            raise Refused(2) from None
        if source[:4] != MAGIC_NUMBER and not target.endswith(".pyc"):
            # run what was read (once: a pipe such as /dev/stdin cannot be read again)
            compiled = _compile(source, target)
            return lambda: _exec_as_main(compiled, target)
    return lambda: runpy.run_path(target, run_name="__main__")
