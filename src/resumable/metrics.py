"""`MetricStore`: what `Module.log` records, reduced only when it is written.

Logging a tensor keeps a detached reference on its device: no `.item()`, no device sync per
call. Values are turned into Python floats only when a row is written (every
`log_every_n_steps` optimizer steps, at validation end, at epoch end), which is when
`trainer.callback_metrics` is refreshed too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConfigurationError

__all__ = ["MetricStore", "infer_batch_size"]


@dataclass
class _Mean:
    """A running, weighted mean kept as device tensors."""

    total: torch.Tensor
    weight: torch.Tensor

    def add(self, value: torch.Tensor, weight: int) -> None:
        self.total += value.detach().to(self.total.dtype) * weight
        self.weight += weight

    def compute(self) -> float:
        return (self.total / self.weight).item()


@dataclass
class MetricStore:
    """The metrics of one run: latest step values, epoch means, and `callback_metrics`."""

    stage: str = "train"  # "train" or "val": where values logged now belong
    batch_size: int | None = None
    step_values: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch_means: dict[str, dict[str, _Mean]] = field(default_factory=lambda: {"train": {}, "val": {}})
    callback_metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    progress_bar_names: set[str] = field(default_factory=set)

    def log(self, name: str, value: Any, *, prog_bar: bool = False, on_step: bool | None = None,
            on_epoch: bool | None = None, batch_size: int | None = None) -> None:
        """Record one value; see `Module.log` for the meaning of the options."""
        if (self.stage == "train" and type(value) is torch.Tensor and value.dim() == 0 and not prog_bar
                and on_step is not False and not on_epoch and type(name) is str and name):
            self.step_values[name] = value.detach()  # the common case, kept to a few operations
            return
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"self.log needs a non-empty metric name, got {name!r}")
        tensor = _as_scalar(name, value)
        training = self.stage == "train"
        on_step = training if on_step is None else on_step
        on_epoch = (not training) if on_epoch is None else on_epoch
        if prog_bar:
            self.progress_bar_names.add(name)
        if on_step:
            self.step_values[name] = tensor
        if on_epoch:
            key = f"{name}_epoch" if training and on_step else name
            means = self.epoch_means[self.stage]
            mean = means.get(key)
            if mean is None:
                zeros = torch.zeros((), dtype=torch.float64, device=tensor.device)
                mean = means[key] = _Mean(zeros.clone(), zeros.clone())
            mean.add(tensor, batch_size or self.batch_size or 1)

    def pop_step_row(self) -> dict[str, float]:
        """The latest per-step values as floats (one sync), also published to `callback_metrics`."""
        row = {name: v.item() for name, v in self.step_values.items()}
        self.callback_metrics.update({k: torch.tensor(v) for k, v in row.items()})
        return row

    def pop_epoch_row(self, stage: str) -> dict[str, float]:
        """Reduce and clear the epoch means logged during `stage`; publish them to `callback_metrics`."""
        row = {k: m.compute() for k, m in self.epoch_means[stage].items()}
        self.epoch_means[stage] = {}
        self.callback_metrics.update({k: torch.tensor(v) for k, v in row.items()})
        return row


    def progress_bar_values(self) -> dict[str, float]:
        """Latest values of metrics logged with `prog_bar=True` (reads device tensors: call sparingly)."""
        out = {}
        for name in sorted(self.progress_bar_names):
            value = self.step_values.get(name, self.callback_metrics.get(name))
            if value is not None:
                out[name] = float(value)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same sums after a resume."""
        return {
            "step_values": {k: v.detach().cpu() for k, v in self.step_values.items()},
            "epoch_means": {
                stage: {k: [m.total.cpu(), m.weight.cpu()] for k, m in means.items()}
                for stage, means in self.epoch_means.items()
            },
            "callback_metrics": {k: v.detach().cpu() for k, v in self.callback_metrics.items()},
            "progress_bar_names": sorted(self.progress_bar_names),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore what `state_dict` returned."""
        self.step_values = {k: v.to(device) for k, v in state["step_values"].items()}
        self.epoch_means = {
            stage: {k: _Mean(t.to(device), w.to(device)) for k, (t, w) in means.items()}
            for stage, means in state["epoch_means"].items()
        }
        self.callback_metrics = dict(state["callback_metrics"])
        self.progress_bar_names = set(state["progress_bar_names"])


def _as_scalar(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ConfigurationError(
                f"self.log({name!r}, ...) needs a scalar; got a tensor of shape {tuple(value.shape)}. "
                "Reduce it first (e.g. .mean())"
            )
        return value.detach() if value.dim() == 0 else value.detach().reshape(())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, complex):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"self.log({name!r}, ...) needs a number or a scalar tensor; got {type(value).__name__}"
            ) from None
    return torch.tensor(float(value), dtype=torch.float64)


def infer_batch_size(batch: Any) -> int | None:
    """The leading dimension of the first tensor in `batch` (lists, tuples, dicts), or None."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    if isinstance(batch, (list, tuple)):
        for item in batch:
            size = infer_batch_size(item)
            if size is not None:
                return size
    if isinstance(batch, dict):
        for item in batch.values():
            size = infer_batch_size(item)
            if size is not None:
                return size
    return None
