"""The trainer-owned sample order and a resumable position in it.

:class:`ResumableLoader` wraps a user's ``DataLoader`` (or any re-iterable of batches) and
yields ``(batch_idx, batch)`` for an epoch from any batch position. For a map-style dataset the
order of an epoch is a pure function of ``(seed, epoch)``, so a resumed run starts at batch ``k``
by computing the order and slicing it: no earlier sample is loaded. See ``docs/resume.md`` for
the full contract: what is exact, under which conditions, and how a custom dataset or sampler
joins in.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from resumable.errors import CheckpointVersionError, ConfigurationError, StateMismatchError
from resumable.rng import derive_seed, isolated_rng, seed_global_generators, validate_seed

__all__ = ["ResumableLoader", "SeededDataset", "STATE_VERSION"]

#: Version of the layout :meth:`ResumableLoader.state_dict` returns.
STATE_VERSION = 1

# Purposes mixed into derive_seed so that the streams never coincide.
_ORDER, _SAMPLE, _WORKERS, _CUSTOM = 0, 1, 2, 3


class ResumableLoader:
    """A DataLoader whose epoch order is owned by the trainer and can start at any batch.

    ``ResumableLoader(dataloader, *, seed)`` takes a ``torch.utils.data.DataLoader`` or, as a
    fallback, any re-iterable of batches (a list of batches is read by index). The user's
    DataLoader is rebuilt with the same dataset, batch size, collate_fn, workers and the rest,
    but with our sampler and our own ``torch.Generator``: creating or iterating it never draws
    from the global torch RNG. Guarantees and limits are in ``docs/resume.md``.

    Call order on resume: construct, ``load_state_dict(saved)``, then ``iter_epoch(epoch, k)``
    with the epoch and batch position the trainer stored. ``state_dict()`` is meant to be called
    right after a training step, while the epoch's iterator is suspended.
    """

    def __init__(self, dataloader: DataLoader | Iterable[Any], *, seed: int) -> None:
        self.seed = validate_seed(seed)
        self.dataloader = dataloader
        # A separate object, not a bound method: a reference cycle would leave persistent
        # workers to the garbage collector, which then waits seconds for them to exit.
        self._warn_once = _WarnOnce()
        self._position: tuple[int, int] | None = None
        if isinstance(dataloader, DataLoader):
            if isinstance(dataloader.dataset, IterableDataset):
                self._source: Any = _IterableSource(dataloader, self.seed, self._warn_once)
            else:
                self._source = _MapSource(dataloader, self.seed, self._warn_once)
        else:
            self._source = _BatchesSource(dataloader, self._warn_once)

    @property
    def dataset(self) -> Any:
        """The user's dataset (None when wrapping a plain iterable of batches)."""
        return getattr(self.dataloader, "dataset", None)

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch, or None when unknown (an IterableDataset, an unsized iterable).

        For a custom sampler this is ``len()`` of the sampler's batches as PyTorch reports it.
        """
        return self._source.num_batches

    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[int, Any]]:
        """Yield ``(batch_idx, batch)`` for ``epoch``, starting at batch ``start_batch``.

        ``batch_idx`` counts from 0 within the epoch. For map-style datasets and sized
        iterables, reaching ``start_batch`` loads no earlier sample; for an IterableDataset
        without saved state the earlier batches are read and discarded (with a warning), with
        the global RNGs put back afterwards. ``start_batch == num_batches`` yields nothing.
        Raises ConfigurationError for a negative epoch/start or a start beyond the epoch.
        """
        epoch = _check_index(epoch, "epoch")
        start_batch = _check_index(start_batch, "start_batch")
        total = self.num_batches
        if total is not None and start_batch > total:
            raise ConfigurationError(
                f"start_batch={start_batch} is past the end of the epoch ({total} batches); "
                "pass the batch position the trainer stored with the checkpoint."
            )
        self._position = (epoch, start_batch)
        return self._track(epoch, self._source.iter_epoch(epoch, start_batch))

    def _track(self, epoch: int, batches: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
        for batch_idx, batch in batches:
            # Set before the yield: state_dict() runs while this generator is suspended.
            self._position = (epoch, batch_idx + 1)
            yield batch_idx, batch

    def state_dict(self) -> dict[str, Any]:
        """Return plain data describing this loader and its resumable state.

        Layout (version 1)::

            {"version": 1, "kind": "map" | "iterable" | "batches",
             "facts": {...},                        # must match on load
             "position": [epoch, next_batch] | None,  # informative; the trainer keeps its own
             "num_workers": int,
             "sampler": {"epoch": int, "state": ...} | None,  # custom sampler, at epoch start
             "dataset": {"epoch": int, "batch": int, "state": ...} | None}  # stateful iterable
        """
        return {
            "version": STATE_VERSION,
            "kind": self._source.kind,
            "facts": self._source.facts(),
            "position": list(self._position) if self._position is not None else None,
            "num_workers": getattr(self.dataloader, "num_workers", 0),
            "sampler": self._source.sampler_state(),
            "dataset": self._source.dataset_state(self._position),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check ``state`` fits this loader and arm it for the next :meth:`iter_epoch`.

        Raises CheckpointVersionError for a newer layout and StateMismatchError when the kind or
        a fact (dataset length, batch size, drop_last, sampler, seed, ...) differs, naming the
        value saved, the value found and what to do.
        """
        if not isinstance(state, dict) or "version" not in state:
            raise StateMismatchError(
                f"ResumableLoader state must be a dict with a 'version', found "
                f"{type(state).__name__}; pass what ResumableLoader.state_dict() returned."
            )
        if isinstance(state["version"], int) and state["version"] > STATE_VERSION:
            raise CheckpointVersionError(
                f"ResumableLoader state version {state['version']!r}, this resumable reads "
                f"version {STATE_VERSION}; resume with the resumable that wrote the checkpoint."
            )
        if state["version"] != STATE_VERSION:
            raise StateMismatchError(
                f"ResumableLoader state version {state['version']!r}, expected {STATE_VERSION}; "
                "the checkpoint is damaged or not from ResumableLoader."
            )
        expected = {"version", "kind", "facts", "position", "num_workers", "sampler", "dataset"}
        if set(state) != expected:
            raise StateMismatchError(
                f"ResumableLoader state keys: expected {sorted(expected)}, found "
                f"{sorted(map(str, state))}; the checkpoint is damaged or not from ResumableLoader."
            )
        _check_same("kind", state["kind"], self._source.kind)
        _check_facts(state["facts"], self._source.facts())
        workers_now, workers_saved = getattr(self.dataloader, "num_workers", 0), state["num_workers"]
        if not isinstance(workers_saved, int):
            raise StateMismatchError(f"Saved num_workers must be an int, found {workers_saved!r:.100}.")
        if (workers_saved > 0) != (workers_now > 0) and self._source.kind == "map":
            self._warn_once(
                "workers",
                f"The checkpoint was written with num_workers={workers_saved}, this "
                f"loader has num_workers={workers_now}: random augmentation in __getitem__ will "
                "differ from the original run (workers seed per sample, the main process uses "
                "the global RNG). Use the original num_workers for an exact resume.",
            )
        self._source.load(state["sampler"], state["dataset"])
        position = state["position"]
        self._position = tuple(position) if position is not None else None


class _WarnOnce:
    """Issues each kind of warning at most once per loader."""

    def __init__(self) -> None:
        self.issued: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self.issued:
            self.issued.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)


class _PlanSampler:
    """Yields the units (batches or single indices) of one epoch's order, from a start batch.

    ``units`` is a list or a range of indices, batched here by ``batch_size``; or, when
    ``batch_size`` is None, the units themselves: whole batches if ``batched_units`` (a custom
    batch sampler), else single indices (no auto-collation). With workers, each index becomes
    ``(epoch, index)`` so that the worker can seed from it. ``iter()`` captures the current
    plan, so a later plan does not change an iterator already made.
    """

    def __init__(self) -> None:
        self.units: Any = []
        self.batched_units = False
        self.batch_size: int | None = None
        self.drop_last = False
        self.start = 0
        self.tag_epoch: int | None = None

    def num_units(self, length: int) -> int:
        """Number of batches the order of ``length`` units gives."""
        if self.batch_size is None:
            return length
        if self.drop_last:
            return length // self.batch_size
        return -(-length // self.batch_size)

    def __len__(self) -> int:
        return max(0, self.num_units(len(self.units)) - self.start)

    def __iter__(self) -> Iterator[Any]:
        if self.batch_size is None:
            return _iter_units(self.units, self.start, self.tag_epoch, self.batched_units)
        stop = self.num_units(len(self.units)) * self.batch_size
        return _iter_batches(self.units, self.batch_size, self.start, stop, self.tag_epoch)


def _iter_units(units: Any, start: int, epoch: int | None, batched: bool) -> Iterator[Any]:
    for unit in units[start:]:
        if epoch is None:
            yield unit
        else:
            yield [(epoch, i) for i in unit] if batched else (epoch, unit)


def _iter_batches(units: Any, size: int, start: int, stop: int, epoch: int | None) -> Iterator[Any]:
    for begin in range(start * size, stop, size):
        batch = list(units[begin : begin + size])
        yield batch if epoch is None else [(epoch, i) for i in batch]


class SeededDataset(Dataset):
    """Seeds the worker's global RNGs from ``(seed, epoch, index)``, then returns ``dataset[index]``.

    Used only when ``num_workers > 0``: random augmentation in ``__getitem__`` then depends on
    the sample alone, not on which worker loads it or how many came before. The user's dataset
    is ``self.dataset``.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, Any]) -> Any:
        epoch, index = key
        seed_global_generators(derive_seed(self.seed, _SAMPLE, epoch, _seed_part(index)))
        return self.dataset[index]


def _seed_part(index: Any) -> int:
    if isinstance(index, int) and index >= 0:
        return index
    # Non-integer keys (strings, tuples) need a seed that is stable across processes; hash() is not.
    return int.from_bytes(hashlib.sha256(repr(index).encode()).digest()[:8], "little")


class _MapSource:
    """A map-style dataset: the order of an epoch is computed from ``(seed, epoch)``."""

    kind = "map"

    def __init__(self, dl: DataLoader, seed: int, warn: Any) -> None:
        self._seed = seed
        self._warn = warn
        self._plan = _PlanSampler()
        batch_sampler = dl.batch_sampler
        if batch_sampler is None:
            order_source: Any = dl.sampler
        elif type(batch_sampler) is BatchSampler:
            order_source = batch_sampler.sampler
            self._plan.batch_size = batch_sampler.batch_size
            self._plan.drop_last = batch_sampler.drop_last
        else:
            order_source = batch_sampler
            self._plan.batched_units = True
        self._order = _make_order(order_source, seed, warn)
        self._dataset_len = _len_or_none(dl.dataset)
        self._workers = dl.num_workers > 0
        dataset = SeededDataset(dl.dataset, seed) if self._workers else dl.dataset
        self._generator = torch.Generator()
        if self._plan.batch_size is None and batch_sampler is None:
            order_kwargs: dict[str, Any] = {"sampler": self._plan, "batch_size": None}
        else:
            order_kwargs = {"batch_sampler": self._plan}
        self._loader = _rebuild(dl, dataset, self._generator, order_kwargs, warn)
        self._cached: tuple[int, Any] | None = None

    @property
    def num_batches(self) -> int | None:
        length = self._order.length()
        return None if length is None else self._plan.num_units(length)

    def facts(self) -> dict[str, Any]:
        return {
            "dataset_len": self._dataset_len,
            "batch_size": self._plan.batch_size,
            "drop_last": self._plan.drop_last,
            **self._order.facts(),
            "seed": self._seed,
        }

    def iter_epoch(self, epoch: int, start: int) -> Iterator[tuple[int, Any]]:
        units = self._units(epoch)
        if start > self._plan.num_units(len(units)):
            raise ConfigurationError(
                f"start_batch={start} is past the end of epoch {epoch} "
                f"({self._plan.num_units(len(units))} batches); pass the stored batch position."
            )
        self._plan.units, self._plan.start = units, start
        self._plan.tag_epoch = epoch if self._workers else None
        self._generator.manual_seed(derive_seed(self._seed, _WORKERS, epoch))
        return enumerate(iter(self._loader), start)

    def _units(self, epoch: int) -> Any:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._order.units(epoch))
        return self._cached[1]

    def sampler_state(self) -> dict[str, Any] | None:
        return self._order.state()

    def dataset_state(self, position: tuple[int, int] | None) -> None:
        return None

    def load(self, sampler: dict[str, Any] | None, dataset: Any) -> None:
        self._order.load(sampler)
        self._cached = None


def _make_order(source: Any, seed: int, warn: Any) -> Any:
    if type(source) is SequentialSampler:
        return _SequentialOrder(len(source))
    if type(source) is RandomSampler:
        return _RandomOrder(len(source.data_source), source.replacement, source.num_samples, seed)
    return _CustomOrder(source, seed, warn)


class _SequentialOrder:
    """``0, 1, ..., n-1`` every epoch."""

    def __init__(self, length: int) -> None:
        self._length = length

    def length(self) -> int:
        return self._length

    def units(self, epoch: int) -> range:
        return range(self._length)

    def facts(self) -> dict[str, Any]:
        return {"sampler": "sequential", "num_samples": self._length}

    def state(self) -> None:
        return None

    def load(self, state: Any) -> None:
        _check_same("sampler state", state, None)


class _RandomOrder:
    """RandomSampler's order, drawn from a generator seeded by ``(seed, epoch)``."""

    def __init__(self, n: int, replacement: bool, num_samples: int, seed: int) -> None:
        self._n, self._replacement, self._seed = n, replacement, seed
        self._num_samples = num_samples

    def length(self) -> int:
        return self._num_samples

    def units(self, epoch: int) -> list[int]:
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self._seed, _ORDER, epoch))
        if self._replacement:
            size = (self._num_samples,)
            return torch.randint(self._n, size, dtype=torch.int64, generator=generator).tolist()
        rounds, rest = divmod(self._num_samples, self._n)
        parts = [torch.randperm(self._n, generator=generator) for _ in range(rounds)]
        if rest:
            parts.append(torch.randperm(self._n, generator=generator)[:rest])
        return torch.cat(parts).tolist() if parts else []

    def facts(self) -> dict[str, Any]:
        kind = "random_with_replacement" if self._replacement else "random"
        return {"sampler": kind, "num_samples": self._num_samples}

    def state(self) -> None:
        return None

    def load(self, state: Any) -> None:
        _check_same("sampler state", state, None)


class _CustomOrder:
    """A user's sampler (or batch sampler): its order is materialised at each epoch start.

    Before materialising: ``set_epoch(epoch)`` if the sampler has it, and a snapshot of
    ``state_dict()`` if it has one (restored on resume). The global Python/NumPy/torch RNGs are
    seeded from ``(seed, epoch)`` for the duration and put back after, so a sampler that draws
    from them is reproducible and leaves the training RNG stream alone.
    """

    def __init__(self, sampler: Any, seed: int, warn: Any) -> None:
        self._sampler, self._seed, self._warn = sampler, seed, warn
        self._stateful = callable(getattr(sampler, "state_dict", None)) and callable(
            getattr(sampler, "load_state_dict", None)
        )
        self._snapshot: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None
        self._checked = False
        self._name = f"{type(sampler).__module__}.{type(sampler).__qualname__}"

    def length(self) -> int | None:
        return _len_or_none(self._sampler)

    def facts(self) -> dict[str, Any]:
        return {"sampler": f"custom:{self._name}", "num_samples": self.length()}

    def units(self, epoch: int) -> list[Any]:
        if self._pending is not None:
            saved_epoch, state = self._pending["epoch"], self._pending["state"]
            self._pending = None
            if epoch < saved_epoch:
                raise StateMismatchError(
                    f"The sampler state was saved at the start of epoch {saved_epoch}, but epoch "
                    f"{epoch} was asked for; resume at the epoch the trainer stored."
                )
            self._sampler.load_state_dict(copy.deepcopy(state))
            for replayed in range(saved_epoch, epoch):
                self._materialise(replayed)
        if self._stateful:
            self._snapshot = {"epoch": epoch, "state": copy.deepcopy(self._sampler.state_dict())}
        units = self._materialise(epoch)
        if not self._checked:
            self._checked = True
            self._check_reproducible(epoch, units)
        return units

    def _materialise(self, epoch: int) -> list[Any]:
        if callable(getattr(self._sampler, "set_epoch", None)):
            self._sampler.set_epoch(epoch)
        with isolated_rng(derive_seed(self._seed, _CUSTOM, epoch)):
            return [_plain(unit) for unit in self._sampler]

    def _check_reproducible(self, epoch: int, units: list[Any]) -> None:
        if self._snapshot is not None:
            after = copy.deepcopy(self._sampler.state_dict())
            self._sampler.load_state_dict(copy.deepcopy(self._snapshot["state"]))
            again = self._materialise(epoch)
            self._sampler.load_state_dict(after)
        else:
            again = self._materialise(epoch)
        if again != units:
            how = "its state_dict() does not capture" if self._stateful else "nothing restores"
            self._warn(
                "sampler",
                f"Sampler {self._name} gives a different order when asked twice for epoch "
                f"{epoch}: it draws from a private random state that {how}. A resumed run will "
                "see a different order for the rest of that epoch. Make its order a function of "
                "set_epoch(epoch), or give it state_dict()/load_state_dict() covering its RNG.",
            )

    def state(self) -> dict[str, Any] | None:
        return self._snapshot

    def load(self, state: dict[str, Any] | None) -> None:
        if state is not None and (not isinstance(state, dict) or set(state) != {"epoch", "state"}):
            raise StateMismatchError(
                f"The saved sampler state must be {{'epoch', 'state'}}, found {state!r:.200}; "
                "the checkpoint is damaged."
            )
        if state is not None and not self._stateful:
            raise StateMismatchError(
                f"The checkpoint holds a sampler state, but sampler {self._name} has no "
                "load_state_dict(); build the DataLoader with the sampler the run used."
            )
        self._pending = state


def _plain(unit: Any) -> Any:
    """Tensors and NumPy scalars as Python values, so that orders compare; other keys as they are."""
    if isinstance(unit, list):
        return [_plain(u) for u in unit]
    ndim = getattr(unit, "ndim", None)
    if ndim is not None and hasattr(unit, "tolist"):  # torch tensors, NumPy arrays and scalars
        return unit.tolist()
    return unit


class _IterableSource:
    """An IterableDataset: resumed from its own ``state_dict()``, or by reading ahead."""

    kind = "iterable"
    num_batches = None

    def __init__(self, dl: DataLoader, seed: int, warn: Any) -> None:
        self._dataset = dl.dataset
        self._seed, self._warn = seed, warn
        self._num_workers, self._batch_size, self._drop_last = dl.num_workers, dl.batch_size, dl.drop_last
        self._has_state = callable(getattr(dl.dataset, "state_dict", None)) and callable(
            getattr(dl.dataset, "load_state_dict", None)
        )
        # With workers the dataset's state lives in the worker processes, out of our reach.
        self._stateful = self._has_state and dl.num_workers == 0
        self._generator = torch.Generator()
        order_kwargs = {"batch_size": dl.batch_size, "drop_last": dl.drop_last}
        self._loader = _rebuild(dl, dl.dataset, self._generator, order_kwargs, warn)
        self._pending: dict[str, Any] | None = None
        self._name = type(dl.dataset).__qualname__

    def facts(self) -> dict[str, Any]:
        return {
            "batch_size": self._batch_size,
            "drop_last": self._drop_last,
            "num_workers": self._num_workers,
            "stateful": self._stateful,
            "seed": self._seed,
        }

    def iter_epoch(self, epoch: int, start: int) -> Iterator[tuple[int, Any]]:
        if callable(getattr(self._dataset, "set_epoch", None)):
            self._dataset.set_epoch(epoch)
        self._generator.manual_seed(derive_seed(self._seed, _WORKERS, epoch))
        pending, self._pending = self._pending, None
        if pending is not None and self._resumes_from(pending, epoch, start):
            self._dataset.load_state_dict(copy.deepcopy(pending["state"]))
            iterator = iter(self._loader)
        else:
            iterator = iter(self._loader)
            if start:
                self._skip(iterator, epoch, start)
        return enumerate(iterator, start)

    def _resumes_from(self, pending: dict[str, Any], epoch: int, start: int) -> bool:
        saved = (pending["epoch"], pending["batch"])
        if saved == (epoch, start) or (start == 0 and epoch > saved[0]):
            return True
        raise StateMismatchError(
            f"The dataset state was saved at epoch {saved[0]}, batch {saved[1]}, but the trainer "
            f"resumes at epoch {epoch}, batch {start}; resume from the position stored with the "
            "same checkpoint."
        )

    def _skip(self, iterator: Iterator[Any], epoch: int, start: int) -> None:
        if not self._has_state:
            why = "it has no state_dict()/load_state_dict()"
        elif self._num_workers:
            why = "with num_workers > 0 its state lives in the worker processes"
        else:
            why = "no dataset state was loaded for this position"
        self._warn(
            "skip",
            f"Starting IterableDataset {self._name} at batch {start} reads and discards the "
            f"{start} batches before it, because {why}; this costs time proportional to the "
            "position and is exact only if the dataset is deterministic. To resume without "
            "reading, give the dataset state_dict()/load_state_dict() and use num_workers=0.",
        )
        # Whatever the skipped items draw from the global RNGs must not shift the restored stream.
        with isolated_rng():
            for done in range(start):
                if next(iterator, _END) is _END:
                    raise ConfigurationError(
                        f"Epoch {epoch} of {self._name} ended after {done} batches, before "
                        f"start_batch={start}; pass the batch position stored with the checkpoint."
                    )

    def sampler_state(self) -> None:
        return None

    def dataset_state(self, position: tuple[int, int] | None) -> dict[str, Any] | None:
        if not self._stateful:
            return None
        epoch, batch = position if position is not None else (0, 0)
        return {"epoch": epoch, "batch": batch, "state": copy.deepcopy(self._dataset.state_dict())}

    def load(self, sampler: Any, dataset: dict[str, Any] | None) -> None:
        _check_same("sampler state", sampler, None)
        if dataset is not None and (
            not isinstance(dataset, dict) or set(dataset) != {"epoch", "batch", "state"}
        ):
            raise StateMismatchError(
                "The saved dataset state must be {'epoch', 'batch', 'state'}, found "
                f"{dataset!r:.200}; the checkpoint is damaged."
            )
        self._pending = dataset


_END = object()


class _BatchesSource:
    """A plain re-iterable of batches: read by index when it has ``__getitem__`` and ``__len__``."""

    kind = "batches"

    def __init__(self, batches: Iterable[Any], warn: Any) -> None:
        try:
            one_shot = iter(batches) is batches
        except TypeError:
            raise ConfigurationError(
                f"ResumableLoader needs a DataLoader or a re-iterable of batches, found "
                f"{type(batches).__name__}; pass a DataLoader or a list of batches."
            ) from None
        if one_shot:
            raise ConfigurationError(
                f"ResumableLoader needs a re-iterable of batches, found a one-shot iterator "
                f"({type(batches).__name__}); pass a list or a DataLoader instead."
            )
        self._batches, self._warn = batches, warn
        self._indexable = (
            hasattr(batches, "__getitem__") and hasattr(batches, "__len__")
            and not isinstance(batches, (dict, str, bytes))
        )

    @property
    def num_batches(self) -> int | None:
        return _len_or_none(self._batches)

    def facts(self) -> dict[str, Any]:
        return {"num_batches": self.num_batches}

    def iter_epoch(self, epoch: int, start: int) -> Iterator[tuple[int, Any]]:
        if self._indexable:
            for index in range(start, len(self._batches)):  # type: ignore[arg-type]
                yield index, self._batches[index]  # type: ignore[index]
            return
        iterator = iter(self._batches)
        if start:
            self._warn(
                "skip",
                f"Starting a {type(self._batches).__name__} at batch {start} reads and discards "
                "the batches before it, because it cannot be indexed; pass a list or a "
                "DataLoader to resume without reading.",
            )
            with isolated_rng():
                for _ in range(start):
                    next(iterator, None)
        yield from enumerate(iterator, start)

    def sampler_state(self) -> None:
        return None

    def dataset_state(self, position: tuple[int, int] | None) -> None:
        return None

    def load(self, sampler: Any, dataset: Any) -> None:
        _check_same("sampler state", sampler, None)
        _check_same("dataset state", dataset, None)


def _rebuild(
    dl: DataLoader, dataset: Any, generator: torch.Generator, order: dict[str, Any], warn: Any
) -> DataLoader:
    """A DataLoader like ``dl`` but with our order (``order``) and our generator."""
    if type(dl) is not DataLoader:
        warn(
            "subclass",
            f"{type(dl).__qualname__} is rebuilt as a plain DataLoader; behaviour its subclass "
            "adds to iteration is not kept. Move it into the dataset or collate_fn.",
        )
    if dl.num_workers > 0 and not getattr(dl, "in_order", True):
        warn(
            "in_order",
            "in_order=False lets batches arrive in whatever order workers finish them, so a "
            "resumed run cannot be exact; use in_order=True.",
        )
    kwargs: dict[str, Any] = {
        "num_workers": dl.num_workers,
        "collate_fn": dl.collate_fn,
        "pin_memory": dl.pin_memory,
        "timeout": dl.timeout,
        "worker_init_fn": dl.worker_init_fn,
        "multiprocessing_context": dl.multiprocessing_context,
        "generator": generator,
        "persistent_workers": dl.persistent_workers,
        **order,
    }
    if dl.num_workers > 0:
        kwargs["prefetch_factor"] = dl.prefetch_factor
    if hasattr(dl, "in_order"):
        kwargs["in_order"] = dl.in_order
    if getattr(dl, "pin_memory_device", ""):
        kwargs["pin_memory_device"] = dl.pin_memory_device
    return DataLoader(dataset, **kwargs)


def _check_index(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an int >= 0, found {value!r}.")
    return value


def _len_or_none(obj: Any) -> int | None:
    try:
        return len(obj)
    except (TypeError, NotImplementedError):
        return None


def _check_same(what: str, saved: Any, found: Any) -> None:
    if saved != found:
        raise StateMismatchError(
            f"ResumableLoader {what}: the checkpoint has {saved!r:.200}, this loader has "
            f"{found!r:.200}; build the loader as the original run did, or start a fresh run."
        )


def _check_facts(saved: Any, found: dict[str, Any]) -> None:
    if not isinstance(saved, dict):
        raise StateMismatchError(f"ResumableLoader facts must be a dict, found {saved!r:.200}.")
    keys = sorted(set(saved) | set(found))
    diffs = [
        f"{key}: checkpoint {saved.get(key, '<missing>')!r}, now {found.get(key, '<missing>')!r}"
        for key in keys
        if saved.get(key, _END) != found.get(key, _END)
    ]
    if diffs:
        raise StateMismatchError(
            "The data loader does not match the one the checkpoint was written with ("
            + "; ".join(diffs)
            + "). Resuming would replay or skip samples. Rebuild the DataLoader and seed as in "
            "the original run, or start a fresh run without loading this state."
        )
