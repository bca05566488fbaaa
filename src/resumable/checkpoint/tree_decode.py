"""Decoding a checkpoint's JSON tree plus named tensors back into its state: `unflatten_state`.

`resumable.checkpoint.tree` describes the encoding; `resumable.checkpoint.tree_encode` writes it.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import pathlib
import sys
import types
from typing import Any

import numpy as np
import torch

from resumable.checkpoint.tree_encode import _NUMPY_DTYPES, _class_id, _show
from resumable.errors import CheckpointCorruptError, StateMismatchError

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def unflatten_state(tree: Any, tensors: dict[str, torch.Tensor]) -> dict:
    """Rebuild the state `flatten_state` split into `tree` and `tensors`.

    Tuples, dicts with any keys, non-finite floats, numpy arrays and scalars (as numpy, same
    dtype), paths, torch dtypes and sizes, timedeltas and sets come back as they were saved; the
    returned tensors are the ones in `tensors`, not copies.

    `tree` may come from a stranger's file, so it is validated as it is read: a malformed tree, a
    tensor it names but `tensors` lacks, or a tensor in `tensors` it never names raises
    `CheckpointCorruptError`. An enum value that is no longer a member of its (imported) enum, or a
    dataclass that no longer accepts its saved fields, raises `StateMismatchError`.
    """
    decoder = _Decoder(tensors)
    state = decoder.decode(tree, "")
    if not isinstance(state, dict):
        raise CheckpointCorruptError(f"the state tree is a {type(state).__name__}, not a dict")
    unused = sorted(set(tensors) - decoder.used)
    if unused:
        raise CheckpointCorruptError(
            f"{len(unused)} tensor(s) are stored but not part of the state, e.g. {unused[0]!r}"
        )
    return state


class _Decoder:
    """Decodes one (possibly hostile) tree; records which tensors it used."""

    # Marker "$x" is decoded by method "_x", looked up when needed: a dict of bound methods would
    # be a reference cycle keeping the tensors, and so a mapped file, alive until a gc run.
    _MARKERS = frozenset({"$tensor", "$ndarray", "$npscalar", "$float", "$dict", "$tuple", "$set",
                          "$frozenset", "$size", "$dtype", "$timedelta", "$path", "$enum",
                          "$dataclass"})

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.used: set[str] = set()

    def decode(self, node: Any, path: str) -> Any:
        if node is None or type(node) in (bool, int, float, str):
            return node
        if type(node) is list:
            return [self.decode(v, f"{path}/{i}") for i, v in enumerate(node)]
        if type(node) is not dict:
            raise _malformed(path, f"unexpected {type(node).__name__}")
        if not any(k.startswith("$") for k in node):
            return {k: self.decode(v, f"{path}/{k}") for k, v in node.items()}
        if len(node) != 1 or next(iter(node)) not in self._MARKERS:
            raise _malformed(path, f"unknown marker keys {sorted(node)[:3]}")
        marker, payload = next(iter(node.items()))
        return getattr(self, "_" + marker[1:])(payload, path)

    def _tensor(self, name: Any, path: str) -> torch.Tensor:
        if type(name) is not str:
            raise _malformed(path, "a tensor reference that is not a name")
        if name not in self.tensors:
            raise CheckpointCorruptError(f"the state needs tensor {name!r} at {_show(path)}, "
                                         "but the file does not contain it")
        self.used.add(name)
        return self.tensors[name]

    def _ndarray(self, payload: Any, path: str) -> np.ndarray:
        if type(payload) is not dict or set(payload) != {"tensor", "dtype", "shape"}:
            raise _malformed(path, "an array without exactly tensor, dtype and shape")
        dtype, shape = _numpy_dtype(payload["dtype"], path), payload["shape"]
        if not _is_sizes(shape):
            raise _malformed(path, f"array shape {str(shape)[:80]} is not a list of sizes")
        raw = self._tensor(payload["tensor"], path)
        nbytes = math.prod(shape) * dtype.itemsize
        if raw.dtype != torch.uint8 or raw.dim() != 1 or raw.numel() != nbytes:
            raise _malformed(path, f"array bytes do not match shape {shape} of {dtype}")
        return raw.numpy().view(dtype).reshape(shape).copy()  # copy: aligned and independent

    def _npscalar(self, payload: Any, path: str) -> np.generic:
        if type(payload) is not list or len(payload) != 2:
            raise _malformed(path, "a numpy scalar that is not [dtype, value]")
        dtype, value = _numpy_dtype(payload[0], path), self.decode(payload[1], path)
        if dtype.kind == "c" and type(value) is list and [type(v) for v in value] == [float, float]:
            value = complex(*value)
        if type(value) is not {"b": bool, "i": int, "u": int, "f": float, "c": complex}[dtype.kind]:
            raise _malformed(path, f"a {dtype} scalar holding {type(value).__name__}")
        try:
            return dtype.type(value)
        except OverflowError:
            raise _malformed(path, f"{value} does not fit {dtype}") from None

    def _float(self, text: Any, path: str) -> float:
        if type(text) is not str or text not in _NON_FINITE:
            raise _malformed(path, f"non-finite float {str(text)[:20]!r}")
        return _NON_FINITE[text]

    def _dict(self, pairs: Any, path: str) -> dict:
        if type(pairs) is not list or not all(type(p) is list and len(p) == 2 for p in pairs):
            raise _malformed(path, "a dict that is not a list of [key, value] pairs")
        out = {}
        for key_node, value_node in pairs:
            key = self.decode(key_node, f"{path}/<key>")
            _require_hashable(key, path)
            out[key] = self.decode(value_node, f"{path}/{key}")
        return out

    def _tuple(self, items: Any, path: str) -> tuple:
        return tuple(self._items(items, path))

    def _set(self, items: Any, path: str) -> set:
        return set(self._items(items, path, hashable=True))

    def _frozenset(self, items: Any, path: str) -> frozenset:
        return frozenset(self._items(items, path, hashable=True))

    def _items(self, items: Any, path: str, hashable: bool = False) -> list:
        if type(items) is not list:
            raise _malformed(path, "a tuple or set that is not a list")
        values = [self.decode(v, f"{path}/{i}") for i, v in enumerate(items)]
        for value in values if hashable else ():
            _require_hashable(value, path)
        return values

    def _size(self, dims: Any, path: str) -> torch.Size:
        if not _is_sizes(dims):
            raise _malformed(path, "a torch.Size that is not a list of sizes")
        return torch.Size(dims)

    def _dtype(self, name: Any, path: str) -> torch.dtype:
        dtype = vars(torch).get(name) if type(name) is str else None  # no getattr: no lazy imports
        if not isinstance(dtype, torch.dtype):
            raise _malformed(path, f"unknown torch dtype {str(name)[:40]!r}")
        return dtype

    def _timedelta(self, parts: Any, path: str) -> datetime.timedelta:
        if type(parts) is not list or len(parts) != 3 or not all(type(p) is int for p in parts):
            raise _malformed(path, "a timedelta that is not [days, seconds, microseconds]")
        try:
            return datetime.timedelta(*parts)  # days, seconds, microseconds
        except OverflowError:
            raise _malformed(path, "a timedelta out of range") from None

    def _path(self, text: Any, path: str) -> pathlib.Path:
        if type(text) is not str:
            raise _malformed(path, "a path that is not a string")
        return pathlib.Path(text)

    def _enum(self, payload: Any, path: str) -> Any:
        cls, value = self._class_and(payload, "value", path)
        value = self.decode(value, path)
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            return value
        try:
            return cls(value)
        except (ValueError, TypeError):
            raise StateMismatchError(
                f"{_show(path)}: the saved value {value!r} is no longer a member of enum "
                f"{_class_id(cls)}; add it back or convert the checkpoint"
            ) from None

    def _dataclass(self, payload: Any, path: str) -> Any:
        cls, fields = self._class_and(payload, "fields", path)
        fields = self.decode(fields, path)
        if type(fields) is not dict:
            raise _malformed(path, "dataclass fields that are not a dict")
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            return fields
        spec = {f.name: f for f in dataclasses.fields(cls)}
        try:
            if set(fields) - set(spec):
                raise TypeError(f"unknown fields {sorted(set(fields) - set(spec))}")
            obj = cls(**{k: v for k, v in fields.items() if spec[k].init})
        except Exception as err:  # the user's __init__/__post_init__ may raise anything
            raise StateMismatchError(
                f"{_show(path)}: dataclass {_class_id(cls)} no longer accepts the saved fields "
                f"{sorted(fields)}: {err}. Make the class accept them or convert the checkpoint"
            ) from err
        for name, value in fields.items():
            if not spec[name].init:
                object.__setattr__(obj, name, value)  # works for frozen dataclasses too
        return obj

    def _class_and(self, payload: Any, key: str, path: str) -> tuple[Any, Any]:
        if (type(payload) is not dict or set(payload) != {"class", key}
                or type(payload["class"]) is not str):
            raise _malformed(path, f"a class payload without exactly class and {key}")
        return _find_loaded_class(payload["class"]), payload[key]


def _find_loaded_class(class_id: str) -> Any:
    """The class named 'module:Qual.Name' if its module is already imported, else None.

    Reads module and class ``__dict__``s only: no import, no ``__getattr__``, no user code runs.
    """
    module_name, _, qualname = class_id.partition(":")
    obj = sys.modules.get(module_name)
    for part in qualname.split("."):
        if not isinstance(obj, (types.ModuleType, type)) or not part.isidentifier():
            return None
        obj = vars(obj).get(part)
    return obj


def _numpy_dtype(text: Any, path: str) -> np.dtype:
    if type(text) is not str or text not in _NUMPY_DTYPES:
        raise _malformed(path, f"unsupported numpy dtype {str(text)[:40]!r}")
    return np.dtype(text)


def _require_hashable(value: Any, path: str) -> None:
    try:
        hash(value)
    except TypeError:
        raise StateMismatchError(
            f"{_show(path)}: a saved dict key or set item came back as an unhashable "
            f"{type(value).__name__}, most likely a frozen dataclass whose module is not imported; "
            "import it before loading"
        ) from None


def _is_sizes(dims: Any) -> bool:
    return type(dims) is list and all(type(d) is int and d >= 0 for d in dims)


def _malformed(path: str, what: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"the state tree is malformed at {_show(path)}: {what}")
