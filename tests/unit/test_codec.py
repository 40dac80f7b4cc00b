"""The codec: every message type round-trips; a bad body still yields its header."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from pydistributed import codec
from pydistributed.errors import ProtocolError
from pydistributed.messages import (
    MESSAGE_TYPES,
    Call,
    CallFetch,
    CallWait,
    DialMe,
    Exit,
    Identify,
    Interrupt,
    JoinComplete,
    JoinPGRP,
    MapCalls,
    MapCancel,
    MapResults,
    PeerUpdate,
    Ping,
    Pong,
    RefCount,
    RemoteDo,
    Result,
)
from tests.conftest import python_stdout

SAMPLES = [
    Call(1, 7, len, ([1, 2],), {"a": 1}),
    CallFetch(42, max, (1, 2), {}),
    CallWait(3, 1, 9, sorted, ([3, 1],), {"reverse": True}),
    RemoteDo(print, ("x",), {}),
    Result(42, True, {"v": [1, 2, 3]}),
    RefCount(adds=((1, 2, 3),), dels=((1, 2, 4), (5, 6, 7))),
    JoinPGRP(5, 2, "all_to_all", True, ((3, "127.0.0.1", 4000),), "localhost", ((3, b"k" * 32),)),
    JoinComplete(5, 1234, "host"),
    Identify(3, b"p" * 32),
    PeerUpdate(added=((4, "127.0.0.1", 5000),), removed=(2,), keys=((4, b"k" * 32),)),
    Interrupt(),
    Exit(),
    Ping(7),
    Pong(7),
    DialMe(3),
    MapCalls(-3, 10, 2, abs, [(-1,), (-2,)]),
    MapResults(-3, 10, 2, b"\x01\x00", [1, "error"], 0.25),
    MapCancel(-3),
]


def test_every_message_type_has_a_sample() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: object) -> None:
    frames, refs = codec.encode(msg, 2)  # type: ignore[arg-type]
    assert refs == []
    assert codec.decode([bytes(f) for f in frames]) == msg


def test_lambda_travels_by_value() -> None:
    k = 10
    frames, _ = codec.encode(CallFetch(1, lambda x: x + k, (1,), {}), 2)
    msg = codec.decode(frames)
    assert isinstance(msg, CallFetch)
    assert msg.f(*msg.args) == 11


def test_large_array_goes_out_of_band() -> None:
    arr = np.arange(1_000_000, dtype=np.float64)
    frames, _ = codec.encode(Result(1, True, arr), 2)
    assert len(frames) == 3  # header, body, the array's buffer
    assert len(frames[1]) < 1000  # the pickle holds no copy of the data
    back = codec.decode([bytes(frames[0]), bytes(frames[1]), bytearray(frames[2])])
    assert isinstance(back, Result)
    np.testing.assert_array_equal(back.value, arr)


def test_large_bytes_go_out_of_band_when_wrapped() -> None:
    data = bytes(range(256)) * 1024
    frames, _ = codec.encode(CallFetch(1, len, (codec.oob(data),), {}), 2)
    assert len(frames) == 3 and len(frames[1]) < 1000
    back = codec.decode([bytes(f) for f in frames])
    assert isinstance(back, CallFetch) and back.args[0] == data and type(back.args[0]) is bytes


class _Unloadable:
    def __reduce__(self) -> tuple[object, ...]:
        return (_boom, ())


def _boom() -> None:
    raise RuntimeError("cannot rebuild this")


@pytest.mark.parametrize(
    "msg",
    [CallFetch(77, len, (_Unloadable(),), {}), Call(3, 99, len, (_Unloadable(),), {})],
    ids=["CallFetch", "Call"],
)
def test_bad_body_still_yields_header(msg: object) -> None:
    frames, _ = codec.encode(msg, 2)  # type: ignore[arg-type]
    with pytest.raises(codec.DecodeError) as info:
        codec.decode(frames)
    err = info.value
    assert err.tag == type(msg).TAG  # type: ignore[attr-defined]
    if isinstance(msg, CallFetch):
        assert err.header == {"response_id": 77}
    else:
        assert err.header == {"whence": 3, "id": 99}
    assert "cannot rebuild this" in str(err)


def test_garbled_header_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        codec.decode([b"\x00" * 3, b""])
    with pytest.raises(ProtocolError):
        codec.decode([bytes([200]) + b"\x00" * 24, b""])


def test_unpicklable_body_raises_at_encode() -> None:
    import threading

    with pytest.raises((TypeError, pickle.PicklingError)):
        codec.encode(CallFetch(1, len, (threading.Lock(),), {}), 2)


def test_note_ref_collects_during_encode_only() -> None:
    class Ref:
        def __reduce__(self) -> tuple[object, ...]:
            codec.note_ref(self)
            assert codec.encoding_target() == 5
            return (int, (3,))

    r = Ref()
    _, refs = codec.encode(Result(1, True, [r]), 5)
    assert refs == [r]
    assert codec.encoding_target() is None


def _by_reference(x: int) -> int:
    return x


def test_plain_fast_path_matches_the_general_path() -> None:
    # builtins and a function of an importable module: the C pickler alone (codec._plain);
    # the body decodes to what the general path gives
    codec.dumps(_by_reference)  # cloudpickle's answer for it is cached: by reference
    msg = CallFetch(5, _by_reference, (1, "a", b"b", None, 2.5, [2, 3]), {"k": {"x": 1}})
    assert codec._plain((msg.f, msg.args, msg.kwargs))
    frames, refs = codec.encode(msg, 2)
    assert refs == [] and len(frames) == 2
    assert codec.decode(frames) == msg
    general = codec.dumps((msg.f, msg.args, msg.kwargs))
    assert pickle.loads(frames[1]) == pickle.loads(general)


def test_fast_path_leaves_the_rest_to_cloudpickle() -> None:
    local = lambda x: x + 1  # noqa: E731 - by value: never the plain path
    assert not codec._plain((local,))
    assert not codec._plain(([1] * 100,))  # too long to look through
    assert not codec._plain(({1: 2},))  # a dict with a key that is not a str
    assert not codec._plain((bytearray(b"x"),))  # may travel out of band
    frames, _ = codec.encode(CallFetch(1, local, (2,), {}), 2)
    back = codec.decode(frames)
    assert isinstance(back, CallFetch) and back.f(2) == 3


def test_a_method_of_an_object_is_never_plain() -> None:
    class Mine(list):  # type: ignore[type-arg]
        pass

    # its object's class may travel by value (cloudpickle), which the C pickler cannot do
    assert codec._plain((len, max)) and not codec._plain((Mine().append,))


_BEFORE_CLOUDPICKLE = r"""
import json, os.path, sys
from pydistributed import codec
from pydistributed.messages import CallFetch

def here(x):  # __main__: cloudpickle sends it by value
    return x

def shadowed(x):
    return x
other = shadowed
def shadowed(x):  # the name now finds another function
    return -x

out = {}
for name, f in [("join", os.path.join), ("here", here), ("shadowed", other),
                ("lambda", lambda: 1)]:
    out[name] = codec._plain((f, (1,), {}))
out["imported before"] = "cloudpickle" in sys.modules
frames, _ = codec.encode(CallFetch(1, os.path.join, ("a", "b")))
out["plain encode imports"] = "cloudpickle" in sys.modules
out["decoded"] = codec.decode(frames).f is os.path.join
codec.encode(CallFetch(2, here, ()))
out["by value imports"] = "cloudpickle" in sys.modules
out["after: join"] = codec._plain((os.path.join, (1,), {}))
print(json.dumps(out))
"""


def test_before_cloudpickle_is_imported_an_importable_function_goes_plain() -> None:
    """Until cloudpickle is needed, the codec decides itself that a function goes by reference
    (cloudpickle's rule, no module can have been registered to go by value yet); a function of
    ``__main__``, a lambda or one its name no longer finds is not plain. Once cloudpickle is
    imported, only what its Pickler found counts."""
    import json

    got = json.loads(python_stdout(_BEFORE_CLOUDPICKLE).splitlines()[-1])
    assert got == {
        "join": True,
        "here": False,
        "shadowed": False,
        "lambda": False,
        "imported before": False,
        "plain encode imports": False,
        "decoded": True,
        "by value imports": True,
        "after: join": False,  # not yet seen by the Pickler: the general path finds out
    }


_RACE = r"""
import os.path, sys, threading
from pydistributed import codec
from pydistributed.messages import CallFetch

errors = []
go = threading.Event()

def plain_calls():
    go.wait()
    try:
        for i in range(3000):
            codec.encode(CallFetch(i, os.path.join, ("a", "b")))
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=plain_calls) for _ in range(4)]
for t in threads:
    t.start()
go.set()
codec.encode(CallFetch(0, lambda: 1, ()))  # imports cpickler (and cloudpickle) meanwhile
for t in threads:
    t.join(60)
print(errors[:1])
"""


def test_plain_calls_while_another_thread_imports_cloudpickle() -> None:
    """The first message that needs cloudpickle imports it on its thread; calls encoded on
    other threads meanwhile see the codec's pickler module half made, and must not fail."""

    for _ in range(3):
        assert python_stdout(_RACE).splitlines()[-1] == "[]"


def test_classes_by_reference_are_remembered_and_local_classes_still_go_by_value() -> None:
    from pydistributed.cpickler import BY_REFERENCE
    from pydistributed.messages import MapCalls

    def local_class() -> type:
        class Local:
            def __init__(self) -> None:
                self.x = 3

        return Local

    cls = local_class()
    for _ in range(2):  # the second time from what the first one found out
        msg = MapCalls(-1, 0, 1, print, [(MapCalls, cls())])
        got = codec.decode(codec.encode(msg, 2)[0])
        assert got.items[0][0] is MapCalls and got.items[0][1].x == 3
        assert type(got.items[0][1]).__qualname__.endswith("Local")
    assert BY_REFERENCE.get(MapCalls) is True
    assert BY_REFERENCE.get(cls) is False
