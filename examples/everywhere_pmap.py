"""Define a function on every process with ``everywhere``, then ``pmap`` over the workers.

Julia::

    @everywhere function count_heads(n) ... end
    pmap(count_heads, fill(100_000, 8))

The code string runs in ``__main__`` of each process (this one included); ``at_worker`` looks
``count_heads`` up in the ``__main__`` of the worker it runs on. Run:
``pydist -p 2 examples/everywhere_pmap.py``.
"""

from pydistributed import everywhere, myid, pmap


def at_worker(n: int) -> tuple[int, int]:
    """Count heads with the worker's own ``count_heads``; say which worker did it."""
    import __main__

    return myid(), __main__.count_heads(n)


if __name__ == "__main__":
    everywhere(
        """
import random

def count_heads(n):
    return sum(random.getrandbits(1) for _ in range(n))
"""
    )
    n, jobs = 100_000, 8
    results = pmap(at_worker, [n] * jobs)
    heads = sum(h for _, h in results)
    print(f"workers used: {sorted({pid for pid, _ in results})}")
    print(f"{heads} heads in {n * jobs} tosses: {heads / (n * jobs):.4f}")
