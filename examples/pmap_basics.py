"""pmap in a few lines: order, several inputs, batches, errors handled inline, retries.

Julia::

    pmap(x -> x^2, 1:10)
    pmap(x -> iseven(x) ? error("foo") : x, 1:4; on_error=identity)
    pmap(f, c; retry_delays=ExponentialBackOff(n=3))

Run: ``pydist -p 2 examples/pmap_basics.py``.
"""

import os
import random

from pydistributed import ExponentialBackOff, asyncmap, myid, pmap, workers


def odd_or_fail(x: int) -> int:
    if x % 2 == 0:
        raise ValueError(f"{x} is even")
    return x


def flaky(x: int) -> int:
    """Fails now and then, as a network call might."""
    if random.random() < 0.3:
        raise ConnectionError(f"lost element {x}")
    return x * 10


if __name__ == "__main__":
    # results come back in input order, whichever worker computed them
    squares = pmap(lambda x: x * x, range(1, 11))
    print(f"squares: {squares}")
    who = pmap(lambda x: myid(), range(20))
    print(f"workers used: {sorted(set(who))} of {workers()}")

    # several iterables are zipped, as in map()
    print(f"sums: {pmap(lambda a, b: a + b, [1, 2, 3], [10, 20, 30])}")

    # tiny tasks: batches of elements per remote call are much faster
    many = pmap(lambda x: x + 1, range(100_000), batch_size="auto")
    print(f"batched: {len(many)} results, last {many[-1]}")

    # errors: returned inline, replaced by a value, or raised (a RemoteException)
    print(f"inline: {pmap(odd_or_fail, range(1, 5), on_error=lambda e: e)}")
    print(f"zeros: {pmap(odd_or_fail, range(1, 5), on_error=lambda e: 0)}")

    # retries on another free worker, with growing delays
    out = pmap(flaky, range(8), retry_delays=ExponentialBackOff(n=10, first_delay=0.01))
    print(f"retried: {out}")

    # asyncmap: concurrent threads here, for waiting work (files, the network)
    sizes = asyncmap(lambda p: os.path.getsize(p), [__file__] * 3)
    print(f"asyncmap: {len(sizes)} sizes, all equal: {len(set(sizes)) == 1}")
