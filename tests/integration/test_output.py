"""Workers' output on the master, seen as a user sees it: real master scripts, their standard
output and error captured as pipes. Lines never tear: every line is a whole master line or a whole
``From worker N:\\t...`` line, also while the master writes its own lines in pieces and while a
pmap progress bar is shown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
T = 240.0

# Workers print until the master has written all its lines (the master tells them to stop
# once it has): the two always overlap, however the processes are scheduled.
_CHATTER = """
import sys
from pydistributed import Future, addprocs, remotecall, rmprocs

WORKER_STREAM = {wstream!r}
ROUNDS = {rounds}

def chatter(started, stop, stream):
    import sys
    out = sys.stdout if stream == "stdout" else sys.stderr
    n = 0
    while True:
        for _ in range(50):
            print("worker line", n, file=out)  # several writes: the relay joins them
            n += 1
        if n == 50:
            started.put(True)
        if stop.isready() or n >= 2_000_000:
            return n

ws = addprocs(2)
stop = Future()
starts = [Future() for _ in ws]
calls = [remotecall(chatter, w, s, stop, WORKER_STREAM) for w, s in zip(ws, starts)]
for s in starts:
    s.fetch()
for i in range(ROUNDS):
    print("master line", i, file=sys.{stream})  # "master line", " ", "<i>", "\\n": 4 writes
    sys.{stream}.write("part")
    sys.{stream}.write("ial ")
    sys.{stream}.write(f"{{i}}\\n")
    if i % 100 == 0:
        sys.{stream}.flush()  # the master's output reaches the pipe in between
stop.put(True)
counts = [c.fetch() for c in calls]
rmprocs(ws)
print("counts", *(f"{{w}}={{n}}" for w, n in zip(ws, counts)), file=sys.stderr, flush=True)
"""

_MASTER_LINE = re.compile(r"master line (\d+)|partial (\d+)")
_WORKER_LINE = re.compile(r"From worker (\d+):\tworker line (\d+)")


def _run(tmp_path: Path, source: str, one_pipe: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a master script, its stdout and stderr pipes (``one_pipe``: one)."""
    script = tmp_path / "master.py"
    script.write_text(source)
    proc = subprocess.run(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if one_pipe else subprocess.PIPE,
        text=True,
        timeout=T,
        cwd=REPO,
    )
    assert proc.returncode == 0, (proc.stderr or proc.stdout)[-3000:]
    return proc


def _run_bytes(
    tmp_path: Path, source: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``source`` as a master script (``env``: its environment), its output as bytes."""
    script = tmp_path / "master.py"
    script.write_text(source)
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, timeout=T, env=env, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _counts(stderr: str) -> dict[int, int]:
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("counts ")]
    return {int(w): int(n) for w, n in (kv.split("=") for kv in line.split()[1:])}


def _check_whole_lines(text: str, rounds: int, counts: dict[int, int]) -> None:
    """Every line whole; every master line there, in order; every worker line there, in order."""
    master: list[str] = []
    worker: dict[int, list[int]] = {w: [] for w in counts}
    torn = []
    for line in text.split("\n")[:-1]:
        if _MASTER_LINE.fullmatch(line):
            master.append(line)
        elif m := _WORKER_LINE.fullmatch(line):
            worker[int(m[1])].append(int(m[2]))
        elif not line.startswith("counts "):
            torn.append(line)
    assert not torn, f"{len(torn)} torn lines, the first: {torn[:3]!r}"
    assert text.endswith("\n")
    assert master == [x for i in range(rounds) for x in (f"master line {i}", f"partial {i}")]
    for w, n in counts.items():
        assert worker[w] == list(range(n)), f"worker {w}: lines lost or out of order"


def test_worker_lines_never_tear_into_the_master_s_own_lines_on_stdout(tmp_path: Path) -> None:
    rounds = 20_000
    proc = _run(tmp_path, _CHATTER.format(stream="stdout", wstream="stdout", rounds=rounds))
    _check_whole_lines(proc.stdout, rounds, _counts(proc.stderr))


def test_worker_lines_never_tear_into_the_master_s_own_lines_on_stderr(tmp_path: Path) -> None:
    rounds = 20_000
    proc = _run(tmp_path, _CHATTER.format(stream="stderr", wstream="stderr", rounds=rounds))
    _check_whole_lines(proc.stderr, rounds, _counts(proc.stderr))


def test_worker_stderr_lines_never_tear_into_master_stdout_lines_on_one_pipe(
    tmp_path: Path,
) -> None:
    # as on a terminal, or with 2>&1: the master's stdout is block-buffered and may reach the
    # pipe in the middle of a line; a worker's stderr line must not come in there
    rounds = 20_000
    source = _CHATTER.format(stream="stdout", wstream="stderr", rounds=rounds)
    proc = _run(tmp_path, source, one_pipe=True)
    _check_whole_lines(proc.stdout, rounds, _counts(proc.stdout))


_PROGRESS = """
import sys
from pydistributed import addprocs, pmap, rmprocs

def noisy(x):
    import sys
    for k in range(20):
        print(f"item {x} line {k}", file=sys.stderr)
    return x * x

ws = addprocs(2)
assert pmap(noisy, range(300), progress=True) == [x * x for x in range(300)]
rmprocs(ws)
"""


def test_worker_stderr_lines_and_the_progress_bar_never_share_a_line(tmp_path: Path) -> None:
    proc = _run(tmp_path, _PROGRESS)
    err = proc.stderr
    assert "pmap: 100%" in err  # the bar was shown
    seen = set()
    # a terminal shows what follows the last \r of a line: a worker line must start right
    # after a \n or a \r (tqdm.write clears the bar with one) and end with a \n
    for m in re.finditer(r"From worker (\d+):\t", err):
        start = m.start()
        before = err[start - 1] if start else "\n"
        end = err.index("\n", start)
        line = err[start:end]
        assert before in "\r\n", f"a worker line glued to {err[max(0, start - 80) : end]!r}"
        body = re.fullmatch(r"From worker \d+:\titem (\d+) line (\d+)", line)
        assert body, f"a torn worker line: {line!r}"
        seen.add((int(body[1]), int(body[2])))
    assert seen == {(x, k) for x in range(300) for k in range(20)}
    assert "From worker" not in proc.stdout


_PARTIAL = """
from pydistributed import addprocs, remotecall_fetch, rmprocs

def unfinished():
    import sys
    sys.stdout.write("the last words")
    sys.stdout.flush()
    sys.stderr.write("and the last complaint")
    sys.stderr.flush()

(w,) = addprocs(1)
remotecall_fetch(unfinished, w)
print("master done")
{end}
"""


def test_a_worker_s_unfinished_last_line_is_printed_whole_when_it_is_removed(
    tmp_path: Path,
) -> None:
    proc = _run(tmp_path, _PARTIAL.format(end="rmprocs(w)"))
    assert "From worker 2:\tthe last words\n" in proc.stdout
    assert "master done\n" in proc.stdout
    assert "From worker 2:\tand the last complaint\n" in proc.stderr


def test_a_worker_s_unfinished_last_line_is_printed_whole_when_the_master_exits(
    tmp_path: Path,
) -> None:
    proc = _run(tmp_path, _PARTIAL.format(end=""))
    assert "From worker 2:\tthe last words\n" in proc.stdout
    assert "From worker 2:\tand the last complaint\n" in proc.stderr


_ENCODINGS = """
import sys
from pydistributed import addprocs, remotecall_fetch, rmprocs

w = addprocs(1)[0]

def say():
    print("worker says caf\\u00e9")
    print("worker plain line")
    return True

remotecall_fetch(say, w)
rmprocs(w, waitfor=30)
print("master done")
"""


def test_a_worker_s_lines_reach_a_master_whose_stdout_is_latin_1(tmp_path: Path) -> None:
    """``PYTHONIOENCODING=latin-1`` in the master (and, inherited, in its workers): a worker's
    lines were all dropped without a word (its latin-1 bytes decoded as UTF-8 gave U+FFFD,
    which latin-1 cannot write, and the error was taken for a closed stream). They arrive now:
    ``café`` as latin-1 ``caf\\xe9``."""
    proc = _run_bytes(tmp_path, _ENCODINGS, {**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert b"From worker 2:\tworker says caf\xe9\n" in proc.stdout, proc.stdout
    assert b"From worker 2:\tworker plain line\n" in proc.stdout
    assert b"master done\n" in proc.stdout


_RECONFIGURED = """
import sys
from pydistributed import addprocs, remotecall_fetch, rmprocs

w = addprocs(1)[0]
sys.stdout.reconfigure(encoding="ascii")  # the master's own choice; its workers write UTF-8

def say():
    print("worker says caf\\u00e9 \\u2713")
    print("worker plain line")
    return True

remotecall_fetch(say, w)
rmprocs(w, waitfor=30)
print("master done")
"""


def test_a_worker_s_line_the_master_s_stdout_cannot_encode_is_escaped_not_dropped(
    tmp_path: Path,
) -> None:
    proc = _run_bytes(tmp_path, _RECONFIGURED)
    out = proc.stdout.decode("ascii")
    assert "From worker 2:\tworker says caf\\xe9 \\u2713\n" in out, out
    assert "From worker 2:\tworker plain line\n" in out
