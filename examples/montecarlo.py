"""Count heads in many coin tosses, split over the workers (the Julia manual's example)::

    nheads = @distributed (+) for i = 1:200000000
        Int(rand(Bool))
    end

Each worker tosses its part of the range and adds up its own heads; the master adds up the
workers' sums. Run: ``pydist -p 2 examples/montecarlo.py [TOSSES]``.
"""

import operator
import random
import sys

from pydistributed import distributed, nworkers


def toss(_: int) -> int:
    """One coin toss: 1 for heads."""
    return random.getrandbits(1)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    nheads = distributed(toss, range(n), operator.add)
    print(f"{nheads} heads in {n} tosses on {nworkers()} workers: {nheads / n:.4f}")
