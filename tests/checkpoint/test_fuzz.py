"""Fuzzing: damaged or forged checkpoints raise CheckpointError and nothing else.

Blind byte damage (flips, truncations, splices, insertions, deletions) must read back exactly or
raise CheckpointError: the checksums catch it. Forged headers with correct checksums (shapes,
offsets, dtypes, names, metadata and tree edited) can describe another valid checkpoint (an I16
tensor relabelled BF16 is one), so for them the contract is "a state or CheckpointError": the
validation behind the checksums must stop every IndexError, ValueError or crash.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resumable.checkpoint.format import read_checkpoint, read_header
from resumable.errors import CheckpointError

from .test_corruption import GOOD
from .test_format import rewrite_header, split_file
from .test_tree import assert_same

ORIGINAL = read_checkpoint(GOOD)
HEADER, _ = split_file(GOOD)
NAMES = sorted(name for name in HEADER if name != "__metadata__")
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


def check(blob: bytes, *, exact: bool = True) -> None:
    """The contract: a state (the original one if `exact`) or a CheckpointError naming the file."""
    try:
        read_header(blob, name="fuzz.ckpt")
        state = read_checkpoint(blob, name="fuzz.ckpt")
    except CheckpointError as err:
        assert "fuzz.ckpt" in str(err)
        return
    if exact:
        assert_same(state, ORIGINAL)
    else:
        assert isinstance(state, dict)


positions = st.integers(0, len(GOOD) - 1)
chunks = st.binary(min_size=1, max_size=64)
byte_mutation = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(0, 7)),
    st.tuples(st.just("truncate"), positions, st.none()),
    st.tuples(st.just("overwrite"), positions, chunks),
    st.tuples(st.just("insert"), positions, chunks),
    st.tuples(st.just("delete"), positions, st.integers(1, 64)),
)


def mutate(blob: bytearray, mutation: tuple) -> bytearray:
    kind, at, arg = mutation
    if kind == "flip":
        blob[at] ^= 1 << arg
    elif kind == "truncate":
        del blob[at:]
    elif kind == "overwrite":
        blob[at:at + len(arg)] = arg
    elif kind == "insert":
        blob[at:at] = arg
    else:
        del blob[at:at + arg]
    return blob


@FUZZ
@given(st.lists(byte_mutation, min_size=1, max_size=4))
def test_blind_byte_damage(mutations):
    blob = bytearray(GOOD)
    for mutation in mutations:
        if blob:
            mutate(blob, (mutation[0], mutation[1] % len(blob), mutation[2]))
    check(bytes(blob))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)
entry_fields = st.sampled_from(["dtype", "shape", "data_offsets"])
header_edit = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(NAMES), entry_fields, json_values),
    st.tuples(st.just("offsets"), st.sampled_from(NAMES), st.integers(-8, 64), st.integers(-8, 64)),
    st.tuples(st.just("shape"), st.sampled_from(NAMES),
              st.lists(st.integers(-2, 2**40), max_size=4), st.none()),
    st.tuples(st.just("dtype"), st.sampled_from(NAMES),
              st.sampled_from(["F32", "I16", "BF16", "BOOL", "U8", "F64", "C64", "X"]), st.none()),
    st.tuples(st.just("rename"), st.sampled_from(NAMES), st.text(max_size=6), st.none()),
    st.tuples(st.just("drop"), st.sampled_from(NAMES), st.none(), st.none()),
    st.tuples(st.just("meta"), st.sampled_from(sorted(HEADER["__metadata__"])),
              st.text(max_size=30), st.none()),
    st.tuples(st.just("tree"), st.none(), json_values, st.none()),
)


def forge(header: dict, edit: tuple) -> None:
    kind, name, a, b = edit
    if name is not None and name not in header:
        return
    if kind == "field":
        header[name][a] = b
    elif kind == "offsets":
        header[name]["data_offsets"] = [a, b]
    elif kind == "shape":
        header[name]["shape"] = a
    elif kind == "dtype":
        header[name]["dtype"] = a
    elif kind == "rename":
        header[a] = header.pop(name)
    elif kind == "drop":
        del header[name]
    elif kind == "meta":
        header["__metadata__"][name] = a
    else:
        tree = json.loads(header["__metadata__"]["tree"])
        tree["meta"] = a
        header["__metadata__"]["tree"] = json.dumps(tree)


@FUZZ
@given(st.lists(header_edit, min_size=1, max_size=3))
def test_forged_headers_with_right_checksums(edits):
    def edit_all(header: dict) -> None:
        for edit in edits:
            forge(header, edit)

    check(rewrite_header(GOOD, edit_all), exact=False)


def test_the_fuzz_target_has_the_tensors_it_mutates():
    assert {"w", "b", "#flags", "#scale", "#empty"} <= set(NAMES)
    assert isinstance(ORIGINAL["state_dict"]["w"], torch.Tensor)


@pytest.mark.parametrize("seed_blob", [b"", GOOD[:8], GOOD])
def test_check_accepts_the_original_and_rejects_stubs(seed_blob):
    check(seed_blob)
