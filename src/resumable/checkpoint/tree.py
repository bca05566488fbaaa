"""A checkpoint's state as a JSON tree plus named tensors, and back. Never pickle.

The encoding (``docs/format.md`` has the full list): ``None``, bools, strings, ints and finite
floats are themselves; lists are JSON arrays; a dict whose keys are all strings, none starting with
``$``, is a JSON object. Everything else is a *marker*, a JSON object with exactly one key, which
starts with ``$`` (``{"$tensor": name}``, ``{"$tuple": [...]}``, ...). Plain objects never have
a ``$`` key — a user dict with one is itself stored through the ``$dict`` marker — so markers and
user data cannot be confused.

Loading never imports anything: an enum or dataclass comes back as its class only when the class's
module is already in ``sys.modules``; otherwise as plain data (the enum's value, a dict of fields).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import pathlib
import sys
import types
from typing import Any, Callable

import numpy as np
import torch

from resumable.errors import CheckpointCorruptError, StateMismatchError, UnsupportedStateError

__all__ = ["flatten_state", "unflatten_state", "MAX_DEPTH", "MAX_JSON_DEPTH"]

MAX_DEPTH = 64
"""The deepest nesting of containers a saved state may have."""

MAX_JSON_DEPTH = 4 * MAX_DEPTH + 8
"""The deepest JSON a reader accepts: every saved level adds at most four JSON levels."""

# The dtypes of the safetensors format; tensors of other dtypes cannot be written.
TENSOR_DTYPES: dict[torch.dtype, str] = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16",
    torch.uint16: "U16", torch.int32: "I32", torch.uint32: "U32", torch.int64: "I64",
    torch.uint64: "U64", torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
    torch.float64: "F64", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.complex64: "C64",
}

# numpy arrays and scalars are stored little-endian; this is every dtype we accept, by its `.str`.
_NUMPY_DTYPES = {
    np.dtype(t).newbyteorder("<").str
    for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
              np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128)
}

_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def flatten_state(state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split `state` into a JSON-serialisable tree and a flat dict of CPU, contiguous tensors.

    Tensors directly under the top-level key ``"state_dict"`` are named by their key, so a plain
    safetensors reader sees model weights under their usual names; every other tensor (and every
    numpy array, stored as its raw little-endian bytes) gets a name starting with ``#`` built from
    its key path, e.g. ``#optimizer_states/0/state/0/exp_avg``, which no ``nn.Module`` key can be.
    A tensor reached twice is stored twice. CPU tensors are not copied: the returned tensors share
    memory with `state`, so copy them before `state` changes if writing them in the background.

    Raises `UnsupportedStateError` naming the key path and the type of any value with no safe
    on-disk form (functions, modules, arbitrary objects, namedtuples, unsupported dtypes), of a
    container that contains itself, or of nesting deeper than `MAX_DEPTH`.
    """
    if not isinstance(state, dict):
        raise UnsupportedStateError(
            f"a checkpoint state must be a dict, found {type(state).__qualname__}; "
            "wrap it, e.g. {'model': value}"
        )
    flattener = _Flattener()
    return flattener.encode(state, (), 0), flattener.tensors


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


def _unsupported(path: tuple, value: Any, problem: str = "has no safe on-disk form "
                 "(resumable never pickles)") -> UnsupportedStateError:
    kind = type(value)
    return UnsupportedStateError(
        f"cannot save {_show(path)}, a {kind.__module__}.{kind.__qualname__}: it {problem}. "
        "Convert it to plain data (dict, list, tuple, str, int, float, bool, None), a dataclass or "
        "an enum, or store it as a tensor."
    )


def _show(path: tuple | str) -> str:
    text = path if isinstance(path, str) else "/".join(str(part) for part in path)
    return text.lstrip("/") or "<state>"


def _class_id(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class _Flattener:
    """Encodes one state; collects its tensors under unique names."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._active: set[int] = set()  # ids of the containers on the current path, for cycles

    def encode(self, value: Any, path: tuple, depth: int) -> Any:
        if value is None or type(value) in (bool, int, str):
            return value
        if type(value) is float:
            return value if math.isfinite(value) else {"$float": str(value)}
        if isinstance(value, torch.Tensor):
            return {"$tensor": self._add_tensor(value, path)}
        if isinstance(value, np.ndarray):
            return {"$ndarray": self._encode_array(value, path)}
        if isinstance(value, np.generic):
            return {"$npscalar": self._encode_numpy_scalar(value, path)}
        if isinstance(value, enum.Enum):
            return {"$enum": {"class": _class_id(type(value)),
                              "value": self.encode(value.value, path, depth + 1)}}
        if isinstance(value, torch.dtype):
            return {"$dtype": str(value).removeprefix("torch.")}
        if type(value) is datetime.timedelta:
            return {"$timedelta": [value.days, value.seconds, value.microseconds]}
        if isinstance(value, pathlib.Path):
            return {"$path": str(value)}
        if isinstance(value, dict) or type(value) in (list, tuple, set, frozenset, torch.Size):
            return self._guarded(value, path, depth, self._encode_items)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return self._guarded(value, path, depth, self._encode_dataclass)
        raise _unsupported(path, value)

    def _guarded(self, value: Any, path: tuple, depth: int, encode: Callable) -> Any:
        """Encodes a container one level deeper, refusing cycles and excessive depth."""
        if depth >= MAX_DEPTH:
            raise _unsupported(path, value, f"is nested deeper than {MAX_DEPTH} levels")
        if id(value) in self._active:
            raise _unsupported(path, value, "contains itself")
        self._active.add(id(value))
        try:
            return encode(value, path, depth + 1)
        finally:
            self._active.discard(id(value))

    def _encode_items(self, value: Any, path: tuple, depth: int) -> Any:
        if isinstance(value, dict):
            if not all(type(k) is str and not k.startswith("$") for k in value):
                return {"$dict": [[self._encode_key(k, path, depth),
                                   self.encode(v, (*path, k), depth)] for k, v in value.items()]}
            if path == ("state_dict",):  # only the top-level "state_dict" has this path
                return {k: self._encode_weight(k, v, depth) for k, v in value.items()}
            return {k: self.encode(v, (*path, k), depth) for k, v in value.items()}
        if type(value) is torch.Size:
            return {"$size": list(value)}
        marker = {list: "", tuple: "$tuple", set: "$set", frozenset: "$frozenset"}[type(value)]
        if isinstance(value, (set, frozenset)):
            value = _sorted_if_possible(value)  # the same state then gives the same bytes
        items = [self.encode(v, (*path, i), depth) for i, v in enumerate(value)]
        return {marker: items} if marker else items

    def _encode_dataclass(self, value: Any, path: tuple, depth: int) -> dict:
        fields = {f.name: self.encode(getattr(value, f.name), (*path, f.name), depth)
                  for f in dataclasses.fields(value)}
        return {"$dataclass": {"class": _class_id(type(value)), "fields": fields}}

    def _encode_weight(self, key: str, value: Any, depth: int) -> Any:
        """A tensor of the top-level state_dict is named by its key, as in any safetensors file."""
        # '#' names are ours and '__metadata__' is safetensors' own key: such odd keys are
        # stored like any other tensor, under a '#' path name.
        if isinstance(value, torch.Tensor) and not key.startswith("#") and key != "__metadata__":
            return {"$tensor": self._add_tensor(value, ("state_dict", key), name=key)}
        return self.encode(value, ("state_dict", key), depth)

    def _encode_key(self, key: Any, path: tuple, depth: int) -> Any:
        if isinstance(key, (torch.Tensor, np.ndarray)):
            raise _unsupported((*path, "<key>"), key, "is a dict key, which cannot be an array")
        return self.encode(key, (*path, "<key>"), depth)

    def _add_tensor(self, tensor: torch.Tensor, path: tuple, name: str | None = None) -> str:
        if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
            raise _unsupported(path, tensor, f"is {tensor.layout} on {tensor.device.type}, which "
                               "safetensors cannot store")
        if tensor.dtype not in TENSOR_DTYPES:
            raise _unsupported(path, tensor, f"has dtype {tensor.dtype}, which safetensors "
                               "cannot store")
        name = name if name is not None else self._unique_name(path)
        self.tensors[name] = tensor.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        return name

    def _unique_name(self, path: tuple) -> str:
        base = "#" + "/".join(str(part) for part in path)
        name, n = base, 1
        while name in self.tensors:  # keys 0 and "0", or "a/b" vs a -> b, share a path string
            n += 1
            name = f"{base}~{n}"
        return name

    def _encode_array(self, array: np.ndarray, path: tuple) -> dict:
        dtype = _little_endian(array, path)
        little = np.require(array.astype(dtype, copy=False), requirements=["C", "W"])
        raw = torch.from_numpy(little.reshape(-1).view(np.uint8))
        return {"tensor": self._add_tensor(raw, path), "dtype": dtype.str,
                "shape": list(array.shape)}

    def _encode_numpy_scalar(self, scalar: np.generic, path: tuple) -> list:
        dtype, value = _little_endian(scalar, path), scalar.item()
        if isinstance(value, complex):
            value = [value.real, value.imag]
        return [dtype.str, self.encode(value, path, 0)]


def _little_endian(value: np.ndarray | np.generic, path: tuple) -> np.dtype:
    dtype = value.dtype.newbyteorder("<")
    if dtype.str not in _NUMPY_DTYPES:
        raise _unsupported(path, value, f"has numpy dtype {value.dtype}, not plain numbers")
    return dtype


def _sorted_if_possible(items: set | frozenset) -> list:
    try:
        return sorted(items)
    except TypeError:
        return list(items)


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
