"""Julia's own Distributed test suite, ported: globals shipped with closures
(test/distributed_exec.jl, "Auto serialization of globals from Main." to "#6760").

Julia's "global in Main" is a global of this module read by a closure (shipped by value, with
the globals it reads); Julia's "defined on the master only" (a local struct or module) is a
module made here at run time, in ``sys.modules`` of the master only.
"""

from __future__ import annotations

import math
import random
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from pydistributed import (
    RemoteException,
    distributed,
    everywhere,
    fetch,
    fetchfrom,
    procs,
    remotecall_fetch,
    spawnat,
    sync,
    wait,
)
from tests.integration._julia import T, four_workers, main_has, master_only_module

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def four() -> Iterator[list[int]]:
    yield from four_workers()


# -- "Auto serialization of globals from Main." -----------------------------------------------

v1: Any = 1
v2: Any = None
v3: Any = None
v4: Any = None
v5: Any = None
v31252: Any = "a"
v2669 = 10


def test_globals_bitstypes(four: list[int]) -> None:
    global v1
    other = four[0]
    v1 = 1
    assert remotecall_fetch(lambda: v1, other) == v1
    # Julia: isdefined(Main, :v1) on the worker afterwards. API.md: the globals travel with
    # the function and are not defined in the worker's __main__
    assert not remotecall_fetch(main_has, other, "v1")
    for i in range(2, 6):
        v1 = i
        assert remotecall_fetch(lambda: v1, other) == i  # noqa: B023 (the global, now)


def test_globals_non_bitstypes(four: list[int]) -> None:
    global v2, v3, v4
    other = four[0]
    v2 = [0.0] * 10
    for i in range(5):
        v2[i] = i + 1
        assert remotecall_fetch(lambda: v2, other) == v2
    # "Different global bindings to the same object"
    v3 = [1.0] * 10
    v4 = v3
    assert remotecall_fetch(lambda: v3, other) == remotecall_fetch(lambda: v4, other)
    assert remotecall_fetch(lambda: v3 is v4, other)


def test_globals_types_and_modules(four: list[int]) -> None:
    # "Global references to Types and Modules should work if they are locally defined"
    global v5
    other = four[0]
    v5 = int
    assert remotecall_fetch(lambda: v5, other) is int
    v5 = math
    assert remotecall_fetch(lambda: v5, other) is math
    # a struct/module defined on the master only
    name = f"FooModLocal_{uuid.uuid4().hex}"
    v5 = master_only_module(name, "class FooStructLocal:\n    pass\n")
    try:
        with pytest.raises(RemoteException):
            remotecall_fetch(lambda: v5.FooStructLocal, other)
    finally:
        del sys.modules[name]
    # ... and one defined everywhere (@everywhere struct / module)
    ename = f"FooModEverywhere_{uuid.uuid4().hex}"
    code = (
        "import sys, types\n"
        f"m = types.ModuleType({ename!r})\n"
        "exec('class FooStructEverywhere:\\n    pass\\n', m.__dict__)\n"
        f"sys.modules[{ename!r}] = m\n"
    )
    everywhere(code)
    try:
        v5 = sys.modules[ename]
        assert remotecall_fetch(lambda: v5.__name__, other) == ename
        assert remotecall_fetch(lambda: v5.FooStructEverywhere.__name__, other) == (
            "FooStructEverywhere"
        )
    finally:
        everywhere(f"import sys\nsys.modules.pop({ename!r}, None)")


def test_issue_31252_global_symbol(four: list[int]) -> None:
    # "Github issue #31252" and "issue #27933"
    global v31252
    other = four[0]
    for value in ("a", "b", "a"):
        v31252 = value
        assert fetchfrom(other, lambda: v31252) == value  # noqa: B023 (the global, now)
    assert remotecall_fetch(lambda: v31252, four[0]) == "a"


def test_nested_anonymous_functions(four: list[int]) -> None:
    # "nested anon functions" (globals) and wrapped_var_ser_tests (locals)
    other = four[0]
    global_f1 = globals().setdefault("f1_jl", lambda x: x)
    globals()["f2_jl"] = lambda x: global_f1(x)
    f2 = globals()["f2_jl"]
    v = random.random()
    assert remotecall_fetch(f2, other, v) == v
    assert remotecall_fetch(lambda x: f2(x), other, v) == v

    lv1 = 1
    assert remotecall_fetch(lambda: lv1, other) == lv1
    assert not remotecall_fetch(main_has, other, "lv1")
    for i in range(2, 6):
        lv1 = i
        assert remotecall_fetch(lambda: lv1, other) == i  # noqa: B023 (shipped now)
    lv2 = [0.0] * 10
    for i in range(5):
        lv2[i] = i + 1
        assert remotecall_fetch(lambda: lv2, other) == lv2

    def lf1(x: Any) -> Any:
        return x

    def lf2(x: Any) -> Any:
        return lf1(x)

    assert remotecall_fetch(lf2, other, v) == v
    assert remotecall_fetch(lambda x: lf2(x), other, v) == v


def test_multiple_references_serialized_once(four: list[int]) -> None:
    # "Multiple references in a closure should be serialized only once."
    mrefs = [1.0] * 10
    got = remotecall_fetch(lambda: (mrefs, [2 * x for x in mrefs], mrefs is mrefs), four[0])
    assert got == ([1.0] * 10, [2.0] * 10, True)
    assert remotecall_fetch(lambda: (mrefs, mrefs)[0] is (mrefs, mrefs)[1], four[0])


def test_macros_with_globals(four: list[int]) -> None:
    # "#2669, #5390"
    assert fetch(spawnat("any", lambda: 1 + v2669), timeout=T) == 11
    # "#12367": @sync inside @spawnat on every process
    refs = []
    for p in procs():

        def body() -> None:
            from pydistributed import async_

            with sync():
                for _ in range(10):
                    async_(lambda: None)

        refs.append(spawnat(p, body))
    for r in refs:
        wait(r, timeout=T)
    # "#6760"
    a = 2
    x = distributed(lambda k: [math.sin(a)], range(1, 3), reducer=lambda p, q: p + q)
    assert x == [math.sin(2)] * 2
