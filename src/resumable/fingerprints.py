"""Fingerprints of a training run, batch by batch, for `verify_resume` to compare two runs.

`Recorder` is a callback that notes, at each batch's start, a digest of the batch and of every
global random generator, and at its end the generators again and a digest of every weight and
optimizer tensor. Digests are exact: equal digests mean equal bits.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .callbacks.base import Callback
from .rng import capture_rng_state

if TYPE_CHECKING:
    from .module import Module
    from .trainer import Trainer

__all__ = ["BatchRecord", "Recorder", "digest", "optimizer_values", "max_abs_diff"]

VALUE_BUDGET = 256 * 2**20  # bytes of tensors a Recorder keeps to measure a later difference


@dataclass
class BatchRecord:
    """What one training batch looked like: where it was, digests around it, optionally its tensors."""

    epoch: int
    batch_idx: int
    step: int
    data: str
    rng_fetched: dict[str, str]
    rng_after: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    optimizer: dict[str, str] = field(default_factory=dict)
    values: dict[str, torch.Tensor] | None = None  # copies of the tensors, kept within VALUE_BUDGET
    max_diffs: dict[str, float] = field(default_factory=dict)  # against the reference run's `values`


class Recorder(Callback):
    """Digests of each batch and of the state around it (`batches`), and of the random generators
    right after a restore (`rng_at_resume`); meant to run after the user's callbacks.

    From step `keep_from_step` on, it also keeps copies of the tensors (within a memory budget);
    given the `reference` records of such a run, it measures how far its own tensors are from them.
    """

    def __init__(self, keep_from_step: int | None = None, reference: list[BatchRecord] | None = None) -> None:
        self.batches: list[BatchRecord] = []
        self.rng_at_resume: dict[str, str] | None = None
        self.keep_from_step, self.reference = keep_from_step, reference or []
        self._kept_bytes = 0

    @property
    def state_key(self) -> str:
        return "resumable.fingerprints.Recorder"

    def on_fit_start(self, trainer: Trainer, module: Module) -> None:
        if trainer.resumed_from:
            self.rng_at_resume = rng_digests()

    def on_train_batch_start(self, trainer: Trainer, module: Module, batch: Any, batch_idx: int) -> None:
        self.batches.append(BatchRecord(trainer.current_epoch, batch_idx, trainer.global_step, digest(batch),
                                        rng_digests()))

    def on_train_batch_end(self, trainer: Trainer, module: Module, outputs: Any, batch: Any, batch_idx: int) -> None:
        record = self.batches[-1]
        record.rng_after = rng_digests()
        weights, optimizer = module.state_dict(), optimizer_values(trainer, module)
        record.weights = {name: digest(t) for name, t in weights.items()}
        record.optimizer = {label: digest(v) for label, v in optimizer.items()}
        tensors = {k: v for k, v in {**weights, **optimizer}.items() if isinstance(v, torch.Tensor)}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.keep_from_step is not None and record.step >= self.keep_from_step \
                and self._kept_bytes + size <= VALUE_BUDGET:
            record.values = {k: t.detach().cpu().clone() for k, t in tensors.items()}
            self._kept_bytes += size
        index = len(self.batches) - 1
        reference = self.reference[index].values if index < len(self.reference) else None
        for name, tensor in tensors.items() if reference else ():
            kept = reference.get(name)
            if kept is not None and kept.shape == tensor.shape and not torch.equal(kept, tensor.detach().cpu()):
                record.max_diffs[name] = max_abs_diff(kept, tensor)


def digest(value: Any) -> str:
    """A digest of a value: tensors and arrays by dtype, shape and bytes; containers item by item."""
    h = hashlib.blake2b(digest_size=12)
    _feed(h, value)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"tensor {t.dtype} {tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"array {value.dtype} {value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for key, item in value.items():
            h.update(repr(key).encode())
            _feed(h, item)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__} {len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(repr(value).encode())


def rng_digests() -> dict[str, str]:
    """A digest of each global random generator, by a readable name ("torch CPU", "torch cuda:0", ...)."""
    state = capture_rng_state()
    digests = {"Python random": digest(state["python"]), "NumPy np.random": digest(state["numpy"]),
               "torch CPU": digest(state["torch"])}
    digests.update({f"torch cuda:{i}": digest(s) for i, s in enumerate(state["cuda"])})
    return digests


def optimizer_values(trainer: Trainer, module: Module) -> dict[str, Any]:
    """Every optimizer's state and hyperparameters, labelled with the parameter names."""
    names = {id(p): name for name, p in module.named_parameters()}
    values: dict[str, Any] = {}
    for i, optimizer in enumerate(trainer.optimizers):
        for g, group in enumerate(optimizer.param_groups):
            values[f"optimizer {i} param group {g} settings"] = {k: v for k, v in group.items() if k != "params"}
            for param in group["params"]:
                for key, value in optimizer.state.get(param, {}).items():
                    values[f"optimizer {i} state {key!r} of {names.get(id(param), '<unnamed parameter>')}"] = value
    return values


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute elementwise difference of two same-shaped tensors, as a float."""
    if not a.numel():
        return 0.0
    return float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max())
