"""The public names: everything API.md promises is importable from the top level.

REQUIRED is API.md's list, copied by hand (CI runs in a fresh clone and does not read API.md):
every Python name in its tables that is not a method, an attribute or a keyword argument. When
API.md gains or loses a name, change REQUIRED with it.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import pydistributed
from tests.conftest import python_stdout

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only; pytest itself depends on tomli there
    import tomli as tomllib

REQUIRED = (
    # Processes
    "addprocs",
    "nprocs",
    "nworkers",
    "procs",
    "workers",
    "myid",
    "rmprocs",
    "interrupt",
    # Remote calls
    "remotecall",
    "remotecall_wait",
    "remotecall_fetch",
    "remote_do",
    "remote",
    "spawnat",
    "spawn",
    "fetchfrom",
    "everywhere",
    "distributed",
    "sync",
    "async_",
    "timedwait",
    "Task",
    # References
    "Future",
    "RemoteChannel",
    "Channel",
    "AbstractChannel",
    "put",
    "take",
    "fetch",
    "isready",
    "wait",
    "remoteref_id",
    "RRID",
    "channel_from_id",
    "clear",
    # Pools and parallel map
    "WorkerPool",
    "CachingPool",
    "default_worker_pool",
    "AbstractWorkerPool",
    "pmap",
    "asyncmap",
    "ExponentialBackOff",
    # Additions for the second release
    "Executor",
    # Cluster managers
    "ClusterManager",
    "WorkerConfig",
    "LocalManager",
    "SSHManager",
    "DefaultClusterManager",
    "init_worker",
    "start_worker",
    "process_messages",
    "cluster_cookie",
    "worker_id_from_socket",
    # Errors
    "RemoteException",
    "CapturedException",
    "ProcessExitedException",
    "CompositeException",
    "InterruptException",
)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def isort_style_key(name: str) -> tuple[int, list[str | int]]:
    """The order ruff's RUF022 wants for ``__all__``, so that this test and ruff agree.

    CONSTANT names (more than one character, all cased characters upper case) first, then
    CamelCase, then the rest; within each group a natural sort (runs of digits as numbers).
    """
    if len(name) > 1 and name.upper() == name and name.lower() != name:
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    # re.split with a capturing group alternates text, digits, text, ...: str and int never
    # meet at the same position.
    parts = re.split(r"(\d+)", name)
    return group, [int(p) if i % 2 else p for i, p in enumerate(parts)]


def test_required_list_has_no_duplicates() -> None:
    assert len(set(REQUIRED)) == len(REQUIRED)


@pytest.mark.parametrize("name", REQUIRED)
def test_importable_from_top_level(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from pydistributed import {name}", namespace)
    obj = namespace[name]
    # `from pydistributed import pmap` also succeeds by importing the submodule
    # pydistributed.pmap when __init__ does not bind the function: that is not the API.
    assert not isinstance(obj, types.ModuleType), f"pydistributed.{name} is a module"
    assert callable(obj), f"pydistributed.{name} is not callable: {obj!r}"


def test_all_is_sorted() -> None:
    assert list(pydistributed.__all__) == sorted(pydistributed.__all__, key=isort_style_key)


def test_all_has_no_duplicates() -> None:
    duplicates = sorted({n for n in pydistributed.__all__ if pydistributed.__all__.count(n) > 1})
    assert duplicates == []


def test_all_contains_every_required_name() -> None:
    assert sorted(set(REQUIRED) - set(pydistributed.__all__)) == []


def test_every_name_in_all_resolves() -> None:
    unresolved = [n for n in pydistributed.__all__ if not hasattr(pydistributed, n)]
    assert unresolved == []
    modules = [
        n for n in pydistributed.__all__ if isinstance(getattr(pydistributed, n), types.ModuleType)
    ]
    assert modules == []


def test_pydist_console_script_is_declared() -> None:
    with PYPROJECT.open("rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["pydist"] == "pydistributed.cli:main"


def test_pydist_console_script_target_exists() -> None:
    from pydistributed import cli

    assert callable(cli.main)


def test_submodules_are_attributes_of_the_package_on_first_use() -> None:
    """The package imports its names lazily; a submodule is still reached as an attribute
    (``pydistributed.managers.SlurmManager``), and an unknown name is an AttributeError."""
    code = (
        "import pydistributed as pd\n"
        "print(pd.managers.SlurmManager.__name__, pd.cluster.__name__, callable(pd.pmap))\n"
        "try:\n"
        "    pd.no_such_name\n"
        "except AttributeError as e:\n"
        "    print('AttributeError', e)\n"
    )
    out = python_stdout(code).splitlines()
    assert out[0] == "SlurmManager pydistributed.cluster True"
    assert out[1] == "AttributeError module 'pydistributed' has no attribute 'no_such_name'"
