"""Tests for resumable.rng: seeding, capture and exact restore of every global generator."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from resumable.errors import ConfigurationError, StateMismatchError
from resumable.rng import (
    capture_rng_state,
    derive_seed,
    isolated_rng,
    restore_rng_state,
    seed_everything,
)


def draws() -> tuple:
    return (
        [random.random() for _ in range(3)],
        np.random.rand(3).tolist(),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
        np.random.randn(2).tolist(),
        random.gauss(0, 1),
    )


def test_seed_everything_makes_draws_repeat():
    seed_everything(123)
    first = draws()
    seed_everything(123)
    assert draws() == first
    seed_everything(124)
    assert draws() != first


@pytest.mark.parametrize("seed", [True, 1.0, "1", -1, 2**64, None])
def test_seed_everything_rejects_bad_seed(seed):
    with pytest.raises(ConfigurationError, match="seed"):
        seed_everything(seed)


def test_seed_everything_accepts_bounds():
    seed_everything(0)
    seed_everything(2**64 - 1)
    seed_everything(np.int64(7))
    seed_everything(2**32 + 5)
    big = draws()
    seed_everything(5)
    assert draws() != big  # the high bits matter for every generator
    seed_everything(5)
    ours = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    assert ours == (random.random(), np.random.rand(), torch.rand(1).item())


def test_capture_restore_round_trip():
    seed_everything(5)
    draws()  # move away from the seeded state, including the cached Gaussians
    state = capture_rng_state()
    expected = draws()
    draws()
    restore_rng_state(state)
    assert draws() == expected


def test_capture_layout():
    state = capture_rng_state()
    assert set(state) == {"python", "numpy", "torch", "cuda"}
    assert isinstance(state["python"], tuple)
    assert state["numpy"][0] == "MT19937"
    assert state["torch"].dtype == torch.uint8
    assert state["cuda"] == [] or all(t.dtype == torch.uint8 for t in state["cuda"])


def test_restore_accepts_lists_where_tuples_were_saved():
    seed_everything(9)
    state = capture_rng_state()
    expected = draws()
    python = state["python"]
    mangled = dict(state, python=[python[0], list(python[1]), python[2]], numpy=list(state["numpy"]))
    mangled["numpy"][1] = mangled["numpy"][1].tolist()
    restore_rng_state(mangled)
    assert draws() == expected


def _broken(key, value):
    state = capture_rng_state()
    state[key] = value
    return state


@pytest.mark.parametrize(
    "state",
    [
        pytest.param("not a dict", id="not-a-dict"),
        pytest.param({"python": None}, id="missing-keys"),
        pytest.param(lambda: {**capture_rng_state(), "extra": 1}, id="extra-key"),
        pytest.param(lambda: _broken("python", (3, (1, 2), None)), id="python-short"),
        pytest.param(lambda: _broken("python", "xyz"), id="python-type"),
        pytest.param(lambda: _broken("numpy", ("MT19937", np.zeros(3, np.uint32), 0, 0, 0.0)), id="numpy-short"),
        pytest.param(lambda: _broken("numpy", 42), id="numpy-type"),
        pytest.param(lambda: _broken("torch", torch.zeros(5, dtype=torch.uint8)), id="torch-size"),
        pytest.param(lambda: _broken("torch", torch.get_rng_state().float()), id="torch-dtype"),
        pytest.param(lambda: _broken("torch", [1, 2, 3]), id="torch-type"),
        pytest.param(lambda: _broken("cuda", torch.zeros(16, dtype=torch.uint8)), id="cuda-not-list"),
        pytest.param(lambda: _broken("cuda", [torch.zeros(2, 2, dtype=torch.uint8)]), id="cuda-shape"),
    ],
)
def test_restore_rejects_malformed_state_and_changes_nothing(state):
    state = state() if callable(state) else state
    seed_everything(3)
    before = capture_rng_state()
    expected = draws()
    restore_rng_state(before)
    with pytest.raises(StateMismatchError):
        restore_rng_state(state)
    assert draws() == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a checkpoint from a GPU machine")
def test_restore_cuda_states_without_cuda_warns_and_restores_cpu():
    seed_everything(11)
    state = capture_rng_state()
    expected = draws()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.zeros(16, dtype=torch.uint8)]
    with pytest.warns(RuntimeWarning, match="2 device.* but 0 are present") as record:
        restore_rng_state(state)
    assert len(record) == 1
    assert draws() == expected


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    seeds = {derive_seed(1, 0, e) for e in range(100)} | {derive_seed(2, 0, e) for e in range(100)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**64 for s in seeds)


def test_isolated_rng_puts_generators_back():
    seed_everything(4)
    expected = draws()
    seed_everything(4)
    with isolated_rng(derive_seed(7)):
        inside = draws()
    with isolated_rng(derive_seed(7)):
        assert draws() == inside
    with isolated_rng():
        draws()
    assert draws() == expected


def test_isolated_rng_restores_after_exception():
    seed_everything(4)
    expected = draws()
    seed_everything(4)
    with pytest.raises(KeyError), isolated_rng(1):
        draws()
        raise KeyError
    assert draws() == expected
