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
"""

from __future__ import annotations

import hashlib
import hmac
import queue
import struct
import threading
from typing import Any

from .errors import ProtocolError

__all__ = ["MAC_SIZE", "BackgroundHash", "FrameMac"]

MAC_SIZE = 16
_SEQ = struct.Struct("!Q")


class FrameMac:
    """The authentication of one direction of a connection (see the module's docstring).

    One object per direction; the sender and the receiver count messages the same way, so
    every message must pass through it exactly once and in order (the send lock, the reading
    role).
    """

    __slots__ = ("_keyed", "_seq")

    def __init__(self, key: bytes) -> None:
        self._keyed = hashlib.blake2b(key=key, digest_size=MAC_SIZE)  # copied per message
        self._seq = 0

    def start(self) -> Any:
        """A MAC for the next message, to ``update`` with its bytes."""
        h = self._keyed.copy()
        h.update(_SEQ.pack(self._seq))
        self._seq += 1
        return h

    def tag(self, data: Any) -> bytes:
        """The tag of the next message, whose bytes (prefix and frames) are ``data``."""
        h = self.start()
        h.update(data)
        return h.digest()  # type: ignore[no-any-return]

    @staticmethod
    def check(h: Any, tag: Any) -> None:
        """Raise ProtocolError unless ``tag`` is the tag of what ``h`` has seen."""
        if not hmac.compare_digest(h.digest(), bytes(tag)):
            raise ProtocolError("message authentication failed (forged, changed or out of order)")


class BackgroundHash:
    """Feeds a MAC on another thread, in order, while this one sends or receives: hashlib
    lets go of the GIL on large updates, so on two cores the pass over a large buffer costs
    about nothing beyond the transfer itself. Used for messages with a frame of 1 MiB or more
    (starting a thread costs more than hashing a small one)."""

    __slots__ = ("_h", "_q", "_t")

    def __init__(self, h: Any) -> None:
        self._h = h
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._t = threading.Thread(target=self._run, name="pydist-mac", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while (data := self._q.get()) is not None:
            self._h.update(data)

    def update(self, data: Any) -> None:
        self._q.put(data)

    def digest(self) -> bytes:
        self._q.put(None)
        self._t.join()
        return self._h.digest()  # type: ignore[no-any-return]
