"""``outputloss.GuardedStream`` as a stand-in for ``sys.stdout``: what code that inspects a
stream sees (no processes; the broken-pipe case runs against a real sshd in tests/ssh)."""

from __future__ import annotations

import copy
import io

from pydistributed.outputloss import GuardedStream


def test_a_guarded_stream_shows_and_copies_like_the_stream() -> None:
    inner = io.StringIO()
    g = GuardedStream(inner, 1)
    g.write("a")
    g.flush()
    assert inner.getvalue() == "a"
    assert "getvalue" in dir(g) and "write" in dir(g)  # the stream's attributes, and its own
    twin = copy.copy(g)  # (made without __init__: no endless __getattr__)
    twin.write("b")
    assert inner.getvalue() == "ab"
