"""The first job: each worker reports its id, host and OS process id, computed on the worker.

pydist -p 2 examples/hello.py
"""

import os
import socket

from pydistributed import myid, remotecall_fetch, workers


def whoami() -> str:
    """Where this runs: the process id in the cluster, the host, the OS process id."""
    return f"process {myid()} on {socket.gethostname()}, os pid {os.getpid()}"


if __name__ == "__main__":
    for pid in workers():
        print(f"worker {pid}: {remotecall_fetch(whoami, pid)}")
    print(f"master: {whoami()}")
