"""The on-disk checkpoint: one safetensors file whose header metadata carries the state tree.

Byte layout (exactly safetensors, so ``safetensors.torch.load_file`` reads the weights)::

    u64 little-endian N | N bytes of ASCII JSON header, space-padded to a multiple of 8 | data

The header is ``{"__metadata__": {...}, "<tensor name>": {"dtype", "shape", "data_offsets"}, ...}``
and always starts with ``{"__metadata__":{"header_crc32":"xxxxxxxx",`` — the CRC32 of the whole
padded header with those eight hex digits read as ``00000000``. The metadata also holds
``format`` (``"resumable"``), ``format_version``, the JSON ``tree`` of `resumable.checkpoint.tree`,
the optional ``global_step``/``epoch``/``summary`` (JSON text, for listing checkpoints cheaply),
and ``tensor_crc32``: the CRC32 of each tensor's bytes, in data order, comma separated.
``docs/format.md`` is the full specification.

Safety: nothing is ever unpickled or imported, and every length, offset and shape is checked
against the file's size before anything is allocated or read. A damaged or hostile file raises
`CheckpointCorruptError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import zlib
from typing import Any, BinaryIO, Callable, NamedTuple

import numpy as np
import torch

from resumable.checkpoint.storage import map_file
from resumable.checkpoint.tree import MAX_JSON_DEPTH, TENSOR_DTYPES, flatten_state, unflatten_state
from resumable.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointVersionError,
    StateMismatchError,
)

__all__ = [
    "FORMAT_VERSION", "MIGRATIONS", "MAX_HEADER_BYTES",
    "write_checkpoint", "read_checkpoint", "read_header", "verify_checkpoint",
]

FORMAT_VERSION = 1
"""The format this resumable writes, and the newest it reads."""

MIGRATIONS: dict[int, Callable[[dict], dict]] = {}
"""``MIGRATIONS[v]`` turns a state read from format ``v`` into the state of format ``v + 1``.

Reading a file of format ``v < FORMAT_VERSION`` applies ``MIGRATIONS[v]``, ``MIGRATIONS[v+1]``, ...
in order. Version 1 is the first, so there is nothing to migrate yet.
"""

MAX_HEADER_BYTES = 100 * 1024 * 1024
"""The largest header accepted: the limit safetensors itself applies."""

_PREFIX = b'{"__metadata__":{"header_crc32":"'
_CRC_SLOT = slice(len(_PREFIX), len(_PREFIX) + 8)
# zlib.crc32 measured at ~4 GB/s here against ~0.4-1.2 GB/s for write+fsync of the same 256 MiB,
# so checksumming while writing costs little; 16 MiB chunks stay in cache between crc and write.
_CHUNK = 16 * 1024 * 1024
_DTYPES = {name: dtype for dtype, name in TENSOR_DTYPES.items()}


class _Entry(NamedTuple):
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # offsets into the data buffer
    end: int


class _Layout(NamedTuple):
    metadata: dict[str, str]
    version: int
    entries: list[_Entry]  # in data order
    crcs: list[int]
    data_start: int  # offset of the data buffer in the file


def write_checkpoint(file: BinaryIO, state: dict) -> None:
    """Write `state` to the open binary `file` as one checkpoint, starting at its position.

    Each tensor's CRC32 is computed on the same chunks as they are written (one pass); on a
    seekable file the header is written with zeroed checksums first and rewritten, same length,
    once the tensors are out. A non-seekable file gets the checksums computed beforehand. Tensors
    are moved to CPU first. Raises `UnsupportedStateError` (before writing anything) for state with
    no safe on-disk form; errors of `file` propagate unchanged (the storage layer maps them).
    """
    _require_little_endian()
    tree, tensors = flatten_state(state)
    # Widest dtypes first: every tensor then starts aligned to its itemsize (the header is padded
    # to 8), so readers can view the mapped file without copying.
    names = sorted(tensors, key=lambda n: -tensors[n].element_size())
    entries, offset = {}, 0
    for name in names:
        tensor = tensors[name]
        nbytes = tensor.numel() * tensor.element_size()
        entries[name] = {"dtype": TENSOR_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                         "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    metadata = {"format": "resumable", "format_version": str(FORMAT_VERSION), **_summary(state),
                "tree": json.dumps(tree, allow_nan=False, separators=(",", ":"))}
    views = [memoryview(tensors[name].reshape(-1).view(torch.uint8).numpy()) for name in names]
    seekable = _seekable(file)
    crcs = [0] * len(views) if seekable else [zlib.crc32(view) for view in views]
    header = _encode_header(metadata, entries, crcs)
    start = file.tell() if seekable else 0
    _write_all(file, struct.pack("<Q", len(header)) + header)
    for i, view in enumerate(views):
        crc = 0
        for at in range(0, len(view), _CHUNK):
            chunk = view[at:at + _CHUNK]
            crc = zlib.crc32(chunk, crc)
            _write_all(file, chunk)
        crcs[i] = crc
    if seekable:
        file.seek(start + 8)
        _write_all(file, _encode_header(metadata, entries, crcs))  # same length: fixed-width crcs
        file.seek(start + 8 + len(header) + offset)


def read_checkpoint(source: Any, *, verify: bool = True, name: str | None = None) -> dict:
    """Read the state of the checkpoint at `source`: a path, or a bytes-like/buffer object.

    A path is memory-mapped copy-on-write: pages load lazily and the returned tensors are writable
    views of the map, not copies (a read-only buffer is copied once so they stay writable). The
    header checksum is always checked; each tensor's checksum too when `verify` is true. Older
    formats are migrated through `MIGRATIONS`. `name` is used in messages for buffer sources.

    Raises `CheckpointCorruptError` naming the file for any damage, foreign or hostile content;
    `CheckpointVersionError` for a format newer than `FORMAT_VERSION`; `StateMismatchError` when a
    saved enum/dataclass no longer fits its class; `StorageError` when the path cannot be opened.
    """
    buffer, name = _open(source, name)
    layout = _parse(buffer, name)
    if verify:
        _check_tensor_crcs(buffer, layout, name)
    tensors = {e.name: _tensor_at(buffer, layout.data_start, e, name) for e in layout.entries}
    tree = _load_json(layout.metadata.get("tree"), name, "state tree")
    try:
        state = unflatten_state(tree, tensors)
    except CheckpointCorruptError as err:
        raise _corrupt(name, str(err)) from err
    except StateMismatchError as err:
        raise StateMismatchError(f"checkpoint {name}: {err}") from err
    for version in range(layout.version, FORMAT_VERSION):
        state = MIGRATIONS[version](state)
    return state


def read_header(source: Any, *, name: str | None = None) -> dict:
    """Read a checkpoint's header only: no tensor data is read and no tensor is built.

    Returns ``{"format_version": int, "global_step": ..., "epoch": ..., "summary": ...,
    "tensors": {name: (torch.dtype, shape tuple)}}``, where the summary fields are None when the
    saved state had none. The header is fully validated (checksum, layout against the file size);
    the tensors' checksums are not checked. Raises like `read_checkpoint`.
    """
    buffer, name = _open(source, name)
    layout = _parse(buffer, name)
    info = {key: _load_json(layout.metadata[key], name, key) if key in layout.metadata else None
            for key in ("global_step", "epoch", "summary")}
    tensors = {e.name: (e.dtype, e.shape) for e in layout.entries}
    return {"format_version": layout.version, **info, "tensors": tensors}


def verify_checkpoint(source: Any, *, name: str | None = None) -> None:
    """Check a checkpoint completely (every checksum, the layout, the state tree); return None.

    Does all that `read_checkpoint(verify=True)` does and discards the state; raises likewise.
    """
    read_checkpoint(source, verify=True, name=name)


def _summary(state: dict) -> dict[str, str]:
    """The plain values a listing shows without reading the state, as JSON text."""
    fields = {key: state.get(key) for key in ("global_step", "epoch", "summary")}
    return {key: json.dumps(_plain(value)) for key, value in fields.items() if value is not None}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and math.prod(value.shape) == 1:
        return value.item()  # a metric held as a one-element tensor or numpy scalar
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _encode_header(metadata: dict[str, str], entries: dict, crcs: list[int]) -> bytearray:
    meta = {"header_crc32": "00000000", **metadata,
            "tensor_crc32": ",".join(f"{crc:08x}" for crc in crcs)}
    text = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":"))
    header = bytearray((text + " " * (-len(text) % 8)).encode("ascii"))
    header[_CRC_SLOT] = b"%08x" % zlib.crc32(header)
    return header


def _seekable(file: BinaryIO) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, OSError, ValueError):
        return False


def _write_all(file: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        view = view[len(view) if written is None else written:]  # raw files may write short


def _open(source: Any, name: str | None) -> tuple[Any, str]:
    if isinstance(source, (str, os.PathLike)):
        return map_file(source), name or os.fspath(source)
    view = memoryview(source).cast("B")
    return (bytearray(view) if view.readonly else view), name or "<in-memory checkpoint>"


def _parse(buffer: Any, name: str) -> _Layout:
    """Validate everything but the tensors' bytes, in an order that never over-allocates."""
    _require_little_endian()
    size = len(buffer)
    if size < 8:
        raise _corrupt(name, f"it is {size} bytes long, shorter than the 8-byte header length"
                       if size else "the file is empty")
    length = struct.unpack_from("<Q", buffer, 0)[0]
    if length > size - 8 or length > MAX_HEADER_BYTES:
        raise _corrupt(name, _pickle_hint(buffer) or f"the header length field says {length} "
                       f"bytes, but the file has {size - 8} after it and the limit is "
                       f"{MAX_HEADER_BYTES} (truncated?)")
    raw = bytes(buffer[8:8 + length])
    if not raw.startswith(_PREFIX):
        raise _corrupt(name, _pickle_hint(buffer) or "the header does not start with resumable's "
                       "metadata: this is a safetensors file written by something else (load it "
                       "with safetensors.torch.load_file) or a damaged checkpoint")
    stored, zeroed = raw[_CRC_SLOT], raw[:_CRC_SLOT.start] + b"00000000" + raw[_CRC_SLOT.stop:]
    if b"%08x" % zlib.crc32(zeroed) != stored:
        raise _corrupt(name, f"the header checksum does not match (stored {stored[:8]!r}, "
                       f"computed {zlib.crc32(zeroed):08x})")
    header = _load_json(raw, name, "header")
    metadata = header.pop("__metadata__", None) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(type(v) is str for v in metadata.values()):
        raise _corrupt(name, "the header has no string-to-string __metadata__")
    version = _check_version(metadata, name)
    entries = _entries(header, size - 8 - length, name)
    crc_text = metadata.get("tensor_crc32", "")
    crcs = crc_text.split(",") if crc_text else []
    if len(crcs) != len(entries) or not all(_is_crc(crc) for crc in crcs):
        raise _corrupt(name, f"tensor_crc32 {crc_text[:40]!r} is not {len(entries)} checksums")
    return _Layout(metadata, version, entries, [int(crc, 16) for crc in crcs], 8 + length)


def _pickle_hint(buffer: Any) -> str | None:
    """What to say when the bytes are a torch.save file (a zip archive or a raw pickle)."""
    start = bytes(buffer[:4])
    zip_archive = start == b"PK\x03\x04"
    pickle = start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    if zip_archive or pickle:
        return ("this is a torch.save (pickle) file, not a resumable checkpoint; resumable never "
                "unpickles, since unpickling can run any code. If you trust the file, load it with "
                "torch.load(path, weights_only=True) and save its state again with resumable")
    return None


def _check_version(metadata: dict[str, str], name: str) -> int:
    if metadata.get("format") != "resumable":
        raise _corrupt(name, f"the metadata format is {str(metadata.get('format'))[:40]!r}, "
                       "expected 'resumable'")
    text = metadata.get("format_version", "")
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and int(text) >= 1):
        raise _corrupt(name, f"format_version {text[:20]!r} is not a version number")
    version = int(text)
    if version > FORMAT_VERSION:
        raise CheckpointVersionError(
            f"checkpoint {name} was written by a newer resumable (format {version}); this one "
            f"reads up to format {FORMAT_VERSION}: upgrade resumable to read it"
        )
    missing = [v for v in range(version, FORMAT_VERSION) if v not in MIGRATIONS]
    if missing:
        raise CheckpointVersionError(
            f"checkpoint {name} is in format {version}, and this resumable has no migration from "
            f"format {missing[0]}; read it with an older resumable and save it again"
        )
    return version


def _entries(header: dict, data_len: int, name: str) -> list[_Entry]:
    entries = [_entry(key, info, name) for key, info in header.items()]
    entries.sort(key=lambda e: (e.start, e.end))
    for entry in entries:
        if entry.end > data_len:
            raise _corrupt(name, f"tensor {entry.name!r} ends at data byte {entry.end}, but the "
                           f"file has only {data_len} data bytes (truncated?)")
    position = 0
    for entry in entries:
        if entry.start != position:
            problem = "overlap" if entry.start < position else "gap"
            raise _corrupt(name, f"tensor {entry.name!r} starts at data byte {entry.start}, "
                           f"expected {position} ({problem})")
        position = entry.end
    if position != data_len:
        raise _corrupt(name, f"{data_len - position} unexpected bytes after the last tensor")
    return entries


def _entry(key: str, info: Any, name: str) -> _Entry:
    if type(info) is not dict or set(info) != {"dtype", "shape", "data_offsets"}:
        raise _corrupt(name, f"header entry {key[:80]!r} is not dtype/shape/data_offsets")
    dtype = _DTYPES.get(info["dtype"]) if type(info["dtype"]) is str else None
    shape, offsets = info["shape"], info["data_offsets"]
    if dtype is None:
        raise _corrupt(name, f"tensor {key[:80]!r} has unknown dtype {str(info['dtype'])[:20]!r}")
    if type(shape) is not list or not all(type(d) is int and d >= 0 for d in shape):
        raise _corrupt(name, f"tensor {key[:80]!r} has shape {str(shape)[:80]}, "
                       "expected a list of non-negative integers")
    if (type(offsets) is not list or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _corrupt(name, f"tensor {key[:80]!r} has data_offsets {str(offsets)[:80]}, "
                       "expected [begin, end] with 0 <= begin <= end")
    nbytes = math.prod(shape) * dtype.itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise _corrupt(name, f"tensor {key[:80]!r} spans {offsets[1] - offsets[0]} bytes, but "
                       f"shape {shape[:8]} of {dtype} needs {nbytes}")
    return _Entry(key, dtype, tuple(shape), offsets[0], offsets[1])


def _check_tensor_crcs(buffer: Any, layout: _Layout, name: str) -> None:
    with memoryview(buffer) as view:
        for entry, crc in zip(layout.entries, layout.crcs):
            found = zlib.crc32(view[layout.data_start + entry.start:layout.data_start + entry.end])
            if found != crc:
                raise _corrupt(name, f"tensor {entry.name!r} fails its checksum (stored "
                               f"{crc:08x}, computed {found:08x}): its bytes are damaged")


def _tensor_at(buffer: Any, data_start: int, entry: _Entry, name: str) -> torch.Tensor:
    count = math.prod(entry.shape)
    if count == 0:
        return torch.empty(entry.shape, dtype=entry.dtype)
    flat = torch.frombuffer(buffer, dtype=entry.dtype, count=count, offset=data_start + entry.start)
    if entry.dtype == torch.bool and bool((flat.view(torch.uint8) > 1).any()):
        raise _corrupt(name, f"bool tensor {entry.name!r} holds bytes other than 0 and 1")
    return flat.reshape(entry.shape)


def _load_json(text: Any, name: str, what: str) -> Any:
    if type(text) is not str:
        try:
            text = text.decode("utf-8")
        except (AttributeError, UnicodeDecodeError) as err:
            raise _corrupt(name, f"the {what} is not UTF-8 text ({err})") from None
    try:
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _corrupt(name, f"the {what} JSON is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, duplicate keys, over-long integers
        raise _corrupt(name, f"the {what} is not valid JSON ({str(err)[:200]})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise _corrupt(name, f"the {what} JSON is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise ValueError("duplicate keys in a JSON object")
    return value


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict)
                                                          else node))
    return deepest


def _is_crc(text: str) -> bool:
    return len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def _require_little_endian() -> None:
    if sys.byteorder != "little":
        raise CheckpointError("resumable checkpoints are little-endian; this machine is big-endian")


def _corrupt(name: str, what: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(
        f"cannot read checkpoint {name}: {what}. The file is damaged or not a resumable "
        "checkpoint; resume from another checkpoint"
    )
