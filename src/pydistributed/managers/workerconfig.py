"""``WorkerConfig``: what a manager knows about one worker (``managers/base.py`` gives it out,
on first use, since making a dataclass imports ``dataclasses`` and ``inspect``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["WorkerConfig"]


@dataclass
class WorkerConfig:
    """What a manager knows about one worker (Julia's ``WorkerConfig``); every field optional."""

    exename: str | None = None
    exeflags: Any = None
    host: str | None = None
    port: int | None = None
    sshflags: Any = None
    max_parallel: int | None = None
    connect_at: Any = None
    process: Any = None
    ospid: int | None = None
    environ: dict[str, Any] | None = None
    ident: Any = None
    connect_idents: list[Any] | None = None
    enable_threaded_blas: bool | None = None
    io: Any = None
    bind_addr: str | None = None
    count: int | None = None
    tunnel: bool | None = None
    userdata: Any = None
