"""The frame format's constants and guards, shared by the writing and the reading side
(see ``transport.py`` for the format itself)."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

from .errors import ProtocolError

__all__ = ["BIG_FRAME", "COUNT", "MAX_FRAMES", "check_size", "max_message_bytes", "prefix"]

MAX_FRAMES = 65536
COUNT = struct.Struct("!I")
BIG_FRAME = 1 << 20  # frames this large get memory of their own on the receiver
_DEFAULT_MAX = 16 << 30


def max_message_bytes() -> int:
    """The size guard: the largest message (sum of its frames) accepted or sent."""
    raw = os.environ.get("PYDIST_MAX_MESSAGE_BYTES")
    if raw:
        try:
            return max(1024, int(raw))
        except ValueError:
            pass
    return _DEFAULT_MAX


def check_size(n_frames: int, total: int, limit: int) -> None:
    """The guard of every message, sent or received: the frame count and the total size.

    Raises:
        ProtocolError: outside the guard; nothing has been allocated or sent for it.
    """
    if not 1 <= n_frames <= MAX_FRAMES:
        raise ProtocolError(f"a message has 1 to {MAX_FRAMES} frames, not {n_frames}")
    if total > limit:
        raise ProtocolError(
            f"message of {total} bytes exceeds the size guard of {limit} bytes "
            "(PYDIST_MAX_MESSAGE_BYTES)"
        )


def prefix(frames: Sequence[Any], limit: int) -> tuple[bytes, list[int], int]:
    """The length prefix of a message, its frames' sizes and their total; checks the guard."""
    lens = [len(f) if type(f) is bytes else memoryview(f).nbytes for f in frames]
    total = sum(lens)
    check_size(len(frames), total, limit)
    return COUNT.pack(len(frames)) + struct.pack(f"!{len(lens)}Q", *lens), lens, total
