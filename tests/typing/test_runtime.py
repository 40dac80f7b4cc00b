"""The typing that shows at run time: generic classes, py.typed, addprocs's signature."""

from __future__ import annotations

import inspect
import sys
import typing
from pathlib import Path

import pytest

import pydistributed
from pydistributed import AbstractChannel, Channel, Future, RemoteChannel, addprocs, nprocs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only; pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cls", [Future, RemoteChannel, Channel, AbstractChannel])
def test_references_and_channels_are_generic_at_run_time(cls: type) -> None:
    alias = cls[int]  # type: ignore[index]
    assert typing.get_origin(alias) is cls
    assert typing.get_args(alias) == (int,)
    assert len(cls.__parameters__) == 1  # type: ignore[attr-defined]


def test_a_parametrized_channel_is_a_channel() -> None:
    ch = Channel[int](2)
    ch.put(1)
    assert isinstance(ch, Channel)
    assert ch.take(timeout=5) == 1


def test_a_parametrized_future_works_on_this_process() -> None:
    fut = Future[int]()  # slots: no __orig_class__, which typing then skips
    fut.put(3)
    assert isinstance(fut, Future)
    assert fut.fetch(timeout=5) == 3


def test_the_package_is_marked_typed() -> None:
    assert (Path(pydistributed.__file__).parent / "py.typed").is_file()
    with (ROOT / "pyproject.toml").open("rb") as f:
        package_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["pydistributed"]


def test_addprocs_spells_out_its_keywords() -> None:
    params = inspect.signature(addprocs).parameters
    for name in (
        "restrict",
        "dir",
        "exename",
        "exeflags",
        "topology",
        "lazy",
        "enable_threaded_blas",
        "env",
        "tunnel",
        "multiplex",
        "sshflags",
        "max_parallel",
        "shell",
    ):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert params["restrict"].default is True
    assert params["topology"].default == "all_to_all"
    assert params["max_parallel"].default == 10


@pytest.mark.parametrize(
    ("kw", "name"),
    [({"tunnel": True}, "tunnel"), ({"bogus": 1}, "bogus"), ({"shell": "csh"}, "shell")],
)
def test_addprocs_refuses_keywords_its_form_does_not_take(kw: dict[str, object], name: str) -> None:
    before = nprocs()
    with pytest.raises(TypeError, match=name):
        addprocs(1, **kw)  # type: ignore[call-overload]
    assert nprocs() == before  # refused before anything started
