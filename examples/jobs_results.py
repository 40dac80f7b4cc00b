"""Producers and consumers over two RemoteChannels: the Julia manual's jobs/results example.

The master feeds job ids into a ``jobs`` channel; one ``do_work`` loop per worker takes jobs,
"works" for a random while, and puts ``(job_id, exec_time, worker)`` into a ``results``
channel, which the master reads. Both channels live on the master; the workers reach them
through the RemoteChannel handles they were sent. Julia::

    const jobs = RemoteChannel(()->Channel{Int}(32));
    const results = RemoteChannel(()->Channel{Tuple}(32));

    @everywhere function do_work(jobs, results)
        while true
            job_id = take!(jobs)
            exec_time = rand()
            sleep(exec_time)
            put!(results, (job_id, exec_time, myid()))
        end
    end

    errormonitor(@async make_jobs(n))
    for p in workers()
        remote_do(do_work, p, jobs, results)
    end
    while n > 0
        job_id, exec_time, where = take!(results)
        ...

One difference: here the master closes ``jobs`` once every job is in, so that each worker's
loop (iterating over the channel) ends by itself instead of running for ever.

Run: ``pydist -p 2 examples/jobs_results.py [N_JOBS]`` (or ``python -m pydistributed -p 2 ...``).
"""

import random
import sys
import time

from pydistributed import Channel, RemoteChannel, async_, myid, put, remote_do, take, workers

Result = tuple[int, float, int]  # (job_id, exec_time, worker)


def do_work(jobs: RemoteChannel[int], results: RemoteChannel[Result]) -> None:
    """Take jobs until the channel is closed and empty; put one result per job."""
    for job_id in jobs:
        exec_time = random.random() / 10
        time.sleep(exec_time)  # simulates the time the real work would take
        put(results, (job_id, exec_time, myid()))


def make_jobs(jobs: RemoteChannel[int], n: int) -> None:
    """Feed ``n`` job ids, then close the channel: no more jobs."""
    for i in range(1, n + 1):
        put(jobs, i)
    jobs.close()


def main(n: int) -> None:
    jobs: RemoteChannel[int] = RemoteChannel(lambda: Channel(32))
    results: RemoteChannel[Result] = RemoteChannel(lambda: Channel(32))

    start = time.monotonic()
    feeder = async_(make_jobs, jobs, n)  # feed the jobs channel with n jobs
    for p in workers():  # start tasks on the workers to process requests in parallel
        remote_do(do_work, p, jobs, results)

    left = n
    while left > 0:  # print out results
        job_id, exec_time, where = take(results, timeout=60)
        print(f"{job_id} finished in {exec_time:.2f} seconds on worker {where}")
        left -= 1
    feeder.wait(timeout=10)
    print(f"{n} jobs on {len(workers())} workers in {time.monotonic() - start:.2f} seconds")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
