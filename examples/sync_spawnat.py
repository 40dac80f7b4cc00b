"""Start a call on every worker with ``spawnat`` and wait for all of them with ``sync``.

Julia::

    @sync for p in workers()
        @spawnat p work(p)
    end

The calls run at the same time: the block takes about as long as one of them. Run:
``pydist -p 2 examples/sync_spawnat.py``.
"""

import os
import time

from pydistributed import myid, spawnat, sync, workers


def work(seconds: float) -> str:
    """Pretend to work for a while; say where."""
    time.sleep(seconds)
    return f"process {myid()} (os pid {os.getpid()}) slept {seconds} s"


if __name__ == "__main__":
    start = time.monotonic()
    with sync():
        futures = [spawnat(p, work, 0.5) for p in workers()]
    elapsed = time.monotonic() - start
    for fut in futures:
        print(fut.fetch())
    print(f"{len(futures)} calls of 0.5 s each, all done in {elapsed:.1f} s")
