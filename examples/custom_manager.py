"""A ClusterManager of one's own: workers on this host, started under ``nice``.

A launcher of your own (a scheduler's submit command, a container runtime, a wrapper script)
fits the same mould: start ``python -m pydistributed.worker``, give it the cookie on its
standard input, and announce it with a WorkerConfig whose ``io`` is its standard output, where
it prints the address the master connects to.

python examples/custom_manager.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

from pydistributed import (
    ClusterManager,
    WorkerConfig,
    addprocs,
    pmap,
    remotecall_fetch,
    rmprocs,
)


class NiceManager(ClusterManager):
    """Starts ``np`` workers on this host at a lower priority (``nice -n NICENESS``)."""

    # the keywords of addprocs that this manager takes, besides the common ones
    extra_params = frozenset({"niceness"})

    def __init__(self, np: int) -> None:
        self.np = np
        self.events: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def launch(
        self,
        params: dict[str, Any],
        launched: list[WorkerConfig],
        launch_ntfy: threading.Condition,
    ) -> None:
        niceness = int(params.get("niceness", 10))
        exename = params["exename"] or sys.executable
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(params["env"] or {})
        cmd = ["nice", "-n", str(niceness), str(exename), "-m", "pydistributed.worker"]
        for _ in range(self.np):
            proc = subprocess.Popen(
                [*cmd, "--bind-to", "127.0.0.1"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=params["dir"] or os.getcwd(),
                env=env,
                start_new_session=True,  # Ctrl-C in the terminal is the master's to relay
            )
            assert proc.stdin is not None
            proc.stdin.write((params["cookie"] + "\n").encode())  # never on a command line
            proc.stdin.close()
            config = WorkerConfig(
                io=proc.stdout,  # the master reads "pydist_worker:PORT#HOST" there
                process=proc,  # its stderr is relayed; killed if it fails to start
                ospid=proc.pid,  # nice execs the interpreter: the same process
                userdata={"niceness": niceness},
            )
            with launch_ntfy:
                launched.append(config)
                launch_ntfy.notify_all()

    def manage(self, pid: int, config: WorkerConfig, op: str) -> None:
        with self._lock:
            self.events.append((pid, op))

    def kill(self, pid: int, config: WorkerConfig) -> None:
        # rmprocs asks here instead of sending the worker an Exit message
        config.process.send_signal(signal.SIGTERM)


def square(x: int) -> int:
    return x * x


if __name__ == "__main__":
    manager = NiceManager(2)
    pids = addprocs(manager, niceness=5)
    print("workers:", pids)
    mine = os.nice(0)
    print("niceness above the master's:", [remotecall_fetch(os.nice, p, 0) - mine for p in pids])
    print("sum of squares:", sum(pmap(square, range(100))))
    rmprocs(pids, waitfor=20)
    for op in ("register", "deregister"):
        print(f"{op}:", sorted(pid for pid, what in manager.events if what == op))
