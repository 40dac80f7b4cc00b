"""Unit tests of ExponentialBackOff (Julia's ``Base.ExponentialBackOff``): no processes."""

from __future__ import annotations

import itertools
import math

import pytest

from pydistributed.backoff import ExponentialBackOff

pytestmark = pytest.mark.timeout(30)


def test_defaults() -> None:
    ebo = ExponentialBackOff()
    assert (ebo.n, ebo.first_delay, ebo.max_delay, ebo.factor, ebo.jitter) == (
        1,
        0.05,
        10.0,
        5.0,
        0.1,
    )
    assert list(ebo) == [0.05]
    assert len(ebo) == 1


def test_n_delays_first_exact_then_growing_within_jitter() -> None:
    ebo = ExponentialBackOff(n=6, first_delay=0.01, max_delay=1e9, factor=3.0, jitter=0.2)
    for _ in range(50):  # jitter is random: look at many draws
        delays = list(ebo)
        assert len(delays) == 6 == len(ebo)
        assert delays[0] == 0.01  # exactly first_delay (API.md)
        for prev, nxt in itertools.pairwise(delays):
            ratio = nxt / prev
            assert 3.0 * 0.8 - 1e-9 <= ratio <= 3.0 * 1.2 + 1e-9


def test_no_jitter_is_deterministic() -> None:
    ebo = ExponentialBackOff(n=4, first_delay=1.0, max_delay=100.0, factor=2.0, jitter=0.0)
    assert list(ebo) == [1.0, 2.0, 4.0, 8.0]
    assert list(ebo) == list(ebo)


def test_capped_at_max_delay() -> None:
    ebo = ExponentialBackOff(n=8, first_delay=0.5, max_delay=3.0, factor=5.0, jitter=0.1)
    delays = list(ebo)
    assert delays[0] == 0.5
    assert all(d <= 3.0 for d in delays)
    assert delays[-1] == 3.0


def test_first_delay_is_exact_even_above_max() -> None:
    # API.md: the first delay is exactly first_delay; the cap applies to the ones after it
    ebo = ExponentialBackOff(n=3, first_delay=20.0, max_delay=10.0, factor=2.0, jitter=0.0)
    assert list(ebo) == [20.0, 10.0, 10.0]


def test_each_iteration_is_fresh() -> None:
    ebo = ExponentialBackOff(n=3, first_delay=0.1, jitter=0.0)
    it1, it2 = iter(ebo), iter(ebo)
    assert next(it1) == 0.1
    assert next(it1) == pytest.approx(0.5)
    assert next(it2) == 0.1  # an independent iteration
    assert list(it1) == [pytest.approx(2.5)]


def test_zero_delays() -> None:
    assert list(ExponentialBackOff(n=0)) == []
    assert len(ExponentialBackOff(n=0)) == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": -1},
        {"first_delay": -0.1},
        {"max_delay": -1.0},
        {"factor": -2.0},
        {"jitter": -0.1},
        {"first_delay": math.nan},
        {"n": 1.5},
        {"n": True},
    ],
)
def test_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ExponentialBackOff(**kwargs)  # type: ignore[arg-type]


def test_frozen_and_comparable() -> None:
    assert ExponentialBackOff(n=3) == ExponentialBackOff(n=3)
    with pytest.raises(AttributeError):
        ExponentialBackOff().n = 2  # type: ignore[misc]


def test_no_delay_is_negative() -> None:
    # a jitter over 1 may draw a factor below 0: the delay is 0 then, never negative
    for _ in range(50):
        assert min(ExponentialBackOff(n=6, first_delay=1.0, factor=2.0, jitter=2.0)) >= 0.0
