"""Sample orders of a map-style dataset, each a function of ``(seed, epoch)``, and the sampler
that plays one from a start batch.

``_make_order`` picks the order for the DataLoader's sampler: ``SequentialSampler`` and
``RandomSampler`` are recomputed here, any other sampler is materialised under seeded RNGs.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import RandomSampler, SequentialSampler

from resumable.errors import StateMismatchError
from resumable.rng import derive_seed, isolated_rng

from .common import _CUSTOM, _ORDER, _check_same, _len_or_none


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
