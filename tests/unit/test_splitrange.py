"""Unit tests of how ``distributed`` splits a collection: ``splitrange`` and the slicing of parts.

No processes are started. The expected parts are Julia's ``splitrange`` (Distributed.jl,
``macros.jl``) translated to 0-based half-open ranges.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import pytest

from pydistributed.macros import _split, splitrange

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("n_items", "n_parts", "expected"),
    [
        (10, 3, [range(0, 4), range(4, 7), range(7, 10)]),
        (9, 3, [range(0, 3), range(3, 6), range(6, 9)]),
        (11, 3, [range(0, 4), range(4, 8), range(8, 11)]),
        (5, 1, [range(0, 5)]),
        (1, 1, [range(0, 1)]),
        (2, 4, [range(0, 1), range(1, 2)]),  # fewer items than parts: one item a part
        (4, 4, [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]),
        (0, 3, []),  # nothing to split: no part at all
        (0, 1, []),
    ],
)
def test_splitrange_matches_julia(n_items: int, n_parts: int, expected: list[range]) -> None:
    assert splitrange(n_items, n_parts) == expected


@pytest.mark.parametrize("n_items", [*range(0, 40), 97, 1000, 12345])
@pytest.mark.parametrize("n_parts", [1, 2, 3, 4, 7, 8, 16, 128])
def test_splitrange_properties(n_items: int, n_parts: int) -> None:
    parts = splitrange(n_items, n_parts)
    # the parts cover range(n_items) exactly, contiguous and in order
    assert [i for r in parts for i in r] == list(range(n_items))
    assert all(r.step == 1 for r in parts)
    # as many parts as possible without an empty one
    assert len(parts) == min(n_items, n_parts)
    assert all(len(r) > 0 for r in parts)
    sizes = [len(r) for r in parts]
    if sizes:
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)  # the larger parts first


@pytest.mark.parametrize(("n_items", "n_parts"), [(-1, 2), (5, 0), (5, -3), (0, 0)])
def test_splitrange_rejects_bad_arguments(n_items: int, n_parts: int) -> None:
    with pytest.raises(ValueError, match="splitrange"):
        splitrange(n_items, n_parts)


def test_a_range_is_split_into_ranges() -> None:
    parts = _split(range(0, 100, 10), 3)
    assert parts == [range(0, 40, 10), range(40, 70, 10), range(70, 100, 10)]
    assert all(type(p) is range for p in parts)


def test_a_huge_range_is_never_materialized() -> None:
    parts = _split(range(10**18), 4)  # as a list this would not fit in any memory
    assert [len(p) for p in parts] == [25 * 10**16] * 4
    assert all(type(p) is range for p in parts)


def test_a_sequence_is_sliced_not_copied_whole() -> None:
    assert _split(["a", "b", "c", "d", "e"], 2) == [["a", "b", "c"], ["d", "e"]]
    assert _split((1, 2, 3), 2) == [(1, 2), (3,)]
    assert _split(collections.deque([1, 2, 3]), 2) == [[1, 2], [3]]  # no slices: a list
    assert _split("hello", 2) == ["hel", "lo"]


def test_an_iterator_is_made_a_list_first() -> None:
    def gen() -> Iterator[int]:
        yield from range(7)

    assert _split(gen(), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert _split({3: "x", 1: "y"}, 2) == [[3], [1]]  # a mapping: its keys, in order
    assert _split(iter(()), 3) == []


def test_an_array_like_is_sliced() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(10)
    parts = _split(a, 3)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert all(isinstance(p, np.ndarray) for p in parts)
