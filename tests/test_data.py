"""Tests for resumable.data: the trainer-owned order and exact resume from any batch."""

from __future__ import annotations

import os
import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

from resumable.data import ResumableLoader
from resumable.errors import CheckpointVersionError, ConfigurationError, StateMismatchError
from resumable.rng import capture_rng_state, restore_rng_state, seed_everything

N = 23


# ---------------------------------------------------------------- datasets and samplers


class Counting(Dataset):
    """Returns its index as a tensor and records every index it loads (main process only)."""

    def __init__(self, n: int = N, log: str | None = None) -> None:
        self.n, self.log, self.loaded = n, log, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        self.loaded.append(index)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{index}\n")
        return torch.tensor([float(index)])


class Augmenting(Counting):
    """Adds noise from all three global generators: the sample depends on the RNG state."""

    def __getitem__(self, index: int) -> torch.Tensor:
        base = super().__getitem__(index)
        return torch.cat([base, torch.rand(1) + float(np.random.rand()) + random.random()])


class EpochSampler(Sampler):
    """A custom sampler whose order is a function of set_epoch: exact without state."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(((i * 7 + self.epoch * 3) % self.n for i in range(self.n)))

    def __len__(self) -> int:
        return self.n


class PrivateRngSampler(Sampler):
    """Draws from its own generator, which advances every epoch; state_dict covers it."""

    def __init__(self, n: int) -> None:
        self.n, self.generator = n, torch.Generator().manual_seed(99)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class UnrestorableSampler(PrivateRngSampler):
    """Same private generator, but nothing can save it: resume cannot be exact."""

    state_dict = None  # type: ignore[assignment]
    load_state_dict = None  # type: ignore[assignment]


class GlobalRngSampler(Sampler):
    """Draws its order from the global torch RNG, like RandomSampler without a generator."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(torch.randperm(self.n).tolist())

    def __len__(self) -> int:
        return self.n


class PairBatchSampler(Sampler):
    """A custom batch sampler: batches of two, reversed order."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        order = list(range(self.n))[::-1]
        return iter([order[i : i + 2] for i in range(0, self.n, 2)])

    def __len__(self) -> int:
        return (self.n + 1) // 2


def make(kind: str, n: int = N, num_workers: int = 0, dataset: Dataset | None = None) -> DataLoader:
    ds = dataset if dataset is not None else Counting(n)
    options = {
        "shuffle": dict(batch_size=4, shuffle=True),
        "sequential": dict(batch_size=4, shuffle=False),
        "shuffle_drop_last": dict(batch_size=4, shuffle=True, drop_last=True),
        "replacement": dict(batch_size=4, sampler=RandomSampler(ds, replacement=True, num_samples=30)),
        "num_samples": dict(batch_size=5, sampler=RandomSampler(ds, num_samples=2 * n + 3)),
        "batch_sampler": dict(batch_sampler=BatchSampler(RandomSampler(ds), 3, drop_last=False)),
        "batch_sampler_seq": dict(batch_sampler=BatchSampler(SequentialSampler(ds), 6, True)),
        "custom_epoch": dict(batch_size=4, sampler=EpochSampler(n)),
        "custom_stateful": dict(batch_size=4, sampler=PrivateRngSampler(n)),
        "custom_global_rng": dict(batch_size=4, sampler=GlobalRngSampler(n)),
        "custom_batch_sampler": dict(batch_sampler=PairBatchSampler(n)),
        "no_batching": dict(batch_size=None, shuffle=True),
    }[kind]
    return DataLoader(ds, num_workers=num_workers, **options)


MAP_KINDS = [
    "shuffle",
    "sequential",
    "shuffle_drop_last",
    "replacement",
    "num_samples",
    "batch_sampler",
    "batch_sampler_seq",
    "custom_epoch",
    "custom_stateful",
    "custom_global_rng",
    "custom_batch_sampler",
    "no_batching",
]
SHUFFLED = {"shuffle", "shuffle_drop_last", "replacement", "num_samples", "batch_sampler",
            "custom_epoch", "custom_stateful", "custom_global_rng", "no_batching"}


def values(batches) -> list:
    """(batch_idx, batch) pairs as plain lists, for exact comparison."""
    return [(i, b.tolist()) for i, b in batches]


def positions(total: int) -> list[int]:
    return sorted({0, 1, total // 2, total - 1, total})


def rng_fingerprint() -> tuple:
    state = capture_rng_state()
    return (state["python"], state["numpy"][1].tobytes(), state["numpy"][2:], state["torch"].tolist())


# ---------------------------------------------------------------- order and start position


@pytest.mark.parametrize("kind", MAP_KINDS)
def test_start_batch_is_the_tail_of_the_epoch(kind):
    loader = ResumableLoader(make(kind), seed=3)
    for epoch in (0, 1):
        full = values(loader.iter_epoch(epoch))
        assert len(full) == loader.num_batches
        for k in positions(len(full)):
            assert values(loader.iter_epoch(epoch, start_batch=k)) == full[k:]
    if kind in SHUFFLED:
        assert values(loader.iter_epoch(0)) != values(loader.iter_epoch(1))


@pytest.mark.parametrize("kind", MAP_KINDS)
def test_fresh_loader_resumes_from_state(kind):
    reference = ResumableLoader(make(kind), seed=5)
    list(reference.iter_epoch(0))
    epoch1 = reference.iter_epoch(1)
    k = reference.num_batches // 2
    head = [next(epoch1) for _ in range(k)]
    state = reference.state_dict()
    assert state["position"] == [1, k]
    rest, epoch2 = values(epoch1), values(reference.iter_epoch(2))
    assert head[-1][0] == k - 1

    resumed = ResumableLoader(make(kind), seed=5)
    resumed.load_state_dict(state)
    assert values(resumed.iter_epoch(1, k)) == rest
    assert values(resumed.iter_epoch(2)) == epoch2


def test_seed_changes_the_order_and_sequential_ignores_it():
    a = values(ResumableLoader(make("shuffle"), seed=1).iter_epoch(0))
    b = values(ResumableLoader(make("shuffle"), seed=2).iter_epoch(0))
    assert a != b
    seq = values(ResumableLoader(make("sequential"), seed=1).iter_epoch(0))
    assert [x for _, batch in seq for x in batch] == [[float(i)] for i in range(N)]


def test_replacement_and_num_samples_give_the_requested_count():
    assert ResumableLoader(make("replacement"), seed=0).num_batches == 8  # 30 samples / 4
    drawn = [x for _, b in values(ResumableLoader(make("num_samples"), seed=0).iter_epoch(0)) for x in b]
    assert len(drawn) == 2 * N + 3
    assert sorted(drawn[:N]) == [[float(i)] for i in range(N)]  # a whole permutation first


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    batch_size=st.integers(1, 9),
    drop_last=st.booleans(),
    replacement=st.booleans(),
    extra=st.integers(-5, 30),
    epoch=st.integers(0, 3),
    data=st.data(),
)
def test_random_order_matches_randomsampler_semantics(n, batch_size, drop_last, replacement, extra, epoch, data):
    dataset = Counting(n)
    num_samples = max(1, n + extra)
    sampler = RandomSampler(dataset, replacement=replacement, num_samples=num_samples)
    loader = ResumableLoader(DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last), seed=1)
    full = values(loader.iter_epoch(epoch))
    expected_batches = num_samples // batch_size if drop_last else -(-num_samples // batch_size)
    assert len(full) == loader.num_batches == expected_batches
    assert all(len(b) == batch_size for _, b in full[:-1])
    drawn = [int(x[0]) for _, b in full for x in b]
    assert all(0 <= i < n for i in drawn)
    if not replacement and not drop_last:
        for lap in range(0, num_samples, n):  # each lap through the data is a permutation
            chunk = drawn[lap : lap + n]
            assert len(set(chunk)) == len(chunk)
    k = data.draw(st.integers(0, len(full)))
    assert values(loader.iter_epoch(epoch, k)) == full[k:]


@pytest.mark.parametrize("kind", ["shuffle", "custom_stateful", "custom_batch_sampler", "no_batching"])
def test_start_batch_loads_no_earlier_sample(kind):
    dataset = Counting()
    loader = ResumableLoader(make(kind, dataset=dataset), seed=0)
    full = values(loader.iter_epoch(0))
    k = len(full) // 2
    dataset.loaded.clear()
    tail = loader.iter_epoch(0, k)
    assert dataset.loaded == []  # creating the iterator fetches nothing
    next(tail)
    expected_first = full[k][1]
    assert [[float(i)] for i in dataset.loaded] == (expected_first if kind != "no_batching" else [expected_first])
    list(tail)
    loaded = [[float(i)] for i in dataset.loaded]
    wanted = [x for _, b in full[k:] for x in (b if kind != "no_batching" else [b])]
    assert loaded == wanted


def test_start_batch_out_of_range_is_refused():
    loader = ResumableLoader(make("shuffle"), seed=0)
    assert list(loader.iter_epoch(0, loader.num_batches)) == []
    for bad in [(0, loader.num_batches + 1), (-1, 0), (0, -1), (0, 1.5)]:
        with pytest.raises(ConfigurationError):
            loader.iter_epoch(*bad)


@pytest.mark.parametrize("seed", [-1, 2**64, 1.0, True])
def test_bad_seed_is_refused(seed):
    with pytest.raises(ConfigurationError):
        ResumableLoader(make("shuffle"), seed=seed)


def test_user_settings_survive_the_rebuild():
    def collate(samples):
        return torch.cat(samples) * 10

    loader = ResumableLoader(DataLoader(Counting(), batch_size=4, collate_fn=collate), seed=0)
    _, first = next(iter(loader.iter_epoch(0)))
    assert first.tolist() == [0.0, 10.0, 20.0, 30.0]
    assert loader.dataset is loader.dataloader.dataset


# ---------------------------------------------------------------- global RNG


@pytest.mark.parametrize("kind", ["shuffle", "custom_global_rng", "custom_stateful"])
def test_loader_never_moves_the_global_rng(kind):
    seed_everything(0)
    before = rng_fingerprint()
    loader = ResumableLoader(make(kind), seed=1)
    list(loader.iter_epoch(0))
    tail = loader.iter_epoch(1, 2)
    next(tail)
    loader.state_dict()
    assert rng_fingerprint() == before
    # The check can fail: a plain shuffled DataLoader draws its base seed from the global RNG.
    next(iter(DataLoader(Counting(), shuffle=True)))
    assert rng_fingerprint() != before


def test_main_process_augmentation_stays_in_lockstep_with_restored_rng():
    def run(resume_at: int | None):
        seed_everything(42)
        loader = ResumableLoader(make("shuffle", dataset=Augmenting()), seed=7)
        out = []
        for i, batch in loader.iter_epoch(0):
            out.append(batch.tolist())
            torch.rand(3)  # the training step draws from the RNG too
            if i + 1 == resume_at:
                return out, capture_rng_state(), loader.state_dict()
        return out

    uninterrupted = run(None)
    k = 3
    head, rng, state = run(k)
    assert head == uninterrupted[:k]
    seed_everything(1000)  # a new process starts with some other state
    loader = ResumableLoader(make("shuffle", dataset=Augmenting()), seed=7)
    loader.load_state_dict(state)
    restore_rng_state(rng)
    tail = []
    for _, batch in loader.iter_epoch(0, k):
        tail.append(batch.tolist())
        torch.rand(3)
    assert tail == uninterrupted[k:]


# ---------------------------------------------------------------- workers (slow to start: few)


def test_workers_random_augmentation_is_reproducible_from_any_position(tmp_path):
    log = str(tmp_path / "loaded.txt")
    seed_everything(0)
    before = rng_fingerprint()
    loader = ResumableLoader(make("shuffle", num_workers=2, dataset=Augmenting(log=log)), seed=4)
    full = values(loader.iter_epoch(0))
    assert rng_fingerprint() == before
    assert len({b[0][1] for _, b in full}) == len(full)  # the noise is really random
    k = 3
    os.remove(log)
    resumed = ResumableLoader(make("shuffle", num_workers=2, dataset=Augmenting(log=log)), seed=4)
    resumed.load_state_dict(loader.state_dict())
    assert values(resumed.iter_epoch(0, k)) == full[k:]
    assert rng_fingerprint() == before
    with open(log) as f:
        loaded = sorted(int(line) for line in f)
    assert loaded == sorted(int(x[0]) for _, b in full[k:] for x in b)  # nothing before k
    assert values(loader.iter_epoch(1)) != values(loader.iter_epoch(0))


def test_persistent_workers_follow_the_plan_across_epochs():
    dl = DataLoader(Augmenting(), batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
    loader = ResumableLoader(dl, seed=4)
    reference = ResumableLoader(make("shuffle", dataset=Augmenting(), num_workers=2), seed=4)
    abandoned = loader.iter_epoch(0)
    next(abandoned)  # a trainer stopping mid-epoch leaves work queued in the persistent workers
    for epoch, start in [(0, 0), (0, 2), (1, 0), (1, 4)]:
        assert values(loader.iter_epoch(epoch, start)) == values(reference.iter_epoch(epoch, start))


# ---------------------------------------------------------------- custom samplers


def test_sampler_with_unrestorable_private_rng_warns_once():
    loader = ResumableLoader(DataLoader(Counting(), batch_size=4, sampler=UnrestorableSampler(N)), seed=0)
    with pytest.warns(RuntimeWarning, match="different order"):
        list(loader.iter_epoch(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(loader.iter_epoch(1))


def test_deterministic_custom_sampler_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in ("custom_epoch", "custom_stateful", "custom_global_rng"):
            list(ResumableLoader(make(kind), seed=0).iter_epoch(0))


def test_stateful_sampler_resumes_at_a_later_epoch_start():
    reference = ResumableLoader(make("custom_stateful"), seed=0)
    list(reference.iter_epoch(0))
    state = reference.state_dict()  # the end of epoch 0: the trainer resumes at (1, 0)
    expected = [values(reference.iter_epoch(e)) for e in (1, 2)]
    resumed = ResumableLoader(make("custom_stateful"), seed=0)
    resumed.load_state_dict(state)
    assert [values(resumed.iter_epoch(e)) for e in (1, 2)] == expected


class Keyed(Dataset):
    """Indexed by string keys; each sample carries noise from the global torch RNG."""

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.tensor([float(key[1:]), torch.rand(()).item()])


class KeySampler(Sampler):
    """Yields string keys, in an order set by set_epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter([f"k{(i * 5 + self.epoch) % 11}" for i in range(11)])

    def __len__(self) -> int:
        return 11


@pytest.mark.parametrize("num_workers", [0, 2])
def test_custom_keys_and_custom_batch_sampler_with_workers(num_workers):
    keyed = ResumableLoader(DataLoader(Keyed(), batch_size=2, sampler=KeySampler(), num_workers=num_workers), seed=0)
    pairs = ResumableLoader(make("custom_batch_sampler", num_workers=num_workers), seed=0)
    for loader in (keyed, pairs):
        full = values(loader.iter_epoch(1))
        tail = values(loader.iter_epoch(1, 2))
        assert [[x[0] for x in b] for _, b in tail] == [[x[0] for x in b] for _, b in full[2:]]
        if num_workers:  # workers seed each sample from (seed, epoch, key): the noise repeats too
            assert tail == full[2:]
    assert [x[0] for _, b in values(keyed.iter_epoch(0)) for x in b] == [float((i * 5) % 11) for i in range(11)]


def test_sampler_yielding_arrays_and_tensors():
    class ArrayBatches(Sampler):
        def __iter__(self):
            return iter([np.arange(i, i + 3) for i in range(0, 21, 3)] + [torch.tensor([21, 22])])

        def __len__(self) -> int:
            return 8

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = ResumableLoader(DataLoader(Counting(), batch_sampler=ArrayBatches()), seed=0)
        full = values(loader.iter_epoch(0))
    assert full[-1] == (7, [[21.0], [22.0]])
    assert values(loader.iter_epoch(0, 5)) == full[5:]


# ---------------------------------------------------------------- iterable datasets


class Stream(IterableDataset):
    """Yields [i, noise] for i in 0..n-1 (split across workers); the noise is global torch RNG."""

    def __init__(self, n: int = N) -> None:
        self.n, self.produced = n, 0

    def __iter__(self):
        info = get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(start, self.n, step):
            self.produced += 1
            yield torch.tensor([float(i), torch.rand(()).item()])


class StatefulStream(Stream):
    """Resumes from its own position; each item also draws from the global torch RNG."""

    def __init__(self, n: int = N) -> None:
        super().__init__(n)
        self.pos = 0

    def __iter__(self):
        while self.pos < self.n:
            self.pos += 1
            self.produced += 1
            yield torch.tensor([float(self.pos - 1), torch.rand(()).item()])
        self.pos = 0

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def test_stateful_iterable_resumes_without_reading_earlier_items():
    def build():
        return ResumableLoader(DataLoader(StatefulStream(), batch_size=4), seed=0)

    seed_everything(3)
    reference = build()
    assert reference.num_batches is None
    epoch0 = reference.iter_epoch(0)
    k = 2
    for _ in range(k):
        next(epoch0)
    state, rng = reference.state_dict(), capture_rng_state()
    assert state["dataset"]["state"] == {"pos": 4 * k}
    rest, epoch1 = values(epoch0), values(reference.iter_epoch(1))

    seed_everything(77)
    resumed = build()
    resumed.load_state_dict(state)
    restore_rng_state(rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert values(resumed.iter_epoch(0, k)) == rest
    assert resumed.dataset.produced == N - 4 * k
    assert values(resumed.iter_epoch(1)) == epoch1


def test_stateful_iterable_refuses_a_position_that_does_not_match_its_state():
    loader = ResumableLoader(DataLoader(StatefulStream(), batch_size=4), seed=0)
    epoch0 = loader.iter_epoch(0)
    next(epoch0)
    state = loader.state_dict()
    resumed = ResumableLoader(DataLoader(StatefulStream(), batch_size=4), seed=0)
    resumed.load_state_dict(state)
    with pytest.raises(StateMismatchError, match="epoch 0, batch 1"):
        resumed.iter_epoch(0, 3)
    with pytest.raises(StateMismatchError, match="num_workers: checkpoint 0, now 2"):
        ResumableLoader(DataLoader(StatefulStream(), batch_size=4, num_workers=2), seed=0).load_state_dict(state)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateless_iterable_skips_ahead_with_a_warning(num_workers):
    def build():
        return ResumableLoader(DataLoader(Stream(), batch_size=3, num_workers=num_workers), seed=0)

    seed_everything(0)
    reference, k = build(), 3
    epoch0 = reference.iter_epoch(0)
    for _ in range(k):
        next(epoch0)
    rng = capture_rng_state()
    rest = values(epoch0)
    after = rng_fingerprint()

    resumed = build()
    restore_rng_state(rng)
    with pytest.warns(RuntimeWarning, match="reads and discards.*state_dict"):
        tail = values(resumed.iter_epoch(0, k))
    assert tail == rest  # the noise too: what skipping drew was put back
    assert rng_fingerprint() == after
    with pytest.raises(ConfigurationError, match="ended after"):
        list(resumed.iter_epoch(0, 100))


# ---------------------------------------------------------------- plain iterables of batches


def test_list_of_batches_is_read_by_index():
    batches = [torch.tensor([i]) for i in range(5)]
    loader = ResumableLoader(batches, seed=0)
    assert loader.num_batches == 5
    assert values(loader.iter_epoch(0, 2)) == [(2, [2]), (3, [3]), (4, [4])]
    resumed = ResumableLoader(batches, seed=0)
    resumed.load_state_dict(loader.state_dict())
    with pytest.raises(StateMismatchError, match="num_batches"):
        ResumableLoader(batches[:4], seed=0).load_state_dict(loader.state_dict())


def test_unindexable_iterable_skips_with_warning_and_one_shot_is_refused():
    class Reiterable:
        def __iter__(self):
            return iter([torch.tensor([i]) for i in range(4)])

    loader = ResumableLoader(Reiterable(), seed=0)
    assert loader.num_batches is None
    with pytest.warns(RuntimeWarning, match="cannot be indexed"):
        assert values(loader.iter_epoch(0, 1)) == [(1, [1]), (2, [2]), (3, [3])]
    with pytest.raises(ConfigurationError, match="one-shot"):
        ResumableLoader(iter([1, 2]), seed=0)


# ---------------------------------------------------------------- state: layout and mismatches


def _assert_plain(value):
    if isinstance(value, dict):
        assert all(isinstance(k, str) for k in value)
        for v in value.values():
            _assert_plain(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _assert_plain(v)
    else:
        assert value is None or isinstance(value, (int, float, str, bool, torch.Tensor, np.ndarray))


@pytest.mark.parametrize("kind", ["shuffle", "custom_stateful"])
def test_state_is_plain_data(kind):
    loader = ResumableLoader(make(kind), seed=0)
    next(loader.iter_epoch(0))
    state = loader.state_dict()
    _assert_plain(state)
    assert state["version"] == 1
    assert state["facts"]["seed"] == 0


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (lambda: ResumableLoader(make("shuffle", n=N + 1), seed=0), "dataset_len: checkpoint 23, now 24"),
        (lambda: ResumableLoader(DataLoader(Counting(), batch_size=5, shuffle=True), seed=0), "batch_size"),
        (lambda: ResumableLoader(make("shuffle_drop_last"), seed=0), "drop_last"),
        (lambda: ResumableLoader(make("sequential"), seed=0), "sampler"),
        (lambda: ResumableLoader(make("shuffle"), seed=1), "seed: checkpoint 0, now 1"),
        (lambda: ResumableLoader([1, 2], seed=0), "kind"),
    ],
)
def test_mismatched_loader_is_refused(other, message):
    saved = ResumableLoader(make("shuffle"), seed=0).state_dict()
    with pytest.raises(StateMismatchError, match=message):
        other().load_state_dict(saved)


def test_newer_or_malformed_state_is_refused():
    loader = ResumableLoader(make("shuffle"), seed=0)
    state = loader.state_dict()
    with pytest.raises(CheckpointVersionError):
        loader.load_state_dict({**state, "version": 2})
    with pytest.raises(StateMismatchError):
        loader.load_state_dict({**state, "surprise": 1})
    with pytest.raises(StateMismatchError):
        loader.load_state_dict([1, 2])
    with pytest.raises(StateMismatchError, match="no load_state_dict"):
        ResumableLoader(make("custom_epoch"), seed=0).load_state_dict(
            {**ResumableLoader(make("custom_epoch"), seed=0).state_dict(), "sampler": {"epoch": 0, "state": {}}}
        )


def test_changing_between_main_process_and_workers_warns():
    state = ResumableLoader(make("shuffle"), seed=0).state_dict()
    with pytest.warns(RuntimeWarning, match="num_workers=0"):
        ResumableLoader(make("shuffle", num_workers=2), seed=0).load_state_dict(state)
