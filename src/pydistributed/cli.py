"""``pydist``: python with workers already added, as ``julia -p N`` is julia with workers.

``pydist [-p N|auto] [-c CODE | -m MODULE | SCRIPT | -] [ARGS...]`` adds ``N`` local workers,
then runs the program as ``python`` would: as ``__main__``, with ``sys.argv`` and ``sys.path[0]``
set as python sets them. The first of ``-c``, ``-m``, ``-`` or ``SCRIPT`` ends pydist's own
options; everything after it is the program's. Without a program, the program is read from
standard input, or an interactive prompt opens when that is a terminal.

``--machine-file FILE`` adds workers over ssh, as Julia's does: one line per host,
``[count*][user@]host[:port] [bind_addr[:port]]`` (``#`` starts a comment; blank lines are
ignored; ``count`` is a positive integer, or ``auto``: one worker per CPU of that host, as
Julia's ``load_machine_file`` reads ``auto*host`` as ``(host, :auto)``), after the ``-p``
local workers when both are given.

``--slurm`` (in an ``sbatch`` script or an ``salloc`` shell) adds one worker per task of the
Slurm allocation (``SLURM_NTASKS``), as a step of it (``SlurmManager``); outside an allocation
it is refused (status 2).

Everything that can be refused is refused before a worker starts: a bad command line, a
script or a machine file that cannot be opened, a malformed machine-file line, ``--slurm``
outside an allocation (status 2), a
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
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .cliprogram import (
    Program,
    Refused,
    exit_status,
    prepare,
    report,
    say,
    set_path,
    version,
)

__all__ = ["main"]

# pydist's options that take a value (as a separate argument: `-p 2`; `-p2`, `--procs=2` are
# one argument)
_VALUED = ("-p", "--procs", "--machine-file")

_USAGE = (
    "pydist [-h] [--version] [-p N|auto] [--machine-file FILE] [--slurm]\n"
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
  machine file that cannot be opened, a malformed machine-file line or --slurm outside a
  Slurm allocation; 1 for a module not found, a syntax error or workers that could not
  start. Nothing runs and no worker starts when pydist refuses.

examples:
  pydist -p 2 examples/hello.py       two local workers, then the script
  pydist -p auto job.py --size 10     a worker per CPU; sys.argv is ['job.py', '--size', '10']
  pydist -p 2 -c 'from pydistributed import workers; print(workers())'
  pydist -p 2 -m mypackage.tool       run a module, as python -m does
  echo 'print(1 + 1)' | pydist -p 1 -
  pydist --machine-file hosts job.py   workers over ssh, as listed in the file hosts
  pydist --slurm job.py                in an sbatch script: a worker per task of the job
"""


class _UsageError(Exception):
    """A command line pydist cannot take (status 2, with the usage)."""


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


class _VersionAction(argparse.Action):
    """``--version``: print ``pydist <version>`` and exit (the version is looked up then)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> NoReturn:
        print(f"pydist {version()}")
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
        "[count*][user@]host[:port] [bind_addr[:port]] ('#' starts a comment; count may be "
        "auto: one per CPU of the host); with -p, "
        "after the local workers. The hosts need the same Python at the same path, with "
        "pydistributed, and ssh logins without a password (keys, ~/.ssh/config)",
    )
    opts.add_argument(
        "--slurm",
        action="store_true",
        help="inside a Slurm allocation (an sbatch script, an salloc shell): add one worker "
        "per task of the allocation (SLURM_NTASKS), started with srun as a step of it",
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


def _split(argv: list[str]) -> tuple[list[str], Program]:
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
            return own, Program(kind, rest[0], rest[1:])
        if a == "-":
            return own, Program("stdin", "-", argv[i + 1 :])
        if a[:2] in ("-c", "-m"):
            kind = "code" if a[1] == "c" else "module"
            if len(a) > 2:  # -cCODE, as python takes it
                return own, Program(kind, a[2:], argv[i + 1 :])
            if i + 1 == len(argv):
                raise _UsageError(f"argument {a}: expected one argument")
            return own, Program(kind, argv[i + 1], argv[i + 2 :])
        if not a.startswith("-"):
            return own, Program("script", a, argv[i + 1 :])
        own.append(a)
        if a in _VALUED and i + 1 < len(argv):
            own.append(argv[i + 1])
            i += 1
        i += 1
    return own, Program("prompt")


def _add_workers(what: Any, option: str) -> None:
    """``addprocs(what)`` (``-p N``, the machine file's hosts, or a ``SlurmManager``);
    refused (status 1) if the workers cannot start."""
    from pydistributed import addprocs

    try:
        addprocs(what)
    except Exception as e:
        say(f"pydist: {option}: the workers could not start: {type(e).__name__}: {e}")
        raise Refused(1) from None


def _read_machine_file(path: str) -> list[tuple[str, int | str]]:
    """The machine file's ``[(spec, count)]``; refused (status 2) unreadable or malformed."""
    from pydistributed.managers.sshcommand import parse_machine_file

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = f"[Errno {e.errno}] {e.strerror}" if isinstance(e, OSError) else str(e)
        say(f"pydist: can't open machine file {path!r}: {why}")
        raise Refused(2) from None
    try:
        return parse_machine_file(text, f"machine file {path!r}")
    except ValueError as e:
        say(f"pydist: --machine-file: {e}")
        raise Refused(2) from None


def _slurm_tasks() -> int:
    """``--slurm``: the number of tasks of the allocation this runs in; refused (status 2)
    outside one."""
    if not os.environ.get("SLURM_JOB_ID"):
        say(
            "pydist: --slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set): run "
            "pydist --slurm in an sbatch script or an salloc shell, or use "
            "addprocs(SlurmManager(n, ...)) to submit a job"
        )
        raise Refused(2)
    for var in ("SLURM_NTASKS", "SLURM_NPROCS", "SLURM_JOB_NUM_NODES"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    say("pydist: --slurm: the allocation does not say how many tasks it has (SLURM_NTASKS)")
    raise Refused(2)


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
    machines: list[tuple[str, int | str]] = []
    ntasks = 0
    try:
        if ns.machine_file is not None:
            machines = _read_machine_file(ns.machine_file)
        if ns.slurm:
            ntasks = _slurm_tasks()
    except Refused as e:
        return e.status
    if program.kind == "prompt" and not (sys.stdin is not None and sys.stdin.isatty()):
        program = Program("stdin", "-")  # python reads a program from a pipe or a file
    set_path(program, replace=argv is None)
    try:
        run = prepare(program)
        if ns.procs:
            _add_workers(ns.procs, f"-p {ns.procs}")
        if ns.machine_file is not None and machines:  # an empty file adds nobody
            _add_workers(machines, f"--machine-file {ns.machine_file}")
        if ntasks:
            from pydistributed.managers import SlurmManager

            _add_workers(SlurmManager(ntasks), "--slurm")
        run()
    except Refused as e:
        return e.status
    except SystemExit as e:
        return exit_status(e.code)
    except KeyboardInterrupt as e:
        report(e)
        return 130
    except BaseException as e:
        report(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
