"""Frame authentication: the tag that follows every message on a link the kernel cannot vouch
for (TCP, a custom transport)::

    +--------+---------+-----+---------+-------------------------------------------------+
    | prefix | frame 0 | ... | frame N | tag: BLAKE2b-128(key; seq | prefix | frames)     |
    +--------+---------+-----+---------+-------------------------------------------------+

BLAKE2b in its keyed mode (RFC 7693) is the MAC: here it costs 0.6 us for a small message
against 1.7 us for HMAC-SHA256. ``key`` is this direction's session key
(``handshake.Session``) and ``seq`` a 64-bit count of the messages sent so far in this
direction, which is not sent: a message that is forged,
changed, replayed, dropped or reordered fails the check, and the connection is dropped
(:class:`FrameMac`). The tag covers out-of-band buffers too. A Unix-socket connection whose peer
the kernel has checked (same user, ``sockets.peer_credentials``) carries no tags: nobody else
can be at the other end, and the tags would cost a pass over every large buffer (measured in
``docs/security.md``).

Large frames (:data:`BULK_MIN` bytes or more) on a link where both sides can compute Poly1305
(``poly1305.py``; offered in the handshake, ``bulk=True`` here) are not fed to BLAKE2b byte by
byte: each goes through Poly1305 under a one-time key, and its 16-byte Poly1305 tag takes its
place in the message's BLAKE2b::

    tag = BLAKE2b-128(key; seq | prefix | small frames | Poly1305(k[seq, j]; bulk frame j) ...)
    k[seq, j] = BLAKE2b-256(key, person "pydist-bulk"; seq | j)

(in frame order). The one-time keys come from the direction's key, the message's count and the
bulk frame's number, so no two Poly1305 computations share one. Poly1305 is ~6 GB/s a core
against BLAKE2b's ~1; a change anywhere in a bulk frame changes its Poly1305 tag (forging one
without its key succeeds with odds of about ``n/2**106`` for ``n`` 16-byte blocks), hence the
message's tag.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

from .errors import ProtocolError

__all__ = ["BULK_MIN", "MAC_SIZE", "FrameMac", "MessageMac", "feed_frames"]

MAC_SIZE = 16
BULK_MIN = 1 << 16  # frames this large go through Poly1305 on a link with bulk=True
_SEQ = struct.Struct("!Q")
_SEQ2 = struct.Struct("!QQ")


class FrameMac:
    """The authentication of one direction of a connection (see the module's docstring).

    One object per direction; the sender and the receiver count messages the same way, so
    every message must pass through it exactly once and in order (the send lock, the reading
    role). ``bulk``: large frames go through Poly1305 (both sides must agree: the handshake's
    ``session_macs``).
    """

    __slots__ = ("_key", "_keyed", "_seq", "bulk")

    def __init__(self, key: bytes, bulk: bool = False) -> None:
        self._key = key
        self._keyed = hashlib.blake2b(key=key, digest_size=MAC_SIZE)  # copied per message
        self._seq = 0
        self.bulk = bulk

    def _next(self) -> tuple[Any, int]:
        """The keyed hash of the next message, fed with its count, and the count."""
        h = self._keyed.copy()
        seq = self._seq
        h.update(_SEQ.pack(seq))
        self._seq = seq + 1
        return h, seq

    def start(self) -> MessageMac:
        """A MAC for the next message: ``update`` with its bytes, each bulk frame between
        ``begin`` and ``end`` (its bytes through ``bulk``)."""
        h, seq = self._next()
        return MessageMac(h, self._key if self.bulk else None, seq)

    def tag(self, data: Any) -> bytes:
        """The tag of the next message, whose bytes (prefix and frames, none of them bulk)
        are ``data``: a small message, without a :class:`MessageMac`."""
        h, _ = self._next()
        h.update(data)
        return h.digest()  # type: ignore[no-any-return]

    def verify(self, data: Any, tag: Any) -> None:
        """Check the next message, whose bytes (none of them bulk) are ``data``, against its
        ``tag``; raise ProtocolError if it does not match."""
        if not hmac.compare_digest(self.tag(data), bytes(tag)):
            raise ProtocolError("message authentication failed (forged, changed or out of order)")

    @staticmethod
    def check(h: Any, tag: Any) -> None:
        """Raise ProtocolError unless ``tag`` is the tag of what ``h`` has seen."""
        if not hmac.compare_digest(h.digest(), bytes(tag)):
            raise ProtocolError("message authentication failed (forged, changed or out of order)")


class MessageMac:
    """The MAC of one message, fed in order (:meth:`FrameMac.start`)."""

    __slots__ = ("_h", "_key", "_n", "_p", "_seq")

    def __init__(self, h: Any, key: bytes | None, seq: int) -> None:
        self._h = h
        self._key = key  # None: no Poly1305, bulk frames are hashed like the rest
        self._seq = seq
        self._n = 0  # bulk frames begun
        self._p: Any = None

    def update(self, data: Any) -> None:
        self._h.update(data)

    def begin(self) -> None:
        """A bulk frame (:data:`BULK_MIN` bytes or more) starts."""
        if self._key is not None:
            from .poly1305 import Poly1305

            k = hashlib.blake2b(
                _SEQ2.pack(self._seq, self._n), key=self._key, digest_size=32, person=b"pydist-bulk"
            ).digest()
            self._n += 1
            try:
                self._p = Poly1305(k)
            except OSError as e:
                raise ProtocolError(f"cannot authenticate a large frame: {e}") from e

    def bulk(self, data: Any) -> None:
        """Bytes of the bulk frame begun."""
        (self._p or self._h).update(data)

    def end(self) -> None:
        """The bulk frame begun is whole."""
        p, self._p = self._p, None
        if p is not None:
            self._h.update(p.digest())

    def digest(self) -> bytes:
        return self._h.digest()  # type: ignore[no-any-return]


def feed_frames(h: MessageMac, frames: Any, lens: Any) -> None:
    """Feed a message's frames (sizes ``lens``) to its MAC ``h``, bulk frames as such."""
    for f, n in zip(frames, lens, strict=True):
        if n >= BULK_MIN:
            h.begin()
            h.bulk(f)
            h.end()
        elif n:
            h.update(f)
