"""What a ResumableLoader wraps: a map-style dataset, an IterableDataset, or a re-iterable of
batches, each with the same small interface (``kind``, ``num_batches``, ``facts``,
``iter_epoch``, ``sampler_state``, ``dataset_state``, ``load``); and the rebuilt DataLoader.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset

from resumable.errors import ConfigurationError, StateMismatchError
from resumable.rng import derive_seed, isolated_rng, seed_global_generators

from .common import _END, _SAMPLE, _WORKERS, _check_same, _len_or_none
from .orders import _PlanSampler, _make_order


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
