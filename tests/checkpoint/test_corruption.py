"""Damaged, foreign and hostile files: always CheckpointCorruptError naming the file, quickly.

Every case checks the exception type and that the message names the file. The crafted files use
`rewrite_header`/`encode_file`, which forge a correct header checksum, so the checks behind the
checksum are exercised too.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import time
import tracemalloc
import zlib

import pytest
import safetensors.torch
import torch

from resumable.checkpoint.format import (
    read_checkpoint,
    read_header,
    verify_checkpoint,
    write_checkpoint,
)
from resumable.errors import CheckpointCorruptError

from .test_format import encode_file, rewrite_header, split_file

NAME = "victim.ckpt"


def small_checkpoint() -> bytes:
    """A small file (about 1.2 KB) with several dtypes, a 0-d and an empty tensor."""
    state = {"global_step": 7, "state_dict": {"w": torch.arange(6.0).reshape(2, 3),
                                              "b": torch.tensor([1, 2], dtype=torch.int16)},
             "flags": torch.tensor([True, False]), "scale": torch.tensor(0.5, dtype=torch.bfloat16),
             "empty": torch.zeros(0), "meta": {"lr": 0.1, 3: (1, 2)}}
    buffer = io.BytesIO()
    write_checkpoint(buffer, state)
    return buffer.getvalue()


GOOD = small_checkpoint()


def assert_corrupt(blob: bytes, match: str | None = None) -> None:
    with pytest.raises(CheckpointCorruptError, match=match) as caught:
        read_checkpoint(blob, name=NAME)
    assert NAME in str(caught.value)


def test_the_reference_file_reads():
    assert read_checkpoint(GOOD)["global_step"] == 7


def test_every_truncation_is_detected():
    for length in range(len(GOOD)):
        assert_corrupt(GOOD[:length])


def test_every_single_bit_flip_is_detected():
    for bit in range(8 * len(GOOD)):
        blob = bytearray(GOOD)
        blob[bit // 8] ^= 1 << (bit % 8)
        assert_corrupt(bytes(blob))


def test_zero_filled_blocks_are_detected():
    for start in range(0, len(GOOD), 37):
        blob = bytearray(GOOD)
        blob[start:start + 64] = bytes(len(blob[start:start + 64]))
        if blob != bytearray(GOOD):
            assert_corrupt(bytes(blob))


def test_random_bytes_and_trailing_garbage_are_detected():
    rng = random.Random(0)
    for size in (1, 7, 8, 9, 100, 5000):
        assert_corrupt(bytes(rng.getrandbits(8) for _ in range(size)))
    assert_corrupt(GOOD + b"\0", match="1 unexpected bytes after the last tensor")


@pytest.mark.parametrize("content", [b"", b"\x01\x02"], ids=["empty", "3 bytes short"])
def test_tiny_files_on_disk_name_the_path(tmp_path, content):
    path = tmp_path / "tiny.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointCorruptError, match="empty|shorter than") as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)


def test_a_plain_safetensors_file_is_not_ours(tmp_path):
    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.ones(2)}, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointCorruptError, match="safetensors.torch.load_file") as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)


class Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["torch.save zip", "torch.save legacy", "raw pickle"])
def test_pickles_are_refused_and_never_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    payload = {"w": torch.ones(2), "evil": Evil(str(marker))}
    if kind == "raw pickle":
        path.write_bytes(pickle.dumps(Evil(str(marker))))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=(kind == "torch.save zip"))
    refusal = "torch.save \\(pickle\\).*never unpickles"
    with pytest.raises(CheckpointCorruptError, match=refusal) as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)
    with pytest.raises(CheckpointCorruptError):
        read_header(path)
    assert not marker.exists()


def _set_entry(name: str, **fields):
    return lambda header: header[name].update(fields)


def _meta(**fields):
    return lambda header: header["__metadata__"].update(fields)


def _deep_tree(levels: int) -> str:
    return '{"x":' + "[" * levels + "]" * levels + "}"


FORGED = {
    "unknown dtype": (_set_entry("w", dtype="F128"), "unknown dtype"),
    "dtype not a string": (_set_entry("w", dtype=["F32"]), "unknown dtype"),
    "shape not a list": (_set_entry("w", shape="2x3"), "shape"),
    "negative shape": (_set_entry("w", shape=[-2, -3]), "shape"),
    "float shape": (_set_entry("w", shape=[2.0, 3]), "shape"),
    "huge shape": (_set_entry("w", shape=[2**40, 2**40, 2**40]), "needs"),
    "offsets not two": (_set_entry("w", data_offsets=[0]), "data_offsets"),
    "offsets bools": (_set_entry("w", data_offsets=[False, True]), "data_offsets"),
    "negative offsets": (_set_entry("w", data_offsets=[-24, 0]), "data_offsets"),
    "reversed offsets": (_set_entry("w", data_offsets=[24, 0]), "data_offsets"),
    "offsets beyond the file": (_set_entry("w", data_offsets=[10**12, 10**12 + 24]), "truncated"),
    "offsets not matching shape": (_set_entry("w", shape=[2, 2]), "needs 16"),
    "extra entry key": (_set_entry("w", extra=1), "not dtype/shape/data_offsets"),
    "entry not an object": (lambda h: h.update(w=[1]), "not dtype/shape/data_offsets"),
    "overlapping tensors": (_set_entry("b", data_offsets=[20, 24]), "overlap"),
    "gap between tensors": (_set_entry("w", shape=[2, 2], data_offsets=[0, 16]), "gap"),
    "referenced tensor absent": (lambda h: h.update(w2=h.pop("w")), "needs tensor 'w'"),
    "unreferenced tensor": (_meta(tree='{"global_step":7}'), "not part of the state"),
    "missing format": (lambda h: h["__metadata__"].pop("format"), "format"),
    "wrong format": (_meta(format="pt"), "expected 'resumable'"),
    "version zero": (_meta(format_version="0"), "not a version number"),
    "version not a number": (_meta(format_version="1.0"), "not a version number"),
    "huge version text": (_meta(format_version="9" * 5000), "not a version number"),
    "crc list short": (_meta(tensor_crc32="00000000"), "checksums"),
    "crc not hex": (lambda h: h["__metadata__"].update(
        tensor_crc32=h["__metadata__"]["tensor_crc32"].upper().replace("0", "G")), "checksums"),
    "tensor crc wrong": (lambda h: h["__metadata__"].update(
        tensor_crc32="00000000" + h["__metadata__"]["tensor_crc32"][8:]), "fails its checksum"),
    "metadata not strings": (_meta(global_step=7), "string-to-string"),
    "tree not JSON": (_meta(tree="{nope"), "state tree is not valid JSON"),
    "tree not a dict": (_meta(tree="[1]"), "not a dict"),
    "tree too deep": (_meta(tree=_deep_tree(400)), "nested"),
    "tree absurdly deep": (_meta(tree=_deep_tree(200_000)), "nested"),
    "tree with a huge integer": (_meta(tree='{"x":' + "9" * 10_000 + "}"), "not valid JSON"),
    "tree missing": (lambda h: h["__metadata__"].pop("tree"), "tree"),
}


@pytest.mark.parametrize(("edit", "match"), FORGED.values(), ids=FORGED.keys())
def test_forged_headers_with_right_checksums_are_refused(edit, match):
    assert_corrupt(rewrite_header(GOOD, edit), match)


def test_bool_tensors_holding_other_bytes_are_refused():
    header, data = split_file(GOOD)
    start = header["#flags"]["data_offsets"][0]
    assert data[start:] == b"\x01\x00"  # the bool tensor is last: itemsize 1 sorts last
    crcs = header["__metadata__"]["tensor_crc32"].split(",")
    crcs[-1] = "%08x" % zlib.crc32(b"\x07\x01")
    header["__metadata__"]["tensor_crc32"] = ",".join(crcs)
    assert_corrupt(encode_file(header, data[:start] + b"\x07\x01"), "bool tensor")


def forge_text(text: bytes, data: bytes) -> bytes:
    """A file whose header is exactly `text` (from the checksum prefix on), checksum made right."""
    raw = bytearray(text + b" " * (-len(text) % 8))
    raw[33:41] = b"00000000"
    raw[33:41] = b"%08x" % zlib.crc32(raw)
    return struct.pack("<Q", len(raw)) + bytes(raw) + data


def test_duplicate_json_keys_are_refused():
    header, data = split_file(GOOD)
    text = json.dumps(header, separators=(",", ":"))
    duplicated = text[:-1] + ',"w":' + json.dumps(header["w"], separators=(",", ":")) + "}"
    assert_corrupt(forge_text(duplicated.encode(), data), "duplicate")


def test_header_not_utf8_is_refused():
    header, data = split_file(GOOD)
    text = json.dumps(header, separators=(",", ":")).encode()
    assert_corrupt(forge_text(text[:60] + b"\xff" + text[61:], data), "UTF-8")


HUGE = {
    "header length 2**63": struct.pack("<Q", 2**63) + b"{}",
    "header length = all but 1 of the file": struct.pack("<Q", 10**6) + b" " * (10**6 - 1),
    "header length past the cap": struct.pack("<Q", 200 * 2**20) + b"{",
}


@pytest.mark.parametrize("blob", HUGE.values(), ids=HUGE.keys())
def test_huge_claims_fail_fast_without_allocating(blob):
    tracemalloc.start()
    started = time.perf_counter()
    try:
        assert_corrupt(blob, "header length")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < len(blob) + 10 * 2**20


def test_huge_shapes_fail_fast_without_allocating():
    blob = rewrite_header(GOOD, _set_entry("w", shape=[2**62, 2**62]))
    tracemalloc.start()
    try:
        assert_corrupt(blob, "needs")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20


def test_damage_on_disk_names_the_path_for_every_entry_point(tmp_path):
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(GOOD[:-1])
    for read in (read_checkpoint, read_header, verify_checkpoint):
        with pytest.raises(CheckpointCorruptError) as caught:
            read(path)
        assert str(path) in str(caught.value)
