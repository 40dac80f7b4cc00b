"""``ExponentialBackOff``: the delays between retries (``pmap(..., retry_delays=...)``)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["ExponentialBackOff"]


@dataclass(frozen=True)
class ExponentialBackOff:
    """An iterable of ``n`` delays in seconds that grow exponentially (Julia's
    ``ExponentialBackOff``), for ``pmap(..., retry_delays=ExponentialBackOff(n=3))``.

    The first delay is exactly ``first_delay`` (API.md; Julia caps it at ``max_delay``);
    each next one is the previous times ``factor * (1 ± jitter)`` (uniformly random), capped
    at ``max_delay`` and never below 0. Each iteration draws new jitter. ``len()`` is ``n``.

    Raises:
        ValueError: an argument is negative (or ``n`` is not an integer).
    """

    n: int = 1
    first_delay: float = 0.05
    max_delay: float = 10.0
    factor: float = 5.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise ValueError(f"ExponentialBackOff: n must be an int, not {self.n!r}")
        values = (self.n, self.first_delay, self.max_delay, self.factor, self.jitter)
        if any(not v >= 0 for v in values):
            raise ValueError(f"ExponentialBackOff: all inputs must be non-negative, not {self!r}")

    def __iter__(self) -> Iterator[float]:
        delay = float(self.first_delay)  # (exactly: API.md)
        for _ in range(self.n):
            yield delay
            spread = 1.0 - self.jitter + random.random() * 2.0 * self.jitter
            # (a jitter over 1 could make it negative: no delay then, rather than an error)
            delay = max(0.0, min(float(self.max_delay), delay * self.factor * spread))

    def __len__(self) -> int:
        return self.n
