"""Writing a pipelined map's messages (``pipeline.py``): the messages of one fill, pickled
first and then written, and the fallback that sends a lane's elements one by one to find the
one that cannot be pickled (or is too large)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from .codec import describe_unpicklable
from .errors import ProcessExitedException
from .funccache import FunctionCache
from .messages import MapCalls
from .pipelanes import Failure, Lane

__all__ = ["Ready", "send_each", "write"]

Ready = tuple[Lane, list[Any], list[Any], int | None, Callable[[], bool]]
"""A message of a fill, pickled: ``(lane, frames, refs, function token, a fallback that sends
the elements one by one)``."""


def write(ready: list[Ready], cache: FunctionCache) -> None:
    """Write the messages that ``Pipeline._send`` pickled (``cache`` notes the functions
    that went with them)."""
    broken: set[int] = set()
    for lane, frames, refs, token, each in ready:
        if lane.dead or id(lane) in broken:
            continue
        peer = lane.peer
        try:
            if refs and peer.announce is not None:
                peer.announce(peer, refs)
            peer.send_frames(frames)
        except ProcessExitedException as e:
            broken.add(id(lane))
            lane.slot.set(False, e)  # type: ignore[union-attr]
            continue
        except Exception:  # (too large, say): element by element, to find which
            if not each():
                continue
        if token is not None:
            cache.shipped(lane.pid, token)


def send_each(
    post: Callable[[tuple[Any, ...]], None],
    lane: Lane,
    first: int,
    f: Any,
    sent: Any,
    part: list[Any],
) -> bool:
    """Send each element alone; one that cannot be pickled fails here with the error that
    says what. Whether any went out."""
    went = False
    for seq, (_, _, args) in enumerate(part, first):
        try:
            lane.peer.send(MapCalls(lane.stream, seq, 1, sent, [args]))
            went = True
        except ProcessExitedException as e:
            lane.slot.set(False, e)  # type: ignore[union-attr]
            break
        except Exception as e:
            values = {"the function": f}
            values.update({f"argument {i + 1}": a for i, a in enumerate(args)})
            why = describe_unpicklable("cannot send the call", values, e)
            failure = Failure(pickle.PicklingError(why))
            post((lane, seq, 1, b"\0", [failure], 0.0))
    return went
