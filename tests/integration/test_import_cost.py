"""What importing pydistributed, and starting a local worker, imports (W4, the cold start).

Nothing here is timed: each test runs a fresh interpreter and looks at ``sys.modules``. A module
that a change starts importing eagerly shows up as a failure naming it. The interpreter's own
start (``site`` and the ``.pth`` files of this machine) is the baseline: what a bare ``python -c``
has imported already is not counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydistributed
from tests.conftest import python_stdout

SRC = str(Path(pydistributed.__file__).resolve().parent.parent)
BENCH = str(Path(__file__).resolve().parents[2] / "bench")

# stdlib and third-party modules that serving calls on a local worker does not need
HEAVY = (
    "argparse",
    "asyncio",
    "concurrent.futures",
    "email",
    "getpass",
    "multiprocessing",
    "subprocess",
    "tempfile",
    "urllib.parse",
    "zipfile",
)
# pydistributed modules that neither a worker nor the cold start's master needs
OPTIONAL = (
    "pydistributed.asyncmap",
    "pydistributed.cli",
    "pydistributed.clearing",
    "pydistributed.executor",
    "pydistributed.joblib",
    "pydistributed.macros",
    "pydistributed.managers.elastic",
    "pydistributed.managers.mpi",
    "pydistributed.managers.slurm",
    "pydistributed.managers.ssh",
    "pydistributed.managers.sshbootstrap",
    "pydistributed.mapping",
    "pydistributed.pipeline",
    "pydistributed.pmap",
    "pydistributed.workerpool",
)


def _run(code: str) -> object:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, BENCH, env.get("PYTHONPATH", "")])
    env.pop("PYDIST_SPAWN", None)
    out = python_stdout(code, env, timeout=120)
    return json.loads(out.splitlines()[-1])


def _baseline() -> set[str]:
    got = _run("import json, sys; print(json.dumps(sorted(sys.modules)))")
    assert isinstance(got, list)
    return set(got) | {"json", "json.decoder", "json.encoder", "json.scanner", "_json"}


def test_import_pydistributed_imports_no_submodule_and_nothing_heavy() -> None:
    base = _baseline()
    got = _run("import pydistributed, json, sys; print(json.dumps(sorted(sys.modules)))")
    assert isinstance(got, list)
    new = set(got) - base
    assert sorted(m for m in new if m.startswith("pydistributed")) == ["pydistributed"]
    assert sorted(m for m in HEAVY if m in new) == []
    assert "cloudpickle" not in new and "ssl" not in new and "logging" not in new


def test_the_cold_start_master_imports_only_what_it_uses() -> None:
    base = _baseline()
    got = _run(
        "from pydistributed import addprocs, remotecall_fetch, rmprocs\n"
        "import json, sys\n"
        "from pydistributed import messages\n"
        "dc = [c.__name__ for c in messages.MESSAGE_TYPES.values()\n"
        "      if hasattr(c, '__dataclass_fields__')]\n"
        "print(json.dumps([sorted(sys.modules), dc]))\n"
    )
    assert isinstance(got, list)
    modules, dataclass_messages = got
    new = set(modules) - base
    assert sorted(m for m in OPTIONAL if m in new) == []
    # it starts processes, and its Futures are concurrent.futures.Future objects
    needed = ("subprocess", "concurrent.futures")
    assert sorted(m for m in HEAVY if m in new and m not in needed) == []
    assert dataclass_messages == []  # built on the hot path: plain classes (messages.py)
    # imported where needed: cloudpickle by the first message plain pickle cannot take (or
    # while the forkserver starts), ssl by a TLS link, ctypes by an interrupt or a large bytes
    assert sorted(m for m in ("cloudpickle", "ctypes", "ssl") if m in new) == []
    # the runtime comes with addprocs, which imports it while the forkserver starts
    assert sorted(m for m in ("pydistributed.cluster", "pydistributed.transport") if m in new) == []


def test_the_forkserver_and_a_forked_worker_import_only_the_runtime() -> None:
    """The forkserver's imports, and a forked worker's: after the fork it imports only the
    module of the function it is called with, never the runtime again. A worker forked at
    once (a cold start waits for it) has not imported cloudpickle: the forkserver imports it
    once idle (``LATER_IDLE``), for the workers forked after."""
    base = _baseline()
    got = _run(
        "import json, sys, time\n"
        "import pydistributed.forkserver as fs\n"
        "fs._preload()\n"
        "fs._preload_later()\n"
        "preload = sorted(sys.modules)\n"
        "for m in [m for m in sys.modules if m.startswith('pydistributed')]:\n"
        "    del sys.modules[m]\n"
        "from pydistributed import addprocs, remotecall_fetch, rmprocs\n"
        "from _funcs import identity\n"
        "mods = \"list(__import__('sys').modules)\"\n"
        "early = addprocs(1)\n"
        "try:\n"
        "    early_started = remotecall_fetch(eval, early[0], mods)\n"
        "    time.sleep(3 * fs.LATER_IDLE)\n"
        "    ws = addprocs(1)\n"
        "    try:\n"
        "        started = remotecall_fetch(eval, ws[0], mods)\n"
        "        assert remotecall_fetch(identity, ws[0], 7) == 7\n"
        "        called = remotecall_fetch(eval, ws[0], mods)\n"
        "    finally:\n"
        "        rmprocs(ws)\n"
        "finally:\n"
        "    rmprocs(early)\n"
        "print(json.dumps([preload, sorted(early_started), sorted(started), sorted(called)]))\n"
    )
    assert isinstance(got, list)
    preload, early_started, started, called = (set(x) for x in got)
    new = preload - base
    assert sorted(m for m in OPTIONAL if m in new) == []
    assert sorted(m for m in HEAVY if m in new) == []
    master_only = ("pydistributed.managers.forkspawn", "pydistributed.relay")
    assert sorted(m for m in master_only if m in new) == []
    assert "pydistributed.serve" in new and "cloudpickle" in new  # what serving needs
    # and what a worker builds before its banner (else each child imports it after the fork)
    assert "pydistributed.cluster" in new and "pydistributed.dispatch" in new
    # WorkerConfig, a dataclass, is made on first use: a worker of a cold start has no
    # dataclasses, no inspect (~5 ms; cloudpickle brings them later, once the forkserver idles)
    assert sorted(m for m in ("dataclasses", "inspect") if m in early_started - base) == []
    assert "cloudpickle" not in early_started  # (nor did its handshake import it)
    assert "cloudpickle" in started and "pydistributed.cpickler" in started
    assert sorted(m for m in HEAVY + OPTIONAL if m in started - base) == []
    assert "ssl" not in called - base  # no TLS here (ctypes it has: prctl, dying with its parent)
    assert sorted(called - started) == ["_funcs"]
