"""Messages <-> frames. Touches no socket.

``encode(msg)`` gives ``[header, body, *buffers]``:

- the header is ``struct "!Bqqq"``: the message's ``TAG`` and its up to three integer header
  fields (zeros where unused), then a bitmap with a bit per buffer, set for a buffer that is
  an exact ``bytes`` (:func:`bytes_frames`: the receiver reads such a buffer straight into a
  new ``bytes`` object, which unpickling then takes as it is, without a copy);
- the body is the tuple of the message's ``BODY`` fields, pickled with cloudpickle and pickle
  protocol 5 (functions defined in ``__main__``, lambdas and closures travel by value,
  functions of importable modules by reference);
- the buffers are the out-of-band buffers of protocol 5 of at least ``OOB_THRESHOLD`` bytes
  (numpy arrays, ``bytearray``, ``PickleBuffer``): they are never copied into the pickle.
  Exact ``bytes`` do not take that path in pickle itself; :func:`oob` wraps a large ``bytes``
  argument so that it does.

``decode(frames)`` gives the message back. When the header is fine but the body cannot be
unpickled (a class the receiver does not have, a broken ``__reduce__``) it raises
:class:`DecodeError`, which still carries the tag and the header fields, so the receiver can
answer the right caller with the error instead of dropping the connection.

While a message is encoded, :func:`encoding_target` tells ``__reduce__`` methods which process
it is going to, and :func:`note_ref` collects the remote references it carries, so that the
sender can announce them to their owners first.
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import threading
from types import BuiltinFunctionType, CodeType, FunctionType, ModuleType
from typing import Any

from .errors import FileNotSendable, ProtocolError
from .messages import MESSAGE_TYPES, Message

__all__ = [
    "OOB_THRESHOLD",
    "DecodeError",
    "FileNotSendable",
    "bytes_frames",
    "decode",
    "describe_unpicklable",
    "dumps",
    "encode",
    "encoding_target",
    "loads",
    "note_ref",
    "oob",
    "small",
]

OOB_THRESHOLD = 64 * 1024
_HEADER = struct.Struct("!Bqqq")


class DecodeError(ProtocolError):
    """The body of a message could not be unpickled; ``tag`` and ``header`` are still known."""

    def __init__(self, tag: int, header: dict[str, int], cause: BaseException) -> None:
        super().__init__(f"cannot decode a {_name(tag)} message: {type(cause).__name__}: {cause}")
        self.tag = tag
        self.header = header
        self.cause = cause


def _name(tag: int) -> str:
    cls = MESSAGE_TYPES.get(tag)
    return cls.__name__ if cls else f"unknown (tag {tag})"


class _Context(threading.local):
    target: int | None = None
    refs: list[Any] | None = None


_ctx = _Context()


def encoding_target() -> int | None:
    """The pid a message being encoded on this thread goes to (None outside encoding)."""
    return _ctx.target


def note_ref(ref: Any) -> None:
    """Record that the message being encoded on this thread carries the reference ``ref``."""
    if _ctx.refs is not None:
        _ctx.refs.append(ref)


class _BigBytes:
    """Carries a large ``bytes`` out of band (pickle keeps exact ``bytes`` in band)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (bytes, (pickle.PickleBuffer(self.data),))


def oob(value: Any) -> Any:
    """Return ``value``, wrapped so that a large exact ``bytes`` travels out of band."""
    if type(value) is bytes and len(value) >= OOB_THRESHOLD:
        return _BigBytes(value)
    return value


class _Reusable(threading.local):
    """One pickler per thread, reused: making a Pickler costs more than a small dump."""

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.buffers: list[Any] | None = None
        self.pickler: Any = None  # made on first use: cloudpickle (11 ms) only once needed
        self.busy = False

    def make(self) -> Any:
        from .cpickler import Pickler

        self.pickler = Pickler(self.file, protocol=5, buffer_callback=self._keep)
        return self.pickler

    def _keep(self, buf: pickle.PickleBuffer) -> bool:
        if self.buffers is None or buf.raw().nbytes < OOB_THRESHOLD:
            return True
        self.buffers.append(buf)
        return False


_reusable = _Reusable()


def dumps(obj: Any, buffers: list[Any] | None = None) -> bytes:
    """Pickle ``obj`` with cloudpickle; large buffers go to ``buffers`` when it is given."""
    if _plain(obj):
        return pickle.dumps(obj, 5)
    r = _reusable
    if r.busy:  # a __reduce__ pickling something itself, while we pickle
        return _dumps_fresh(obj, buffers)
    r.busy = True
    f = r.file
    p = r.pickler or r.make()
    try:
        r.buffers = buffers
        p.dump(obj)
        return f.getvalue()
    finally:
        # emptied now, not at the next use: the memo holds every object of the message (remote
        # references among them, which must be freed when their holder drops them), and the
        # next message may well take the plain path and never come here
        p.clear_memo()
        p.globals_ref = {}
        f.seek(0)
        f.truncate()
        r.buffers = None
        r.busy = False


def _dumps_fresh(obj: Any, buffers: list[Any] | None) -> bytes:
    keep_in_band = None
    if buffers is not None:

        def keep_in_band(buf: pickle.PickleBuffer) -> bool:
            if buf.raw().nbytes < OOB_THRESHOLD:
                return True
            buffers.append(buf)
            return False

    from .cpickler import Pickler

    f = io.BytesIO()
    Pickler(f, protocol=5, buffer_callback=keep_in_band).dump(obj)
    return f.getvalue()


def loads(data: Any, buffers: list[Any] | None = None) -> Any:
    """Unpickle what :func:`dumps` made."""
    return pickle.loads(data, buffers=buffers or ())


# -- the plain fast path ---------------------------------------------------------------------
#
# Most small messages carry only builtins and a function of an importable module: the C pickler
# alone writes those as our cloudpickle Pickler would (pickle never asks ``reducer_override``
# about builtin types; a function by reference is saved by name either way), several times
# faster; such a body carries no remote reference and no out-of-band buffer.

_ATOMS = frozenset({int, float, str, bool, type(None), bytes, complex})
_PLAIN_MAX = 16  # items looked at in one container; a longer one takes the general path


def _plain(x: Any, depth: int = 0) -> bool:
    """Whether ``x`` pickles the same with the plain C pickler (see above)."""
    t = type(x)
    if t in _ATOMS:
        return True
    if t is tuple or t is list or t is dict:
        if depth > 2 or len(x) > _PLAIN_MAX:
            return False
        if t is dict:
            if any(type(k) is not str for k in x):
                return False
            x = x.values()
        for v in x:
            if type(v) not in _ATOMS and not _plain(v, depth + 1):
                return False
        return True
    if t is FunctionType:
        return _by_reference(x)
    # a builtin function of a module (``len``, ``time.time``); not a method of an object,
    # whose object might be of a class that cloudpickle sends by value
    return t is BuiltinFunctionType and type(x.__self__) is ModuleType


def _by_reference(f: FunctionType) -> bool:
    """Whether cloudpickle would send ``f`` by reference (by its module and name). Once
    cloudpickle is imported, a module may have been registered to go by value: only what the
    Pickler found (``cpickler.BY_REFERENCE``) counts then. Before, nothing can have been
    registered, and cloudpickle's rule is: a module of ``sys.modules`` other than
    ``__main__``, not made at run time, where the qualified name finds ``f`` itself."""
    if "cloudpickle" in sys.modules:
        # (another thread may be importing it: a module half made has no BY_REFERENCE yet)
        known = getattr(sys.modules.get(f"{__package__}.cpickler"), "BY_REFERENCE", None)
        return known is not None and known.get(f) is True
    name = f.__module__
    module = sys.modules.get(name) if isinstance(name, str) else None
    if module is None or name == "__main__":
        return False
    if getattr(module, "__file__", None) is None and getattr(module, "__spec__", None) is None:
        return False  # made at run time
    obj: Any = module
    for part in f.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is f


_SMALL_ATOM = 1024  # the longest str or bytes that :func:`small` lets through


def small(x: Any, depth: int = 0) -> bool:
    """Whether ``x`` is a small immutable value of builtins (no list, no function, no object
    of a class of the user's): it cannot change, pickling it runs no code of the user's, and
    it makes a message of a few KiB at most."""
    t = type(x)
    if t is str or t is bytes:
        return len(x) <= _SMALL_ATOM
    if t in _ATOMS:
        return True
    if t is tuple:
        return depth <= 2 and len(x) <= _PLAIN_MAX and all(small(v, depth + 1) for v in x)
    return False


def encode(msg: Message, target: int | None = None) -> tuple[list[Any], list[Any]]:
    """Encode ``msg`` for process ``target``.

    Returns:
        ``(frames, refs)``: the frames to write, and the remote references the body carries.

    Raises:
        ``PicklingError``, ``TypeError`` or ``AttributeError`` as pickling raises them; any
        other error of pickling (a ``__reduce__`` may raise anything) as a ``PicklingError``
        naming it: nothing was sent.
    """
    cls = type(msg)
    h = [getattr(msg, name) for name in cls.HEADER]
    header = _HEADER.pack(cls.TAG, *h, *(0, 0, 0)[len(h) :])
    if not cls.BODY:
        return [header, b""], []
    body = tuple([getattr(msg, name) for name in cls.BODY])
    if _plain(body):
        return [header, pickle.dumps(body, 5)], []
    buffers: list[Any] = []
    refs: list[Any] = []
    saved = (_ctx.target, _ctx.refs)
    _ctx.target, _ctx.refs = target, refs
    try:
        data = dumps(body, buffers)
    except (pickle.PicklingError, TypeError, AttributeError):
        raise
    except Exception as e:
        # a __reduce__ may raise anything (random.SystemRandom: NotImplementedError): it is
        # still a value that cannot be pickled, for the caller to name as such
        raise pickle.PicklingError(_said(e)) from e
    finally:
        _ctx.target, _ctx.refs = saved
    raws = [b.raw() for b in buffers]
    if raws:
        header += _bitmap(i for i, r in enumerate(raws) if type(r.obj) is bytes)
    return [header, data, *raws], refs


def _bitmap(indices: Any) -> bytes:
    bits = 0
    for i in indices:
        bits |= 1 << i
    return bits.to_bytes((bits.bit_length() + 7) // 8, "little") if bits else b""


def bytes_frames(header: Any) -> frozenset[int]:
    """The frames of a message that are exact ``bytes`` on the sender (``2`` is the first
    out-of-band buffer), read from its header frame; empty when there are none.

    Only the header is looked at: the reader calls this before the frames arrive.
    """
    bitmap = bytes(header[_HEADER.size :])
    if not bitmap:
        return frozenset()
    bits = int.from_bytes(bitmap, "little")
    return frozenset(i + 2 for i in range(bits.bit_length()) if bits >> i & 1)


def decode_header(frames: list[Any]) -> tuple[int, dict[str, int]]:
    """The tag and header fields of a message, without touching its body."""
    head = frames[0]
    if not _HEADER.size <= len(head) <= _HEADER.size + (len(frames) + 7) // 8:
        raise ProtocolError(f"bad header of {len(head)} bytes")
    tag, a, b, c = _HEADER.unpack_from(head)
    cls = MESSAGE_TYPES.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown message tag {tag}")
    return tag, dict(zip(cls.HEADER, (a, b, c)[: len(cls.HEADER)], strict=True))


def decode(frames: list[Any]) -> Message:
    """Decode a message.

    Raises:
        ProtocolError: the header is garbled (the connection cannot be trusted any more).
        DecodeError: the header is fine but the body is not; it carries the header.
    """
    if len(frames) < 2:
        raise ProtocolError("a message has a header and a body")
    header: dict[str, int] | None = None
    tag, a, b, c = _HEADER.unpack_from(frames[0]) if len(frames[0]) == _HEADER.size else (0,) * 4
    cls = MESSAGE_TYPES.get(tag)
    if cls is not None:  # no bitmap and a known tag: the common case, without the dict
        fields: tuple[int, ...] = (a, b, c)[: len(cls.HEADER)]
    else:
        tag, header = decode_header(frames)
        cls, fields = MESSAGE_TYPES[tag], tuple(header.values())
    if not cls.BODY:
        return cls(*fields)
    try:
        body = pickle.loads(frames[1], buffers=frames[2:])
        if not isinstance(body, tuple) or len(body) != len(cls.BODY):
            raise ProtocolError(f"a {cls.__name__} body has {len(cls.BODY)} fields")
        return cls(*fields, *body)
    except BaseException as e:
        # anything unpickling raises, SystemExit and KeyboardInterrupt from a __reduce__
        # included, is this message's failure, not the connection's nor the process's
        raise DecodeError(tag, header or decode_header(frames)[1], e) from e


# -- what could not be pickled, in words (failures only) -------------------------------------


def describe_unpicklable(what: str, values: dict[str, Any], exc: BaseException) -> str:
    """Name the first of ``values`` that cannot be pickled, and what in it cannot: the captured
    variable, global or default of a function shipped by value (for an error message).

    ``what`` opens the message ("cannot send the call"); ``values`` maps a name for the user
    ("argument 2", "the return value") to the value. A name equal to ``what`` is said once.
    """
    for name, value in values.items():
        value = getattr(value, "_pydist_user_value", value)  # a wrapper of ours: what it holds
        err = _pickling_error(value)
        if err is None:
            continue
        subject = f"{name}, {_a(value)}," if name != "the function" else f"the function {_a(value)}"
        opening = subject if name == what else f"{what}: {subject}"
        inside = _culprit(value, 0)
        if inside is not None:
            phrase, err = inside
            return f"{opening} {phrase}, which cannot be pickled (serialized): {_said(err)}"
        return f"{opening} could not be pickled (serialized): {_said(err)}"
    return f"{what}: it could not be pickled (serialized): {_said(exc)}"


def _said(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _pickling_error(value: Any) -> BaseException | None:
    try:
        dumps(value)
    except Exception as e:
        return e
    return None


def _a(value: Any) -> str:
    """``value`` in words: a function by its name and place, anything else by its type."""
    if isinstance(value, FunctionType):
        co = value.__code__
        where = co.co_filename.replace("\\", "/").rsplit("/", 1)[-1]
        return f"{value.__qualname__} ({where}, line {co.co_firstlineno})"
    t = type(value)
    if t.__module__ == "builtins":
        return f"a {t.__qualname__}"
    return f"a {t.__module__}.{t.__qualname__}"


def _culprit(f: Any, depth: int) -> tuple[str, BaseException] | None:
    """What in the function ``f`` cannot be pickled: ``("captures the variable 'x', a T",
    error)``; None when it is none of its captured variables, globals and defaults."""
    if not isinstance(f, FunctionType) or depth > 3:
        return None
    candidates: list[tuple[str, Any]] = []
    for name, cell in zip(f.__code__.co_freevars, f.__closure__ or (), strict=False):
        try:
            candidates.append((f"captures the variable {name!r}", cell.cell_contents))
        except ValueError:  # an empty cell
            continue
    g = f.__globals__
    candidates += [(f"uses the global {n!r}", g[n]) for n in _global_names(f.__code__) if n in g]
    defaults = f.__defaults__ or ()
    params = f.__code__.co_varnames[f.__code__.co_argcount - len(defaults) : f.__code__.co_argcount]
    candidates += [(f"has the default of {p!r}", d) for p, d in zip(params, defaults, strict=False)]
    candidates += [(f"has the default of {k!r}", v) for k, v in (f.__kwdefaults__ or {}).items()]
    for phrase, value in candidates:
        err = _pickling_error(value)
        if err is None:
            continue
        phrase = f"{phrase}, {_a(value)}"
        deeper = _culprit(value, depth + 1)
        if deeper is not None:
            return f"{phrase}, which {deeper[0]}", deeper[1]
        return phrase, err
    return None


def _global_names(co: CodeType) -> list[str]:
    """The global names a code object (and the code nested in it) may read, in order."""
    names = list(co.co_names)
    for const in co.co_consts:
        if isinstance(const, CodeType):
            names += [n for n in _global_names(const) if n not in names]
    return names
