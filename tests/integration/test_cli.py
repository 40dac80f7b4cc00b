"""The ``pydist`` command line, run as ``python -m pydistributed`` in real subprocesses.

Which workers a run started is known without timing: every test runs with a
``sitecustomize`` on ``PYTHONPATH`` (the workers inherit it) that records the OS pid of each
``python -m pydistributed.worker`` it runs in, before the worker does anything. A run that
must start no worker leaves no record; a run that starts workers must leave none of them alive
once the master has exited. Each test kills, by pid, any recorded worker still alive at its
end.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from pydistributed.managers.sshcommand import parse_machine_file

pytestmark = pytest.mark.timeout(300)

T = 120  # seconds: the bound of every blocking call

_SITECUSTOMIZE = """\
import os, sys
marks = os.environ.get("PYDIST_CLI_TEST_MARKS")
def mark():
    open(os.path.join(marks, str(os.getpid())), "w").close()
if marks and "pydistributed.worker" in getattr(sys, "orig_argv", ()):
    mark()
if marks and "pydistributed.forkserver" in getattr(sys, "orig_argv", ()):
    os.register_at_fork(after_in_child=mark)  # its every child is a worker
"""


def _alive(pid: int) -> bool:
    """``pid`` runs (a zombie does not: its exit was not yet collected)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: it answered the signal
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_worker(pid: int) -> bool:
    try:
        return b"pydistributed.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _alive(pid)


@dataclass
class Run:
    """A finished ``pydist`` run and the workers it started."""

    returncode: int
    stdout: str
    stderr: str
    workers: list[int]  # OS pids of the worker processes it started


class Pydist:
    """Runs ``python -m pydistributed`` with the worker hook; ends what it started."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        hook = tmp / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.marks = tmp / "marks"
        self.marks.mkdir()
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p
        )
        self.env["PYDIST_CLI_TEST_MARKS"] = str(self.marks)
        self.env.pop("PYTHONSAFEPATH", None)
        self.popens: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pydistributed", *args]

    def started(self) -> list[int]:
        """OS pids of every worker started so far, by any run of this test."""
        return sorted(int(p.name) for p in self.marks.iterdir())

    def run(self, *args: str, input: str | None = None, cwd: Path | None = None) -> Run:
        before = set(self.started())
        proc = subprocess.run(
            self.argv(*args),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=T,
            cwd=cwd or self.tmp,
            env=self.env,
        )
        new = [p for p in self.started() if p not in before]
        return Run(proc.returncode, proc.stdout, proc.stderr, new)

    def popen(self, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
        """Start a run; its stdout comes line by line through the queue ("" at its end)."""
        p = subprocess.Popen(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tmp,
            env=self.env,
        )
        self.popens.append(p)
        lines: queue.Queue[str] = queue.Queue()

        def read() -> None:
            assert p.stdout is not None
            for line in p.stdout:
                lines.put(line)
            lines.put("")

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.readers.append(reader)
        return p, lines

    def end(self) -> None:
        for p in self.popens:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=T)
        for t in self.readers:
            t.join(timeout=T)
        for p in self.popens:
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for pid in self.started():
            if _alive(pid) and _is_worker(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def pydist(tmp_path: Path) -> Iterator[Pydist]:
    p = Pydist(tmp_path)
    try:
        yield p
    finally:
        p.end()


def assert_all_ended(run: Run, n: int) -> None:
    """The run started ``n`` workers, and none is left running."""
    assert len(run.workers) == n, (run.workers, run.stderr)
    assert [pid for pid in run.workers if _alive(pid)] == [], "workers left running"


def assert_no_pydist_frames(stderr: str) -> None:
    """A traceback with the program's frames only: none of pydist's, runpy's or importlib's."""
    files = re.findall(r'^  File "([^"]+)"', stderr, re.M)
    assert files, stderr
    for f in files:
        assert "pydistributed" not in f and "runpy" not in f and "importlib" not in f, stderr


SHOW = (
    "import os, sys\n"
    "from pydistributed import remotecall_fetch, workers\n"
    "def where():\n"  # defined here: shipped to the worker by value
    "    return os.getpid()\n"
    "print('argv', sys.argv)\n"
    "print('name', __name__)\n"
    "print('workers', len(workers()), len({remotecall_fetch(where, w) for w in workers()}))\n"
)


# -- help and version -----------------------------------------------------------------------


def test_help_describes_every_option_and_gives_an_example(pydist: Pydist) -> None:
    r = pydist.run("--help")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("usage: pydist ")
    for option in ("-h, --help", "--version", "-p N|auto, --procs N|auto", "--machine-file FILE"):
        assert re.search(rf"^  {re.escape(option)}\s+\S", out, re.M), option
    for program in ("-c CODE", "-m MODULE", "SCRIPT", "ARGS"):
        assert re.search(rf"^  {re.escape(program)}\s+\S", out, re.M), program
    assert "'-' reads the program from" in out.replace("\n", " ").replace("  ", " ")
    assert "examples:" in out and "pydist -p 2 examples/hello.py" in out
    assert "exit status:" in out
    assert r.workers == []

    from pydistributed.cli import _parser

    for action in _parser()._actions:
        assert action.help, f"no description for {action.option_strings or action.dest}"


def test_version_prints_the_installed_version(pydist: Pydist) -> None:
    r = pydist.run("--version")
    assert (r.returncode, r.stdout, r.stderr) == (
        0,
        f"pydist {metadata.version('pydistributed')}\n",
        "",
    )
    assert r.workers == []


def test_a_bad_option_is_refused_with_the_usage(pydist: Pydist) -> None:
    for args in (["-p", "x", "s.py"], ["-x", "s.py"], ["-c"], ["-p"]):
        r = pydist.run(*args)
        assert r.returncode == 2, args
        assert r.stderr.startswith("usage: pydist "), r.stderr
        assert "pydist: error: " in r.stderr
        assert r.workers == []


# -- what runs, with which sys.argv ----------------------------------------------------------


def test_a_script_runs_as_main_with_its_args_and_its_folder_first_on_the_path(
    pydist: Pydist,
) -> None:
    folder = pydist.tmp / "app"
    folder.mkdir()
    (folder / "helper.py").write_text("VALUE = 42\n")
    script = folder / "job.py"
    script.write_text(SHOW + "import helper\nprint('path0', sys.path[0], helper.VALUE)\n")
    # run from tmp: its folder, not the current one, is on sys.path (as with python)
    r = pydist.run("-p", "2", "app/job.py", "--size", "10", "-p", "3")
    assert r.returncode == 0, r.stderr
    assert "argv ['app/job.py', '--size', '10', '-p', '3']\n" in r.stdout
    assert "name __main__\n" in r.stdout
    assert "workers 2 2\n" in r.stdout
    assert f"path0 {os.path.realpath(folder)} 42\n" in r.stdout
    assert_all_ended(r, 2)


def test_dash_c_runs_code_with_argv0_dash_c_and_ends_the_options(pydist: Pydist) -> None:
    r = pydist.run("-p", "2", "-c", SHOW, "a", "-p", "3")
    assert r.returncode == 0, r.stderr
    assert "argv ['-c', 'a', '-p', '3']\n" in r.stdout
    assert "name __main__\n" in r.stdout
    assert "workers 2 2\n" in r.stdout
    assert_all_ended(r, 2)


def test_dash_c_does_not_inherit_pydists_future_imports(pydist: Pydist) -> None:
    r = pydist.run("-c", "def f(x: int): pass\nprint(f.__annotations__)")
    assert (r.returncode, r.stdout) == (0, "{'x': <class 'int'>}\n"), r.stderr


def test_dash_m_runs_a_module_as_main_with_its_file_as_argv0(pydist: Pydist) -> None:
    (pydist.tmp / "mymod.py").write_text(SHOW)
    pkg = pydist.tmp / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(SHOW)
    r = pydist.run("-p", "1", "-m", "mymod", "x", "-c", "y")
    assert r.returncode == 0, r.stderr
    assert f"argv [{str(pydist.tmp / 'mymod.py')!r}, 'x', '-c', 'y']\n" in r.stdout
    assert "name __main__\n" in r.stdout
    assert "workers 1 1\n" in r.stdout
    assert_all_ended(r, 1)
    r = pydist.run("-p", "1", "-m", "mypkg", "z")
    assert r.returncode == 0, r.stderr
    assert f"argv [{str(pkg / '__main__.py')!r}, 'z']\n" in r.stdout
    assert_all_ended(r, 1)


def test_dash_reads_the_program_from_stdin(pydist: Pydist) -> None:
    r = pydist.run("-p", "2", "-", "x", input=SHOW)
    assert r.returncode == 0, r.stderr
    assert "argv ['-', 'x']\n" in r.stdout
    assert "workers 2 2\n" in r.stdout
    assert_all_ended(r, 2)
    # without a program and with a pipe for stdin, python reads the program from it too
    r = pydist.run("-p", "1", input=SHOW)
    assert r.returncode == 0, r.stderr
    assert "argv ['-']\n" in r.stdout
    assert_all_ended(r, 1)


# -- refused before any worker starts --------------------------------------------------------


def test_a_missing_script_is_refused_before_any_worker_starts(pydist: Pydist) -> None:
    r = pydist.run("-p", "2", "nope.py", "arg")
    assert r.returncode == 2
    assert r.stderr == "pydist: can't open file 'nope.py': [Errno 2] No such file or directory\n"
    assert r.stdout == ""
    assert r.workers == []
    # the check above would pass if the hook never fired: it does, for a run that starts one
    assert_all_ended(pydist.run("-p", "1", "-c", "pass"), 1)


def test_a_module_not_found_and_a_syntax_error_are_refused_before_any_worker_starts(
    pydist: Pydist,
) -> None:
    r = pydist.run("-p", "2", "-m", "no_such_module_here")
    assert (r.returncode, r.stderr) == (1, "pydist: No module named no_such_module_here\n")
    assert r.workers == []

    bad = pydist.tmp / "bad.py"
    bad.write_text("print('ran')\ndef (:\n")
    for args in (["bad.py"], ["-c", "def (:"]):
        r = pydist.run("-p", "2", *args)
        assert r.returncode == 1, r.stderr
        assert "SyntaxError" in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert r.stdout == ""
        assert r.workers == []

    empty = pydist.tmp / "empty"
    empty.mkdir()
    r = pydist.run("-p", "2", "empty")
    assert (r.returncode, r.stderr) == (1, "pydist: can't find '__main__' module in 'empty'\n")
    assert r.workers == []


def test_a_malformed_machine_file_is_refused_and_nothing_runs(pydist: Pydist) -> None:
    marker = pydist.tmp / "ran"
    (pydist.tmp / "hosts").write_text("# two hosts\n\n2*localhost\n3x*otherhost\n")
    (pydist.tmp / "s.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    for args in (["--machine-file", "hosts", "s.py"], ["-p", "1", "--machine-file=hosts", "s.py"]):
        r = pydist.run(*args)
        assert r.returncode == 2, r.stderr
        assert "machine file 'hosts', line 4: '3x*otherhost'" in r.stderr
        assert "positive integer" in r.stderr
        assert "Traceback" not in r.stderr
        assert not marker.exists()
        assert r.workers == []
    r = pydist.run("--machine-file", "nosuchfile", "s.py")
    assert r.returncode == 2 and "can't open machine file 'nosuchfile'" in r.stderr
    assert not marker.exists() and r.workers == []


def test_a_machine_file_count_may_be_auto_as_in_julia(pydist: Pydist) -> None:
    assert parse_machine_file(
        "# c\n\nauto*alice@h1  # all its CPUs\n2*h2\n auto * h3 10.0.0.2\n", "f"
    ) == [
        ("alice@h1", "auto"),
        ("h2", 2),
        ("h3 10.0.0.2", "auto"),
    ]
    with pytest.raises(ValueError, match=r"^f, line 2: 'auto\*h:x': invalid machine spec"):
        parse_machine_file("h\nauto*h:x\n", "f")
    with pytest.raises(ValueError, match=r"^f, line 2: 'autos\*h': the count before '\*'"):
        parse_machine_file("h\nautos*h\n", "f")
    # run: read as (host, "auto"), so addprocs asks the host for its CPU count (which fails here)
    marker = pydist.tmp / "ran"
    (pydist.tmp / "hosts").write_text("auto*pydist-test.invalid\n")
    (pydist.tmp / "s.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    r = pydist.run("--machine-file", "hosts", "s.py")
    assert r.returncode == 1, r.stderr
    assert "the workers could not start" in r.stderr
    assert "pydist-test.invalid: counting its CPUs (count 'auto')" in r.stderr
    assert not marker.exists() and r.workers == []


# -- how the program ends is how pydist ends -------------------------------------------------


def test_an_error_in_the_script_shows_its_frames_only(pydist: Pydist) -> None:
    (pydist.tmp / "boom.py").write_text(
        "from pydistributed import workers\n"
        "print(len(workers()), flush=True)\n"
        "def f():\n"
        "    raise ValueError('boom in the script')\n"
        "f()\n"
    )
    r = pydist.run("-p", "2", "boom.py")
    assert r.returncode == 1
    assert r.stdout == "2\n"
    assert r.stderr.startswith('Traceback (most recent call last):\n  File "boom.py", line 5')
    assert r.stderr.endswith("ValueError: boom in the script\n"), r.stderr
    assert_no_pydist_frames(r.stderr)
    assert re.findall(r'^  File "([^"]+)", line (\d+)', r.stderr, re.M) == [
        ("boom.py", "5"),
        ("boom.py", "4"),
    ]
    assert_all_ended(r, 2)

    (pydist.tmp / "boommod.py").write_text("raise KeyError('from a module')\n")
    for args in (["-m", "boommod"], ["-c", "raise KeyError('from a module')"]):
        r = pydist.run("-p", "1", *args)
        assert r.returncode == 1
        assert r.stderr.startswith("Traceback (most recent call last):\n"), r.stderr
        assert r.stderr.endswith("KeyError: 'from a module'\n"), r.stderr
        assert_no_pydist_frames(r.stderr)
        assert_all_ended(r, 1)


@pytest.mark.parametrize(
    ("code", "status", "stderr"),
    [
        ("sys.exit(3)", 3, ""),
        ("sys.exit('the message')", 1, "the message\n"),
        ("sys.exit()", 0, ""),
        ("raise SystemExit(0)", 0, ""),
        ("pass", 0, ""),
    ],
)
def test_the_scripts_exit_status_is_pydists(
    pydist: Pydist, code: str, status: int, stderr: str
) -> None:
    (pydist.tmp / "s.py").write_text(
        f"import sys\nfrom pydistributed import workers\nprint(len(workers()))\n{code}\n"
    )
    r = pydist.run("-p", "2", "s.py")
    assert (r.returncode, r.stdout, r.stderr) == (status, "2\n", stderr)
    assert_all_ended(r, 2)


def test_keyboard_interrupt_exits_130_after_removing_the_workers(pydist: Pydist) -> None:
    r = pydist.run("-p", "2", "-c", SHOW + "raise KeyboardInterrupt")
    assert r.returncode == 130
    assert "workers 2 2\n" in r.stdout
    assert r.stderr.startswith("Traceback (most recent call last):\n"), r.stderr
    assert r.stderr.endswith("KeyboardInterrupt\n"), r.stderr
    assert_no_pydist_frames(r.stderr)
    assert_all_ended(r, 2)


def test_ctrl_c_in_the_script_exits_130_after_removing_the_workers(pydist: Pydist) -> None:
    (pydist.tmp / "wait.py").write_text(
        SHOW + "import time\nprint('ready', flush=True)\ntime.sleep(600)\n"
    )
    proc, out = pydist.popen("-p", "2", "wait.py")
    lines = [out.get(timeout=T) for _ in range(4)]
    assert lines[2:] == ["workers 2 2\n", "ready\n"], lines
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=T) == 130
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert err.startswith('Traceback (most recent call last):\n  File "wait.py"'), err
    assert err.endswith("KeyboardInterrupt\n"), err
    assert_no_pydist_frames(err)
    workers = pydist.started()
    assert len(workers) == 2
    assert [pid for pid in workers if _alive(pid)] == []
