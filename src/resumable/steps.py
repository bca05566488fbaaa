"""`StepRunner`: one training batch — forward, backward, accumulation, clipping, optimizer and
scheduler steps — and the state that lives between batches (gradients of an open
accumulation window)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Iterator

import torch

from .errors import ConfigurationError
from .optim import SchedulerConfig, optimizer_parameters

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["StepRunner", "move_to_device"]


class StepRunner:
    """Runs training batches for a trainer; `global_step` counts completed optimization steps."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self._last_loss: torch.Tensor | None = None
        self._warned_skip = False
        self.trained_batches = 0  # batches of this epoch that returned a loss
        self._parameters: dict[int, tuple[int, list[torch.nn.Parameter]]] = {}  # per optimizer: groups, params

    def run_batch(self, batch: Any, batch_idx: int, window_end: bool) -> Any:
        """Forward and backward on `batch` for every optimizer; step them when `window_end`."""
        trainer = self.trainer
        optimizers = trainer.optimizers
        if len(optimizers) == 1:
            outputs = self._forward_backward((batch, batch_idx))
            stepped = window_end and self._optimizer_step(optimizers[0])
        else:
            outputs, stepped = [], False
            for opt_idx, optimizer in enumerate(optimizers):
                with _only_parameters_of(trainer.model, optimizer):
                    outputs.append(self._forward_backward((batch, batch_idx, opt_idx)))
                if window_end:
                    stepped |= self._optimizer_step(optimizer)
        if stepped:
            self._after_step()
        trainer.metrics.callback_metrics.update(trainer.metrics.step_values)
        return outputs

    def _forward_backward(self, args: tuple[Any, ...]) -> Any:
        trainer = self.trainer
        if trainer.precision.name == "32":
            out = trainer.model.training_step(*args)
        else:
            with trainer.precision.autocast():
                out = trainer.model.training_step(*args)
        loss = self._loss_of(out, args[1])
        if loss is not None:
            accumulate = trainer.config.accumulate_grad_batches
            self._backward(loss / accumulate if accumulate > 1 else loss)
        return out

    def finish_epoch(self) -> None:
        """Step optimizers on a partly filled accumulation window (an unsized loader ran out)."""
        stepped = False
        for optimizer in self.trainer.optimizers:
            stepped |= self._optimizer_step(optimizer)
        if stepped:
            self._after_step()
        if self.trained_batches == 0 and self.trainer.batch_in_epoch > 0:
            raise ConfigurationError(
                f"training_step returned None for all {self.trainer.batch_in_epoch} batches of epoch "
                f"{self.trainer.current_epoch}: nothing was trained. Return the loss tensor "
                "(None skips a batch on purpose)"
            )
        self.trained_batches = 0

    def _loss_of(self, out: Any, batch_idx: int) -> torch.Tensor | None:
        if type(out) is torch.Tensor and out.requires_grad and out.dim() == 0:  # the usual case, fully checked
            self._last_loss = out
            self.trained_batches += 1
            return out
        loss = out
        if not isinstance(out, torch.Tensor) and isinstance(out, Mapping):
            if "loss" not in out:
                raise ConfigurationError(f"training_step returned a dict without a 'loss' key (keys: {sorted(out)})")
            loss = out["loss"]
        if loss is None:
            if not self._warned_skip:
                warnings.warn(f"training_step returned None for batch {batch_idx}: that batch is skipped "
                              "(no backward, no optimizer step). Return the loss to train on it.", stacklevel=3)
                self._warned_skip = True
            return None
        if not isinstance(loss, torch.Tensor):
            raise ConfigurationError(
                f"training_step must return a scalar loss tensor (or a dict with 'loss', or None to skip); "
                f"got {type(loss).__name__}"
            )
        if loss.numel() != 1:
            raise ConfigurationError(
                f"training_step must return a scalar loss; got a tensor of shape {tuple(loss.shape)}. "
                "Reduce it (e.g. loss.mean())"
            )
        if not loss.requires_grad:
            raise ConfigurationError(
                "the loss returned by training_step does not require grad, so backward() cannot train anything: "
                "was it computed under torch.no_grad(), detached, or from frozen parameters only?"
            )
        self._last_loss = loss  # detached only when read: backward has freed what the graph saved
        self.trained_batches += 1
        return loss if loss.dim() == 0 else loss.reshape(())

    def _backward(self, loss: torch.Tensor) -> None:
        scaler = self.trainer.precision.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def _optimizer_step(self, optimizer: torch.optim.Optimizer) -> bool:
        groups, params = self._parameters.get(id(optimizer), (0, None))
        if params is None or groups != len(optimizer.param_groups):  # add_param_group adds a group
            params = optimizer_parameters(optimizer)
            self._parameters[id(optimizer)] = (len(optimizer.param_groups), params)
        for p in params:
            if p.grad is not None:
                break
        else:
            return False  # every batch of the window was skipped
        config, scaler = self.trainer.config, self.trainer.precision.scaler
        if scaler is not None:
            scaler.unscale_(optimizer)
        if config.gradient_clip_val is not None:
            if config.gradient_clip_algorithm == "norm":
                torch.nn.utils.clip_grad_norm_(params, config.gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, config.gradient_clip_val)
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return True

    def _after_step(self) -> None:
        trainer = self.trainer
        if trainer.precision.scaler is not None:
            trainer.precision.scaler.update()
        trainer.global_step += 1
        self.step_schedulers("step")
        if trainer.global_step % trainer.config.log_every_n_steps == 0 and trainer.metrics.step_values:
            trainer._log_row(trainer.metrics.pop_step_row())

    def step_schedulers(self, interval: str) -> None:
        """Step the schedulers of `interval` ("step" or "epoch") that are due now."""
        trainer = self.trainer
        count = trainer.global_step if interval == "step" else trainer.current_epoch + 1
        for config in trainer.lr_scheduler_configs:
            if config.interval == interval and count % config.frequency == 0:
                _step_scheduler(config, trainer.callback_metrics)

    def last_loss_value(self) -> float | None:
        """The last loss as a float (a device sync)."""
        return None if self._last_loss is None else float(self._last_loss.detach())

    def state_dict(self) -> dict[str, Any]:
        """Gradients of an open accumulation window, by parameter name, and the epoch's trained count."""
        grads = {name: p.grad.detach().cpu() for name, p in self.trainer.model.named_parameters()
                 if p.grad is not None}
        return {"grads": grads, "trained_batches": self.trained_batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back the gradients of an open accumulation window."""
        params = dict(self.trainer.model.named_parameters())
        unknown = sorted(set(state["grads"]) - set(params))
        if unknown:
            raise ConfigurationError(f"checkpoint has accumulated gradients for unknown parameters {unknown}")
        for name, grad in state["grads"].items():
            params[name].grad = grad.to(params[name].device, params[name].dtype)
        self.trained_batches = int(state["trained_batches"])


def _step_scheduler(config: SchedulerConfig, metrics: Mapping[str, torch.Tensor]) -> None:
    if not config.is_plateau:
        config.scheduler.step()
        return
    if config.monitor not in metrics:
        message = (f"ReduceLROnPlateau monitors {config.monitor!r}, which was not logged; logged metrics: "
                   f"{sorted(metrics)}. Log it with self.log({config.monitor!r}, ...) or set 'monitor'")
        if config.strict:
            raise ConfigurationError(message)
        warnings.warn(message + " (skipped: strict=False)", stacklevel=3)
        return
    config.scheduler.step(float(metrics[config.monitor]))


@contextlib.contextmanager
def _only_parameters_of(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """With several optimizers, freeze every parameter the current one does not own (as Lightning's
    toggle_optimizer), so one loss never leaves gradients on another optimizer's parameters."""
    owned = {id(p) for p in optimizer_parameters(optimizer)}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in owned]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def move_to_device(batch: Any, device: torch.device) -> Any:
    """`batch` with every tensor inside (lists, tuples, namedtuples, dicts) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device != device else batch
    if isinstance(batch, (list, tuple)):
        moved = (move_to_device(v, device) for v in batch)
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    return batch
