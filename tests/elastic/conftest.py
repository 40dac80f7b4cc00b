"""Fixtures of the elastic tests: an ElasticManager on this (the master) process, and real
``python -m pydistributed.worker --join`` processes, each ended by its pid after the test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pydistributed import cluster_cookie, workers
from pydistributed.managers import ElasticManager
from tests.conftest import end_workers

SRC = str(Path(__file__).resolve().parents[2] / "src")


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a joining worker: this tree first on its path, no cookie."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYDIST_")}
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


class Joiner:
    """Starts joining workers; :meth:`end` kills every one still running, by pid."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self._n = 0

    def start(
        self,
        address: str,
        *,
        how: str = "env",
        cookie: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m pydistributed.worker --join address``; the cookie (default: ours)
        given ``how``: ``"env"`` (PYDIST_COOKIE), ``"file"`` (--cookie-file) or ``"stdin"``."""
        cookie = cluster_cookie() if cookie is None else cookie
        environ = worker_env(**(env or {}))
        self._n += 1
        cmd = argv or [sys.executable, "-m", "pydistributed.worker", "--join", address, *args]
        stdin = subprocess.DEVNULL
        if how == "env":
            environ["PYDIST_COOKIE"] = cookie
        elif how == "file":
            path = self.tmp / f"cookie{self._n}"
            path.write_text(cookie + "\n")
            path.chmod(0o600)
            cmd += ["--cookie-file", str(path)]
        elif how == "stdin":
            stdin = subprocess.PIPE
        elif how != "none":
            raise ValueError(f"how: env, file, stdin or none, not {how!r}")
        err = open(self.tmp / f"stderr{self._n}", "wb")
        try:
            proc = subprocess.Popen(
                cmd, env=environ, stdin=stdin, stdout=subprocess.DEVNULL, stderr=err
            )
        finally:
            err.close()
        proc.stderr_path = self.tmp / f"stderr{self._n}"  # type: ignore[attr-defined]
        self.procs.append(proc)
        if how == "stdin":
            assert proc.stdin is not None
            proc.stdin.write((cookie + "\n").encode())
            proc.stdin.close()
        return proc

    def end(self) -> None:
        for proc in self.procs:
            try:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=10)
            except Exception:
                pass


def stderr_of(proc: Any) -> str:
    return Path(proc.stderr_path).read_text(errors="replace")


@pytest.fixture
def joiner(tmp_path: Path) -> Iterator[Joiner]:
    j = Joiner(tmp_path)
    before = set(workers())
    try:
        yield j
    finally:
        end_workers([p for p in workers() if p not in before and p != 1])
        j.end()


@pytest.fixture
def elastic() -> Iterator[ElasticManager]:
    """An ElasticManager on 127.0.0.1 and a port the OS picks; closed after the test."""
    em = ElasticManager("127.0.0.1", 0)
    try:
        yield em
    finally:
        em.close()


def address(em: ElasticManager) -> str:
    return f"{em.host}:{em.port}"
