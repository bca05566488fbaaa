"""Encoding a checkpoint's state as a JSON tree plus named tensors: `flatten_state`.

`resumable.checkpoint.tree` describes the encoding and re-exports what is public. The limits, the
dtype tables and the helpers that show key paths and name classes are shared with the decoder in
`resumable.checkpoint.tree_decode`, which imports them from here.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import pathlib
from typing import Any, Callable

import numpy as np
import torch

from resumable.errors import UnsupportedStateError

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
