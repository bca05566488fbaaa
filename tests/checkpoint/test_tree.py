"""State tree <-> JSON + tensors: exact round trips, tensor naming, refusals, hostile trees."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import enum
import json
import math
import pathlib
import random
import sys
import types

import numpy as np
import pytest
import torch

from resumable.checkpoint.tree import MAX_DEPTH, flatten_state, unflatten_state
from resumable.errors import CheckpointCorruptError, StateMismatchError, UnsupportedStateError


class Color(enum.Enum):
    RED = "red"
    BLUE = (1, 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Config:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.999)
    counted: int = dataclasses.field(default=0, init=False)

    @classmethod
    def counted_to(cls, n: int) -> "Config":
        config = cls()
        config.counted = n
        return config


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    index: int


def round_trip(state: dict) -> dict:
    """flatten -> strict JSON text -> unflatten, as a file would carry it."""
    tree, tensors = flatten_state(state)
    return unflatten_state(json.loads(json.dumps(tree, allow_nan=False)), tensors)


def assert_same(a, b, path="state"):
    """Equal values of exactly the same types, NaN equal to NaN, bytes of tensors equal."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), path
    elif isinstance(a, (np.ndarray, np.generic)):
        assert (a.dtype, a.shape) == (b.dtype, b.shape) and a.tobytes() == b.tobytes(), path
    elif dataclasses.is_dataclass(a):
        assert_same(dataclasses.asdict(a), dataclasses.asdict(b), path)
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for key in a:
            assert_same(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path
        if isinstance(a, float):
            assert math.copysign(1, a) == math.copysign(1, b), path


VALUES = {
    "none": None,
    "bools": [True, False],
    "ints": [0, -3, 2**100, -(2**70)],
    "floats": [1.5, -0.0, 1e-310, 1.7976931348623157e308],
    "non-finite floats": [math.nan, math.inf, -math.inf],
    "strings": ["", "héllo\n\"'\\", "\udc80 lone surrogate", "$tensor", "#x"],
    "nested lists": [[1, [2, [3, []]]], []],
    "tuples": (1, (2, "a"), (), (None,)),
    "int keys": {0: "a", 1: {2: "b"}},
    "odd keys": {True: 1, 1.5: 2, None: 3, (1, "a"): 4, "s": 5, -7: 6, Level.LOW: 7},
    "marker-like keys": {"__tensor__": 1, "$tensor": "x", "$dict": [], "#a": 2, "": 3},
    "frozen dataclass key": {Key("a", 1): "v"},
    "path": pathlib.Path("/tmp/some where/x.ckpt"),
    "timedelta": datetime.timedelta(days=-1, seconds=5, microseconds=7),
    "dtypes": [torch.bfloat16, torch.float8_e4m3fn, torch.int64, torch.bool],
    "sizes": [torch.Size([2, 0, 3]), torch.Size([])],
    "sets": [{3, 1, 2}, {1, "a", None}, set(), frozenset({"a", "b"})],
    "numpy scalars": [np.float32(1.25), np.int8(-3), np.uint64(2**64 - 1), np.bool_(True),
                      np.float16(0.1), np.complex128(1 + 2j), np.float64("nan"), np.complex64(3j)],
    "enums": [Color.RED, Color.BLUE, Level.HIGH],
    "dataclasses": [Config(lr=0.5), Config(betas=(Color.RED, torch.zeros(2))), Key("k", 2)],
    "init=False field": Config.counted_to(5),
    "python rng": random.Random(1).getstate(),
    "numpy legacy rng": np.random.RandomState(1).get_state(),
    "numpy generator rng": np.random.default_rng(1).bit_generator.state,
    "torch rng": torch.Generator().manual_seed(1).get_state(),
}


@pytest.mark.parametrize("value", VALUES.values(), ids=VALUES.keys())
def test_values_round_trip_exactly(value):
    state = {"value": value, "again": [value]}
    assert_same(round_trip(state), state)


TENSORS = {
    **{str(dtype): torch.arange(24).to(dtype).reshape(2, 3, 4) for dtype in (
        torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
        torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64,
        torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64)},
    "bool": torch.tensor([[True, False], [False, True]]),
    "0-d": torch.tensor(3.5),
    "empty": torch.zeros(0, 5),
    "transposed": torch.arange(12.0).reshape(3, 4).t(),
    "offset slice": torch.arange(10.0)[3:7],
    "expanded": torch.ones(3, 1).expand(3, 4),
    "requires grad": torch.ones(2, requires_grad=True),
    "parameter": torch.nn.Parameter(torch.ones(2)),
    "nan payload": torch.tensor([math.nan, -math.inf]),
}


@pytest.mark.parametrize("tensor", TENSORS.values(), ids=TENSORS.keys())
def test_tensors_round_trip_as_contiguous_cpu_tensors(tensor):
    back = round_trip({"t": tensor})["t"]
    assert back.is_contiguous() and back.device.type == "cpu" and not back.requires_grad
    assert_same(back, tensor.detach().contiguous().as_subclass(torch.Tensor))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_saved_from_cpu():
    tree, tensors = flatten_state({"t": torch.arange(4.0, device="cuda")})
    assert tensors["#t"].device.type == "cpu" and tensors["#t"].tolist() == [0, 1, 2, 3]


ARRAYS = {
    "uint32 rng key": np.arange(624, dtype=np.uint32),
    "0-d": np.array(2.5),
    "empty": np.zeros((0, 3), dtype=np.int16),
    "bool": np.array([True, False]),
    "complex": np.array([1 + 2j], dtype=np.complex128),
    "fortran order": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "strided view": np.arange(20, dtype=np.int64)[::3],
    "read-only": np.frombuffer(b"\x01\x02\x03\x04", dtype=np.uint8),
}


@pytest.mark.parametrize("array", ARRAYS.values(), ids=ARRAYS.keys())
def test_numpy_arrays_round_trip_as_arrays(array):
    back = round_trip({"a": array})["a"]
    assert type(back) is np.ndarray and back.dtype == array.dtype and back.shape == array.shape
    assert np.array_equal(back, array) and back.flags.writeable


def test_big_endian_arrays_come_back_little_endian_with_equal_values():
    back = round_trip({"a": np.arange(3, dtype=">i4")})["a"]
    assert back.dtype == np.dtype("<i4") and back.tolist() == [0, 1, 2]


def test_rng_states_restore_the_generators():
    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    back = round_trip({"rng": states})["rng"]
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    torch.set_rng_state(back["torch"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_ordered_dicts_come_back_as_dicts_in_the_same_order():
    back = round_trip({"d": collections.OrderedDict([("b", 1), ("a", 2)])})["d"]
    assert type(back) is dict and list(back.items()) == [("b", 1), ("a", 2)]


def test_state_dict_tensors_keep_their_plain_names_and_others_get_hash_names():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 2)).sum().backward()
    optimizer.step()
    _, tensors = flatten_state({"state_dict": model.state_dict(),
                                "optimizer_states": [optimizer.state_dict()]})
    plain = {name for name in tensors if not name.startswith("#")}
    assert plain == set(model.state_dict())
    assert "#optimizer_states/0/state/0/exp_avg" in tensors


@pytest.mark.parametrize("key", ["#sneaky", "__metadata__"])
def test_state_dict_keys_that_would_collide_get_hash_names(key):
    _, tensors = flatten_state({"state_dict": {key: torch.ones(1)}})
    assert list(tensors) == [f"#state_dict/{key}"]


def test_colliding_paths_get_distinct_names():
    state = {"d": {0: torch.zeros(1), "0": torch.ones(1)}, "a/b": torch.full((1,), 2.0),
             "a": {"b": torch.full((1,), 3.0)}}
    tree, tensors = flatten_state(state)
    assert len(tensors) == 4
    assert_same(unflatten_state(tree, tensors), state)


def test_shared_tensors_are_stored_twice_and_restored_equal():
    shared = torch.arange(3.0)
    back = round_trip({"a": shared, "b": shared})
    assert torch.equal(back["a"], back["b"])


def _fake_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    class Mode(enum.Enum):
        FAST = "fast"

    @dataclasses.dataclass
    class Opts:
        size: int = 1

    for cls in (Mode, Opts):
        cls.__module__, cls.__qualname__ = name, cls.__name__
        setattr(module, cls.__name__, cls)
    return module


def test_classes_of_modules_not_imported_come_back_as_plain_data(monkeypatch):
    module = _fake_module("resumable_test_fake_module")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    tree, tensors = flatten_state({"mode": module.Mode.FAST, "opts": module.Opts(size=3)})
    assert unflatten_state(tree, tensors) == {"mode": module.Mode.FAST, "opts": module.Opts(3)}
    monkeypatch.delitem(sys.modules, module.__name__)
    assert unflatten_state(tree, tensors) == {"mode": "fast", "opts": {"size": 3}}


def test_loading_never_imports_the_named_module(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "resumable_test_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    tree = {"x": {"$enum": {"class": "resumable_test_evil:Thing", "value": 1}},
            "y": {"$dataclass": {"class": "resumable_test_evil:Data", "fields": {"a": 1}}}}
    assert unflatten_state(tree, {}) == {"x": 1, "y": {"a": 1}}
    assert not marker.exists() and "resumable_test_evil" not in sys.modules


def test_changed_enum_or_dataclass_raises_state_mismatch(monkeypatch):
    module = _fake_module("resumable_test_changing")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    tree, tensors = flatten_state({"mode": module.Mode.FAST, "opts": module.Opts()})
    replacement = _fake_module("resumable_test_changing")
    replacement.Mode = enum.Enum("Mode", {"SLOW": "slow"}, module=module.__name__)
    monkeypatch.setattr(module, "Mode", replacement.Mode)
    with pytest.raises(StateMismatchError, match="mode.*no longer a member"):
        unflatten_state(tree, tensors)
    del tree["mode"]
    monkeypatch.setattr(module, "Opts", dataclasses.make_dataclass("Opts", ["other"]))
    module.Opts.__module__ = module.__name__
    with pytest.raises(StateMismatchError, match="opts.*no longer accepts"):
        unflatten_state(tree, tensors)


Point = collections.namedtuple("Point", "x y")


class Holder:
    pass


class MyStr(str):
    pass


def _cycle():
    items: list = []
    items.append(items)
    return items


def _deep():
    value: list = []
    for _ in range(MAX_DEPTH + 1):
        value = [value]
    return value


UNSUPPORTED = {
    "lambda": ({"hyper_parameters": {"model": {"act": lambda x: x}}}, "hyper_parameters/model/act"),
    "object": ({"a": [1, Holder()]}, "a/1"),
    "module": ({"m": types}, "m"),
    "namedtuple": ({"p": Point(1, 2)}, "p"),
    "str subclass": ({"s": MyStr("x")}, "s"),
    "complex128 tensor": ({"t": torch.zeros(1, dtype=torch.complex128)}, "t"),
    "sparse tensor": ({"t": torch.zeros(2, 2).to_sparse()}, "t"),
    "object array": ({"a": np.array([object()])}, "a"),
    "datetime64 scalar": ({"d": np.datetime64("2024-01-01")}, "d"),
    "tensor key": ({"d": {torch.ones(1): 1}}, "d/<key>"),
    "cycle": ({"c": _cycle()}, "c/0"),
    "too deep": ({"deep": _deep()}, "deep/0/0"),
    "class object": ({"cls": Config}, "cls"),
}


@pytest.mark.parametrize(("state", "path"), UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_unsupported_values_name_their_path_and_the_fix(state, path):
    with pytest.raises(UnsupportedStateError) as caught:
        flatten_state(state)
    message = str(caught.value)
    assert f"cannot save {path}" in message and "Convert it to plain data" in message


def test_a_state_that_is_not_a_dict_is_refused():
    with pytest.raises(UnsupportedStateError, match="must be a dict"):
        flatten_state([1, 2])  # type: ignore[arg-type]


MALFORMED = {
    "unknown marker": {"x": {"$nope": 1}},
    "marker with other keys": {"x": {"$tuple": [], "a": 1}},
    "two markers": {"x": {"$tuple": [], "$set": []}},
    "tensor ref not a name": {"x": {"$tensor": 1}},
    "missing tensor": {"x": {"$tensor": "#absent"}},
    "dict pairs not pairs": {"x": {"$dict": [[1]]}},
    "dict not a list": {"x": {"$dict": {"a": 1}}},
    "bad float": {"x": {"$float": "1.0"}},
    "unhashable float text": {"x": {"$float": []}},
    "tuple not a list": {"x": {"$tuple": "ab"}},
    "array without shape": {"x": {"$ndarray": {"tensor": "#t", "dtype": "<f4"}}},
    "array bad dtype": {"x": {"$ndarray": {"tensor": "#t", "dtype": "|O", "shape": [1]}}},
    "array unhashable dtype": {"x": {"$ndarray": {"tensor": "#t", "dtype": [], "shape": [1]}}},
    "array wrong size": {"x": {"$ndarray": {"tensor": "#t", "dtype": "<f8", "shape": [3]}}},
    "array negative shape": {"x": {"$ndarray": {"tensor": "#t", "dtype": "<f4", "shape": [-1]}}},
    "scalar wrong type": {"x": {"$npscalar": ["<f8", "x"]}},
    "scalar overflow": {"x": {"$npscalar": ["|i1", 300]}},
    "scalar complex junk": {"x": {"$npscalar": ["<c8", ["a", "b"]]}},
    "scalar not a pair": {"x": {"$npscalar": "<f8"}},
    "dtype not a dtype": {"x": {"$dtype": "cuda"}},
    "dtype not a name": {"x": {"$dtype": ["float32"]}},
    "timedelta short": {"x": {"$timedelta": [1, 2]}},
    "timedelta overflow": {"x": {"$timedelta": [10**10, 0, 0]}},
    "size negative": {"x": {"$size": [-1]}},
    "path not a string": {"x": {"$path": 3}},
    "enum class not a string": {"x": {"$enum": {"class": 3, "value": 1}}},
    "dataclass fields not a dict": {"x": {"$dataclass": {"class": "m:C", "fields": [1]}}},
    "top level not a dict": [1, 2],
}


@pytest.mark.parametrize("tree", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_trees_raise_corrupt(tree):
    uses_t = '"#t"' in json.dumps(tree)  # only then is there a tensor, so none is ever unused
    tensors = {"#t": torch.zeros(4, dtype=torch.uint8)} if uses_t else {}
    with pytest.raises(CheckpointCorruptError):
        unflatten_state(tree, tensors)


def test_a_tensor_the_tree_never_names_raises_corrupt():
    with pytest.raises(CheckpointCorruptError, match="not part of the state.*#extra"):
        unflatten_state({"x": 1}, {"#extra": torch.zeros(1)})
