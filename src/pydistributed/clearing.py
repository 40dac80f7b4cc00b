"""``clear``: set global variables to ``None`` on some processes (Julia's ``clear!``), to free
what they hold; ``clear(pool)`` drops a ``CachingPool``'s cached functions on its workers."""

from __future__ import annotations

import re
import sys
import types
import typing
from collections.abc import Iterable
from typing import Any

from .cluster import current_cluster
from .errors import CompositeException
from .ids import check_pid
from .tasks import Task
from .workerpool import CachingPool

__all__ = ["clear"]


def clear(
    names: str | Iterable[str] | Any,
    pids: int | Iterable[int] | None = None,
    mod: str | types.ModuleType = "__main__",
) -> Any:
    """Set global variables to ``None`` on some processes, to free what they hold (``clear!``).

    Only the names that exist in ``mod`` on a process are set there; a module that a process
    has not imported has nothing to clear. ``clear(pool)`` on a ``CachingPool`` calls
    ``pool.clear()`` (dropping its cached functions on the workers) and returns the pool.

    Args:
        names: one name or several.
        pids: one process id or several; default ``workers()``.
        mod: the module, or its name (default ``"__main__"``).

    Returns:
        None (the pool, for ``clear(pool)``).

    Raises:
        TypeError: ``names`` is not a name, a list of names or a ``CachingPool``; a name is not
            a string.
        CompositeException: of one ``RemoteException`` per process that failed, wrapping an
            ``AttributeError`` for a constant (a name annotated ``typing.Final`` in the
            module) or for a module attribute that refuses to be set. A process that
            refuses a name still clears the others.
    """
    if isinstance(names, CachingPool):
        names.clear()
        return names
    if isinstance(names, str):
        wanted: tuple[str, ...] = (names,)
    elif isinstance(names, Iterable):
        wanted = tuple(names)
    else:
        raise TypeError(
            "clear() takes a name, a list of names or a CachingPool, not "
            f"{type(names).__name__} ({names!r})"
        )
    for name in wanted:
        if not isinstance(name, str):
            raise TypeError(f"clear() takes names as str, not {type(name).__name__} ({name!r})")
    modname = mod.__name__ if isinstance(mod, types.ModuleType) else mod
    if not isinstance(modname, str):
        raise TypeError(f"clear(mod=...) takes a module or its name, not {type(mod).__name__}")
    c = current_cluster()
    if pids is None:
        targets = c.registry.worker_ids()
    elif isinstance(pids, int):
        targets = [check_pid(pids)]
    else:
        targets = [check_pid(p) for p in pids]
    targets = list(dict.fromkeys(targets))
    if not wanted or not targets:
        return None

    def one(pid: int) -> None:
        c.calls.call_fetch(pid, _clear_here, (wanted, modname))

    errors: list[BaseException] = []
    if len(targets) == 1:
        try:
            one(targets[0])
        except Exception as e:
            errors.append(e)
    else:
        tasks = [Task(one, pid).start() for pid in targets]
        for task in tasks:
            try:
                task.wait()
            except Exception as e:
                errors.append(e)
    if errors:
        raise CompositeException(errors, f"clear() failed on {len(errors)} of the processes")
    return None


_FINAL_TEXT = re.compile(r"^(?:[A-Za-z_][A-Za-z_0-9]*\.)*Final(?:\[.*\])?$", re.DOTALL)


def _is_final(annotation: Any) -> bool:
    """Whether a module-level annotation declares a constant (``typing.Final``)."""
    if annotation is typing.Final or typing.get_origin(annotation) is typing.Final:
        return True
    if isinstance(annotation, str):
        # ``from __future__ import annotations`` keeps the source text, quotes included
        text = annotation.replace(" ", "").strip("'\"")
        return _FINAL_TEXT.match(text) is not None
    return False


def _module_has(module: types.ModuleType, name: str) -> bool:
    if name in vars(module):
        return True
    # a module whose class (a ModuleType subclass) defines the name, e.g. as a property
    return any(name in vars(k) for k in type(module).__mro__ if k not in (types.ModuleType, object))


def _clear_here(names: tuple[str, ...], modname: str) -> list[str]:
    """Set the existing ``names`` of module ``modname`` here to None; the names cleared.

    Raises:
        AttributeError: a name is a constant (``typing.Final``), or the module refused to
            set it; the other names are still cleared.
    """
    module = sys.modules.get(modname)
    if module is None:
        return []
    annotations = getattr(module, "__annotations__", None) or {}
    cleared: list[str] = []
    refused: list[str] = []
    for name in names:
        if not _module_has(module, name):
            continue
        if _is_final(annotations.get(name)):
            refused.append(f"{name!r} is a constant (annotated typing.Final)")
            continue
        try:
            setattr(module, name, None)
        except Exception as e:
            refused.append(f"{name!r} cannot be set: {type(e).__name__}: {e}")
            continue
        cleared.append(name)
    if refused:
        raise AttributeError(f"clear() in module {modname!r}: " + "; ".join(refused))
    return cleared


_clear_here._pydist_internal = True  # type: ignore[attr-defined]  # see dispatch.is_internal
