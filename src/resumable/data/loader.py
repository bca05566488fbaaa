"""ResumableLoader: the trainer-owned epoch order, its ``state_dict`` and the checks on load."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from resumable.errors import CheckpointVersionError, ConfigurationError, StateMismatchError
from resumable.rng import validate_seed

from .common import _END, _check_same
from .sources import _BatchesSource, _IterableSource, _MapSource


#: Version of the layout :meth:`ResumableLoader.state_dict` returns.
STATE_VERSION = 1


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
    def kind(self) -> str:
        """"map" (a map-style dataset), "iterable" (an IterableDataset) or "batches" (an iterable of
        ready batches). Only an iterable dataset has state of its own that a fetch moves on."""
        return self._source.kind

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


def _check_index(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an int >= 0, found {value!r}.")
    return value


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
