"""cloudpickle's Pickler as the codec uses it (``codec.dumps``): imported on the first message
that plain pickle cannot take, so that a process that only ever sends builtins and importable
functions never imports cloudpickle (about 11 ms here; the forkserver imports it ahead for the
workers it forks)."""

from __future__ import annotations

import collections
import io
import sys
import weakref
from types import CodeType, FunctionType
from typing import Any

import cloudpickle

from .errors import FileNotSendable

__all__ = ["BY_REFERENCE", "Pickler"]

_FILE_TYPES = (
    io.TextIOWrapper,
    io.BufferedReader,
    io.BufferedWriter,
    io.BufferedRandom,
    io.FileIO,
)

try:  # cloudpickle's own decisions, reused with a cache (see Pickler)
    from cloudpickle.cloudpickle import _should_pickle_by_reference
except ImportError:  # pragma: no cover - another cloudpickle layout
    _should_pickle_by_reference = None


_CP_TABLE = cloudpickle.Pickler.dispatch_table
_cp_code_reduce = _CP_TABLE[CodeType]
_cp_file_reduce = _CP_TABLE.get(io.TextIOWrapper)


def _code_reduce(co: CodeType) -> Any:
    """cloudpickle's reduction of a code object, keeping its file name.

    cloudpickle writes ``<dynamic-code>`` instead (for a payload that does not depend on where
    a function was defined): a traceback on a worker could then name neither the file nor,
    on the caller that has the file, the source line.
    """
    ctor, args = _cp_code_reduce(co)
    if len(args) > 10 and args[10] == "<dynamic-code>":  # co_filename's place, 3.10 on
        args = (*args[:10], co.co_filename, *args[11:])
    return ctor, args


def _file_reduce(f: Any) -> Any:
    if _cp_file_reduce is not None and (f is sys.stdout or f is sys.stderr):
        return _cp_file_reduce(f)  # the receiver's own stream, as cloudpickle does
    name = getattr(f, "name", None)
    what = f"the file {name!r}" if isinstance(name, str) else "a file"
    raise FileNotSendable(
        f"an open file cannot be sent to another process ({what}, "
        f"{type(f).__module__}.{type(f).__qualname__}): open it where it is used, or send "
        "its contents"
    )


# our entries over cloudpickle's own table (one level, as cloudpickle's: no extra lookup)
_TABLE = collections.ChainMap(
    {
        **_CP_TABLE.maps[0],
        CodeType: _code_reduce,
        **{t: _file_reduce for t in _FILE_TYPES},
    },
    *_CP_TABLE.maps[1:],
)


class Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, remembering which functions go by reference.

    cloudpickle asks, for every function and class it meets, whether its module can be
    imported by name; the answer does not change for a given function or class object, and
    asking costs more than the rest of pickling a small call. ``BY_REFERENCE`` keeps the
    answers (weakly).

    Its dispatch table keeps the file names of code objects (:func:`_code_reduce`) and
    refuses open files, which cloudpickle would copy as a snapshot of their contents.
    """

    dispatch_table = _TABLE

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is FunctionType and _should_pickle_by_reference is not None:
            by_ref = BY_REFERENCE.get(obj)
            if by_ref is None:
                by_ref = BY_REFERENCE[obj] = bool(_should_pickle_by_reference(obj))
            if by_ref:
                return NotImplemented
            return self._dynamic_function_reduce(obj)
        if t is type:  # a class (of the plain metaclass): every message's own classes, say
            by_ref = BY_REFERENCE.get(obj)
            if by_ref:
                return NotImplemented
            reduced = super().reducer_override(obj)
            if by_ref is None:
                BY_REFERENCE[obj] = reduced is NotImplemented
            return reduced
        return super().reducer_override(obj)


BY_REFERENCE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()
