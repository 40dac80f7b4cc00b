"""The address of a bytes-like object's memory, for C code called through ``ctypes``.

``ctypes`` takes the address of a writable buffer only (``from_buffer``); the buffer protocol
itself (``PyObject_GetBuffer``) gives it for read-only ones too (a ``bytes``, a read-only
array). :class:`Held` keeps the buffer exported, so its memory stays where it is, until it is
released. Imported (with ``ctypes``) only by what needs it: a large copy, a bulk MAC.
"""

from __future__ import annotations

import ctypes
from types import TracebackType
from typing import Any

__all__ = ["Held"]


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_void_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get = ctypes.pythonapi.PyObject_GetBuffer
_get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
_get.restype = ctypes.c_int
_release = ctypes.pythonapi.PyBuffer_Release
_release.argtypes = [ctypes.POINTER(_PyBuffer)]
_release.restype = None


class Held:
    """``with Held(obj) as b:`` ``b.address`` and ``b.nbytes`` of ``obj``'s memory (contiguous
    bytes: ``PyBUF_SIMPLE``), valid until the block ends.

    Raises:
        BufferError: ``obj`` has no such buffer (not bytes-like, or not contiguous).
    """

    __slots__ = ("_view", "address", "nbytes")

    def __init__(self, obj: Any) -> None:
        self._view: _PyBuffer | None = None
        view = _PyBuffer()
        try:
            _get(obj, ctypes.byref(view), 0)  # raises the error Python sets
        except Exception as e:
            raise BufferError(f"no contiguous buffer in a {type(obj).__name__}: {e}") from e
        self._view = view
        self.address: int = view.buf or 0
        self.nbytes: int = view.len

    def release(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            _release(ctypes.byref(view))

    def __enter__(self) -> Held:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
