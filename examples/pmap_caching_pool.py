"""A closure over big data, shipped once per worker with a CachingPool.

Julia::

    const foo = rand(10^8);
    wp = CachingPool(workers())
    let foo = foo
        pmap(i -> sum(foo) + i, wp, 1:100);
    end

A closure captures its data, and every remote call would send it again; a CachingPool sends
the function (and what it captures) to each worker once and reuses it until ``clear()`` (or
the end of a ``with`` block). Run: ``pydist -p 2 examples/pmap_caching_pool.py``.
"""

from pydistributed import CachingPool, pmap, workers
from pydistributed.cluster import current_cluster
from pydistributed.transport import SocketWriter


def bytes_sent() -> int:
    """Bytes this process has written to its workers so far (a look inside the runtime)."""
    c = current_cluster()
    writers = [c.connections.get(p).writer for p in workers()]
    return sum(w.bytes_sent for w in writers if isinstance(w, SocketWriter))  # local: TCP


if __name__ == "__main__":
    data = bytearray(50_000_000)  # 50 MB
    data[::1000] = b"\x01" * len(data[::1000])

    def weigh(i: int) -> int:
        return sum(data[: 1000 * (i + 1) : 1000]) + i  # reads the captured data

    with CachingPool(workers()) as pool:
        before = bytes_sent()
        out = pmap(weigh, pool, range(100))
        mb = (bytes_sent() - before) / 1e6
        print(f"results: {out[:3]} ... {out[-1]}")
        print(f"sent {mb:.0f} MB for 100 elements on {len(pool)} workers (not {50 * 100} MB)")
        before = bytes_sent()
        again = pmap(weigh, pool, range(100))
        print(f"again: same results {again == out}, sent {(bytes_sent() - before) / 1e6:.1f} MB")
    # the block's end cleared the workers' cache
