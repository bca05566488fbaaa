"""The checkpoint file: round trips, plain-safetensors compatibility, header reads, versions.

`encode_file` and `rewrite_header` below build files from the written specification
(docs/format.md), independently of the writer; the corruption and fuzz tests use them to craft
hostile files whose checksums are right.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import pathlib
import random
import struct
import zlib
from typing import Callable

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from resumable.checkpoint import format as ckpt_format
from resumable.checkpoint.format import (
    FORMAT_VERSION,
    read_checkpoint,
    read_header,
    verify_checkpoint,
    write_checkpoint,
)
from resumable.errors import (
    CheckpointCorruptError,
    CheckpointVersionError,
    StorageError,
    UnsupportedStateError,
)

from .test_tree import ARRAYS, TENSORS, assert_same

PREFIX = b'{"__metadata__":{"header_crc32":"'


def encode_file(header: dict, data: bytes) -> bytes:
    """A file with `header` (``__metadata__`` first) and `data`, its header checksum made right."""
    meta = {"header_crc32": "00000000"}
    meta.update((k, v) for k, v in header["__metadata__"].items() if k != "header_crc32")
    rest = {k: v for k, v in header.items() if k != "__metadata__"}
    text = json.dumps({"__metadata__": meta, **rest}, separators=(",", ":"))
    raw = bytearray((text + " " * (-len(text) % 8)).encode())
    raw[len(PREFIX):len(PREFIX) + 8] = b"%08x" % zlib.crc32(raw)
    return struct.pack("<Q", len(raw)) + bytes(raw) + data


def split_file(blob: bytes) -> tuple[dict, bytes]:
    """The parsed header and the data buffer of a file."""
    length = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + length]), blob[8 + length:]


def rewrite_header(blob: bytes, edit: Callable[[dict], object]) -> bytes:
    """`blob` with `edit` applied to its parsed header, checksum recomputed: a forgery."""
    header, data = split_file(blob)
    edit(header)
    return encode_file(header, data)


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.Linear(8, 2))


def trained_state() -> dict:
    """A realistic state: model, Adam after two steps, StepLR, every RNG, counters, a summary."""
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        optimizer.step()
        scheduler.step()
    return {
        "format_version": 1, "global_step": 10, "epoch": 2,
        "state_dict": model.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "callbacks": {"ModelCheckpoint{monitor=val_loss,mode=min}": {"best": torch.tensor(0.25)}},
        "hyper_parameters": {"hidden": 8, "lr": 1e-2, "dtype": torch.bfloat16},
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                "torch": torch.get_rng_state()},
        "summary": {"val_loss": torch.tensor(0.25), "acc": np.float32(0.5), "nan": math.nan},
        "half": torch.randn(3, 3).to(torch.bfloat16),
    }


def checkpoint_bytes(state: dict | None = None) -> bytes:
    buffer = io.BytesIO()
    write_checkpoint(buffer, trained_state() if state is None else state)
    return buffer.getvalue()


def test_realistic_state_round_trips_through_a_file(tmp_path):
    state = trained_state()
    path = tmp_path / "step-10.ckpt"
    path.write_bytes(checkpoint_bytes(state))
    back = read_checkpoint(path)
    assert_same(back, {**state, "state_dict": dict(state["state_dict"])})


def test_restored_state_loads_into_fresh_objects_and_continues_identically(tmp_path):
    state = trained_state()
    back = read_checkpoint(checkpoint_bytes(state))
    model = make_model()
    model.load_state_dict(back["state_dict"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    optimizer.load_state_dict(back["optimizer_states"][0])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler.load_state_dict(back["lr_schedulers"][0])
    assert scheduler.get_last_lr() == [1e-2 * 0.25]
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    assert draws == (random.random(), np.random.rand(), torch.rand(1).item())


def test_every_dtype_shape_and_array_round_trips_through_a_file(tmp_path):
    state = {"tensors": dict(TENSORS), "arrays": dict(ARRAYS)}
    path = tmp_path / "all.ckpt"
    path.write_bytes(checkpoint_bytes(state))
    back = read_checkpoint(path)
    for key, tensor in TENSORS.items():
        assert_same(back["tensors"][key], tensor.detach().contiguous().as_subclass(torch.Tensor))
    for key, array in ARRAYS.items():
        restored = back["arrays"][key]
        assert restored.dtype == array.dtype and np.array_equal(restored, array)


def test_plain_safetensors_reads_the_model_weights_under_their_names(tmp_path):
    state = trained_state()
    path = tmp_path / "a.ckpt"
    path.write_bytes(checkpoint_bytes(state))
    loaded = safetensors.torch.load_file(path)
    for name, tensor in state["state_dict"].items():
        assert torch.equal(loaded[name], tensor)
    assert all(name.startswith("#") for name in set(loaded) - set(state["state_dict"]))
    with safe_open(path, framework="pt") as file:
        assert file.metadata()["format"] == "resumable"
        assert torch.equal(file.get_tensor("0.weight"), state["state_dict"]["0.weight"])


def test_tensors_are_aligned_to_their_itemsize_in_the_file():
    blob = checkpoint_bytes()
    header, data = split_file(blob)
    data_start = len(blob) - len(data)
    itemsizes = {"F64": 8, "I64": 8, "F32": 4, "BF16": 2, "U8": 1}
    for name, info in header.items():
        if name != "__metadata__":
            assert (data_start + info["data_offsets"][0]) % itemsizes[info["dtype"]] == 0, name


def test_mapped_tensors_are_writable_correct_and_never_write_back(tmp_path):
    state = trained_state()
    path = tmp_path / "a.ckpt"
    path.write_bytes(checkpoint_bytes(state))
    original = path.read_bytes()
    back = read_checkpoint(path)
    weight = back["state_dict"]["0.weight"]
    assert torch.equal(weight, state["state_dict"]["0.weight"])
    weight.add_(1.0)  # would raise, or warn, on a read-only buffer
    assert path.read_bytes() == original


def test_bytes_buffers_give_writable_tensors():
    back = read_checkpoint(checkpoint_bytes({"t": torch.ones(3)}))
    back["t"].add_(1)
    assert back["t"].tolist() == [2, 2, 2]


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable file that writes at most 1000 bytes per call."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        self.data += bytes(chunk)[:1000]
        return min(len(chunk), 1000)


def test_non_seekable_targets_get_the_same_bytes():
    state = trained_state()
    pipe = _Pipe()
    write_checkpoint(pipe, state)
    assert bytes(pipe.data) == checkpoint_bytes(state)


def test_read_header_lists_without_reading_tensor_data():
    blob = bytearray(checkpoint_bytes())
    blob[-3] ^= 0xFF  # damage the last tensor: only a read of its data would notice
    info = read_header(bytes(blob))
    assert (info["format_version"], info["global_step"], info["epoch"]) == (FORMAT_VERSION, 10, 2)
    assert info["summary"]["val_loss"] == 0.25 and math.isnan(info["summary"]["nan"])
    assert info["tensors"]["0.weight"] == (torch.float32, (8, 4))
    with pytest.raises(CheckpointCorruptError, match="checksum"):
        read_checkpoint(bytes(blob))


def test_header_fields_are_none_when_the_state_has_none():
    info = read_header(checkpoint_bytes({"x": 1}))
    fields = (info["global_step"], info["epoch"], info["summary"], info["tensors"])
    assert fields == (None, None, None, {})


def test_verify_false_skips_tensor_checksums_only():
    blob = bytearray(checkpoint_bytes({"t": torch.zeros(4)}))
    blob[-1] = 0x40
    assert read_checkpoint(bytes(blob), verify=False)["t"][-1].item() != 0
    with pytest.raises(CheckpointCorruptError, match="'#t' fails its checksum"):
        verify_checkpoint(bytes(blob), name="x.ckpt")


def test_unsupported_state_raises_before_anything_is_written():
    buffer = io.BytesIO()
    with pytest.raises(UnsupportedStateError, match="cannot save act"):
        write_checkpoint(buffer, {"act": print})
    assert buffer.getvalue() == b""


def test_a_missing_path_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")


def test_a_newer_format_asks_to_upgrade():
    newer = FORMAT_VERSION + 1
    blob = rewrite_header(checkpoint_bytes({"x": 1}),
                          lambda h: h["__metadata__"].update(format_version=str(newer)))
    expected = f"newer resumable \\(format {newer}\\).*up to format {FORMAT_VERSION}: upgrade"
    with pytest.raises(CheckpointVersionError, match=expected):
        read_checkpoint(blob, name="new.ckpt")


def test_older_formats_go_through_the_migrations_in_order(monkeypatch):
    # Format 1 is the first real one, so the table is empty: pretend this resumable writes
    # format 3 and has (fake) migrations 1 -> 2 -> 3, and read a format-1 file.
    blob = checkpoint_bytes({"steps": [1]})
    monkeypatch.setattr(ckpt_format, "FORMAT_VERSION", 3)
    monkeypatch.setattr(ckpt_format, "MIGRATIONS", {
        1: lambda state: {**state, "steps": state["steps"] + [2]},
        2: lambda state: {**state, "steps": state["steps"] + [3]},
    })
    assert read_checkpoint(blob) == {"steps": [1, 2, 3]}
    del ckpt_format.MIGRATIONS[2]
    with pytest.raises(CheckpointVersionError, match="no migration from format 2"):
        read_checkpoint(blob)


def test_written_bytes_follow_the_documented_layout():
    blob = checkpoint_bytes({"global_step": 3, "t": torch.arange(3, dtype=torch.int16)})
    header, data = split_file(blob)
    assert blob[8:8 + len(PREFIX)] == PREFIX and (len(blob) - len(data)) % 8 == 0
    meta = header["__metadata__"]
    assert (meta["format"], meta["format_version"], meta["global_step"]) == ("resumable", "1", "3")
    assert json.loads(meta["tree"]) == {"global_step": 3, "t": {"$tensor": "#t"}}
    assert meta["tensor_crc32"] == "%08x" % zlib.crc32(data)
    assert encode_file(header, data) == blob  # the header checksum is as documented


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_the_file_is_unmapped_as_soon_as_the_state_is_dropped(tmp_path):
    # Retention deletes old checkpoints; a map kept alive by a reference cycle would hold their
    # disk space until the garbage collector happens to run.
    path = tmp_path / "mapped.ckpt"
    path.write_bytes(checkpoint_bytes({"t": torch.ones(3), "d": {1: (2,)}}))
    gc.disable()
    try:
        state = read_checkpoint(path)
        assert str(path) in pathlib.Path("/proc/self/maps").read_text()
        del state
        assert str(path) not in pathlib.Path("/proc/self/maps").read_text()
    finally:
        gc.enable()
