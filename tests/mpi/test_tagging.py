"""A rank's lines carry its rank (``mpirank.TaggedStream``), whole, one write each, so that the
master can split mpiexec's merged output per rank (no process: a stream into a buffer)."""

from __future__ import annotations

import io

from pydistributed.managers.mpijob import TAG
from pydistributed.mpirank import TaggedStream


class _Recorder(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def test_each_whole_line_is_tagged_and_written_at_once() -> None:
    raw = _Recorder()
    out = TaggedStream(raw, 3)
    print("hello", "there", file=out)  # four writes: "hello", " ", "there", "\n"
    out.write("two\nlines\nand a ")
    out.write("rest")
    assert raw.getvalue() == f"{TAG}3\thello there\n{TAG}3\ttwo\n{TAG}3\tlines\n"
    assert raw.writes == [f"{TAG}3\thello there\n", f"{TAG}3\ttwo\n{TAG}3\tlines\n"]
    out.flush()  # an unfinished line goes out on flush, ended
    assert raw.getvalue().endswith(f"{TAG}3\tand a rest\n")


def test_a_rank_unknown_to_the_launcher_is_not_a_number() -> None:
    raw = io.StringIO()
    TaggedStream(raw, "?").write("x\n")
    head = raw.getvalue()[len(TAG) :].partition("\t")[0]
    assert not head.isdigit()  # the master treats it as mpiexec's own line
