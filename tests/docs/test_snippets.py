"""Every ```python block of README.md and docs/*.md runs as shown and prints what the page says.

The conventions, for whoever writes the docs:

- A ```python block is a complete program: imports included, nothing carried over from an
  earlier block. It is written to a file and run with ``python FILE`` in a fresh process (the
  working directory a temporary one, the tree's ``src`` first on ``PYTHONPATH``), and must exit
  with status 0, write nothing to standard error, and leave no worker behind (a process that
  inherited the snippet's environment and is still alive shortly after it exited).
- **Its output** is the ```text block that follows it (only blank lines between). Standard output
  must equal that block, line by line, with runs of whitespace compared as one space (so the
  tab in ``From worker 2:<TAB>hello`` may be written as a space). A block with no ```text block
  after it must print nothing. Comments in the code (``# 1024``) are for the reader; only the
  ```text block is checked.
- **Directives** are HTML comments on the last non-blank line before the ```python block (they
  do not show when the page is rendered):

  - ``<!-- snippet: skip (REASON) -->``: not run; the test is reported as skipped with REASON.
    For what cannot run here (SSH hosts) or a fragment the prose explains. Keep them rare.
  - ``<!-- snippet: unordered -->``: the output lines may come in any order (lines that
    workers print, relayed as ``From worker N:``, arrive in the order the workers ran).

- ```sh, ```julia and plain ``` blocks are not run. A ```text block anywhere but after a
  ```python block, or an unknown directive, fails ``test_the_pages_follow_the_conventions``.

Each block is one test, named ``PAGE:LINE`` (the line of its opening fence), e.g.
``docs/pmap.md:33``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 60.0  # seconds per snippet; each takes one or two
MARKER = "PYDIST_DOCS_SNIPPET"  # in the snippet's environment, so in its workers' too

pytestmark = pytest.mark.timeout(TIMEOUT + 30)

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(.*?)\s*-->\s*$")
_SKIP = re.compile(r"^skip \((.+)\)$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    directive: str | None  # the snippet directive just before it, if any
    directive_line: int | None  # its 1-based line
    follows_directly: bool  # only blank lines between the previous block's end and this one


@dataclass(frozen=True)
class Snippet:
    block: Block
    expected: str | None  # the ```text block after it; None: it prints nothing

    @property
    def id(self) -> str:
        return f"{self.block.page}:{self.block.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, in order."""
    lines = page.read_text(encoding="utf-8").splitlines()
    rel = page.relative_to(ROOT).as_posix()
    found: list[Block] = []
    prev_end = None  # 0-based line of the previous block's closing fence
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{rel}:{start + 1}: unclosed ``` block")
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        d = _DIRECTIVE.match(lines[k]) if k >= 0 else None
        text = "\n".join(body) + "\n"
        follows = prev_end is not None and all(not ln.strip() for ln in lines[prev_end + 1 : start])
        found.append(
            Block(
                page=rel,
                line=start + 1,
                lang=lang,
                text=text,
                directive=d.group(1) if d else None,
                directive_line=k + 1 if d else None,
                follows_directly=follows,
            )
        )
        prev_end = i
        i += 1
    return found


def snippets() -> list[Snippet]:
    out: list[Snippet] = []
    for page in PAGES:
        bs = blocks(page)
        for n, b in enumerate(bs):
            if b.lang != "python":
                continue
            nxt = bs[n + 1] if n + 1 < len(bs) else None
            expected = None
            if nxt is not None and nxt.lang == "text" and nxt.follows_directly:
                expected = nxt.text
            out.append(Snippet(b, expected))
    return out


SNIPPETS = snippets()


def _normalized(text: str) -> list[str]:
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _marked_processes(marker: str) -> list[int]:
    """OS pids of live processes whose environment holds ``MARKER=marker``."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0") and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


def _leftovers(marker: str, grace: float = 5.0) -> list[int]:
    """The snippet's processes still alive after ``grace`` seconds; killed before returning."""
    deadline = time.monotonic() + grace
    while True:
        alive = _marked_processes(marker)
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return alive


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit status {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def _ran(returncode: int, out: IO[bytes], err: IO[bytes]) -> Ran:
    out.seek(0)
    err.seek(0)
    return Ran(returncode, *(f.read().decode("utf-8", "replace") for f in (out, err)))


def run_snippet(code: str, workdir: Path) -> Ran:
    """Run ``code`` as a file in a fresh interpreter; kill it (and its workers) on timeout.

    Fails if it times out, or if a process started from it is still alive once it has exited.
    """
    script = workdir / "snippet.py"
    script.write_text(code, encoding="utf-8")
    marker = uuid.uuid4().hex
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env[MARKER] = marker
    env.pop("PYTHONWARNINGS", None)
    # Output to files, not pipes: a process left behind holding a pipe would hide the exit.
    with open(workdir / "stdout", "w+b") as out, open(workdir / "stderr", "w+b") as err:
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, to kill it whole on timeout
        )
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _leftovers(marker, grace=0)
            pytest.fail(f"timed out after {TIMEOUT} s\n{_ran(proc.returncode, out, err)}")
        left = _leftovers(marker)
        ran = _ran(proc.returncode, out, err)
    assert not left, f"processes left behind after the snippet exited (killed now): {left}\n{ran}"
    return ran


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet(snippet: Snippet, tmp_path: Path) -> None:
    directive = snippet.block.directive
    skip = _SKIP.match(directive) if directive else None
    if skip:
        pytest.skip(f"{snippet.id}: {skip.group(1)}")
    ran = run_snippet(snippet.block.text, tmp_path)
    assert ran.returncode == 0, str(ran)
    assert ran.stderr == "", f"the snippet wrote to standard error\n{ran}"
    got = _normalized(ran.stdout)
    want = _normalized(snippet.expected or "")
    if directive == "unordered":
        got, want = sorted(got), sorted(want)
    assert got == want, f"the output differs from the page's ```text block\n{ran}"


def test_the_pages_follow_the_conventions() -> None:
    """Directives are known and precede a python block; ```text blocks follow one."""
    problems = []
    for page in PAGES:
        bs = blocks(page)
        for n, b in enumerate(bs):
            where = f"{b.page}:{b.line}"
            if b.directive is not None:
                if b.lang != "python":
                    problems.append(f"{where}: a snippet directive before a {b.lang!r} block")
                elif b.directive != "unordered" and not _SKIP.match(b.directive):
                    problems.append(f"{where}: unknown directive {b.directive!r}")
            if b.lang == "text":
                prev = bs[n - 1] if n else None
                if prev is None or prev.lang != "python" or not b.follows_directly:
                    problems.append(f"{where}: a ```text block that does not follow a python one")
        attached = {b.directive_line for b in bs}
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"<!--\s*snippet:", text):
            line = text.count("\n", 0, m.start()) + 1
            if line not in attached:
                problems.append(f"{page.relative_to(ROOT)}:{line}: a directive before no block")
    assert not problems, "\n".join(problems)
    assert len(SNIPPETS) >= 20  # the parser found the pages' snippets
