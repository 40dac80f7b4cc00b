"""Poly1305 (RFC 8439) from the OpenSSL library this Python's ``hashlib`` already uses, for the
MAC of large frames on links with frame tags (``framemac.py``).

The standard library has no MAC faster than its hashes (keyed BLAKE2b ~1 GB/s a core here,
SHA-256 ~2 GB/s); OpenSSL's Poly1305 runs at ~6 GB/s. It is reached through ``ctypes``
(``EVP_MAC``, OpenSSL 3), in the very library ``_hashlib`` links, found in this process's
memory map: nothing is installed and no other copy of OpenSSL is loaded. Where there is none
(another platform, OpenSSL 1.1), :func:`available` is False and the handshake does not offer
it: the link's tags stay BLAKE2b over every byte.

Each key is a one-time key: the caller derives a fresh one per use (``framemac.py``).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

__all__ = ["KEY_SIZE", "TAG_SIZE", "Poly1305", "available"]

KEY_SIZE = 32
TAG_SIZE = 16
_lock = threading.Lock()
_lib: Any = None  # (ctypes, the library, the EVP_MAC), once loaded


@functools.cache
def _libcrypto() -> str | None:
    """The path of the OpenSSL 3 library mapped in this process by ``_hashlib``, if any."""
    try:
        import _hashlib  # noqa: F401 (maps libcrypto)

        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rpartition(" ")[2].strip()
                if "/libcrypto.so.3" in path:
                    return path
    except (ImportError, OSError):
        pass
    return None


_RFC_KEY = bytes.fromhex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b")
_RFC_TAG = bytes.fromhex("a8061dc1305136c6c22b8baf0c0127a9")  # RFC 8439, 2.5.2


@functools.cache
def available() -> bool:
    """Whether this process can compute Poly1305: the library is there, has it (OpenSSL 3
    with only the FIPS or base provider has not), and gives RFC 8439's tag for its test
    vector. Asked once per process (``ctypes`` is imported: ~1 ms), by a handshake on a link
    with frame tags."""
    if _libcrypto() is None:
        return False
    try:
        p = Poly1305(_RFC_KEY)
        p.update(b"Cryptographic Forum Research Group")
        return p.digest() == _RFC_TAG
    except Exception:
        return False


def _load() -> Any:
    global _lib
    with _lock:
        if _lib is None:
            path = _libcrypto()
            if path is None:
                raise OSError("no OpenSSL 3 library in this process")
            import ctypes

            try:
                lib = ctypes.CDLL(path)
                fetch = lib.EVP_MAC_fetch  # (a missing symbol: AttributeError)
            except (OSError, AttributeError) as e:
                raise OSError(f"{path}: no EVP_MAC: {e}") from e
            vp, sz = ctypes.c_void_p, ctypes.c_size_t
            fetch.restype = vp
            fetch.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
            lib.EVP_MAC_CTX_new.restype = vp
            lib.EVP_MAC_CTX_new.argtypes = [vp]
            lib.EVP_MAC_CTX_free.restype = None
            lib.EVP_MAC_CTX_free.argtypes = [vp]
            lib.EVP_MAC_init.argtypes = [vp, ctypes.c_char_p, sz, vp]
            lib.EVP_MAC_update.argtypes = [vp, vp, sz]
            lib.EVP_MAC_final.argtypes = [vp, ctypes.c_char_p, ctypes.POINTER(sz), sz]
            mac = fetch(None, b"POLY1305", None)
            if not mac:
                raise OSError(f"{path} has no POLY1305")
            _lib = (ctypes, lib, mac)
    return _lib


class Poly1305:
    """One Poly1305 computation under a one-time ``key`` (32 bytes): :meth:`update` with the
    data (any bytes-like object; the GIL is let go while OpenSSL works), then :meth:`digest`,
    once.

    Raises:
        OSError: the library cannot be had or refuses (see :func:`available`).
    """

    __slots__ = ("_ctx",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a Poly1305 key is {KEY_SIZE} bytes, not {len(key)}")
        _, lib, mac = _load()
        self._ctx = lib.EVP_MAC_CTX_new(mac)
        if not self._ctx:
            raise OSError("EVP_MAC_CTX_new failed")
        if lib.EVP_MAC_init(self._ctx, key, KEY_SIZE, None) != 1:
            self._free()
            raise OSError("EVP_MAC_init failed")

    def update(self, data: Any) -> None:
        from .cbuffer import Held

        ctx = self._ctx
        if not ctx:
            raise ValueError("Poly1305: update after digest")
        with Held(data) as b:
            if b.nbytes and _lib[1].EVP_MAC_update(ctx, b.address, b.nbytes) != 1:
                raise OSError("EVP_MAC_update failed")

    def digest(self) -> bytes:
        ctypes, lib, _ = _lib
        ctx = self._ctx
        if not ctx:
            raise ValueError("Poly1305: digest taken twice")
        out = ctypes.create_string_buffer(TAG_SIZE)
        n = ctypes.c_size_t()
        try:
            if lib.EVP_MAC_final(ctx, out, ctypes.byref(n), TAG_SIZE) != 1 or n.value != TAG_SIZE:
                raise OSError("EVP_MAC_final failed")
        finally:
            self._free()
        return out.raw

    def _free(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx:
            _lib[1].EVP_MAC_CTX_free(ctx)

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) and _lib is not None:
            self._free()
