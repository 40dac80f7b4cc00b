"""Which functions a map sends by name in each message instead of through its function cache
(``pipelanes.pickles_by_name``): decided without pickling the function."""

from __future__ import annotations

import functools
import os.path

from pydistributed.pipelanes import pickles_by_name
from tests.conftest import python_stdout


def module_function(x: int) -> int:
    return x


class Callable:
    def __call__(self, x: int) -> int:
        return x


def test_functions_of_an_importable_module_and_builtins_go_by_name() -> None:
    assert pickles_by_name(module_function)
    assert pickles_by_name(os.path.join)
    assert pickles_by_name(len)


def test_closures_lambdas_and_other_callables_go_through_the_cache() -> None:
    data = list(range(10))

    def closure(x: int) -> int:
        return x + len(data)

    assert not pickles_by_name(closure)
    assert not pickles_by_name(lambda x: x)
    assert not pickles_by_name(functools.partial(module_function))
    assert not pickles_by_name(Callable())
    assert not pickles_by_name(Callable)  # a class: its instances are what it makes


def test_asked_before_cloudpickle_is_imported_it_stays_unimported() -> None:
    """Before cloudpickle is imported nothing can be registered by value: the codec's copy of
    cloudpickle's rule answers, and a map of an importable function imports no cloudpickle."""

    code = (
        "import sys, os.path\n"
        "from pydistributed.pipelanes import pickles_by_name\n"
        "assert 'cloudpickle' not in sys.modules\n"
        "print(pickles_by_name(os.path.join), pickles_by_name(lambda x: x),"
        " 'cloudpickle' in sys.modules)\n"
    )
    assert python_stdout(code).split() == ["True", "False", "False"]


def test_a_module_registered_by_value_goes_through_the_cache() -> None:
    import cloudpickle

    import tests.unit.test_pickles_by_name as me

    assert pickles_by_name(me.module_function)
    cloudpickle.register_pickle_by_value(me)
    try:
        assert not pickles_by_name(me.module_function)
    finally:
        cloudpickle.unregister_pickle_by_value(me)
    assert pickles_by_name(me.module_function)
