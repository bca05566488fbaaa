"""What a checkpoint holds for a training session, and how it is put back.

`capture(trainer)` builds the checkpoint dict (a literal, so what is saved is visible here);
`restore(trainer, checkpoint)` applies it. Together they carry everything that steers the run:
weights, optimizers, schedulers, callbacks, counters, metrics, data position, gradient
scaler, gradients of an open accumulation window, and every RNG.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..errors import StateMismatchError
from ..rng import capture_rng_state, restore_rng_state

if TYPE_CHECKING:
    from ..module import Module
    from ..trainer import Trainer

__all__ = ["capture", "restore", "position", "load_model_weights"]


def position(trainer: Trainer) -> tuple[int, int, int]:
    """Where the run is: (global_step, epoch, batches done in it), with a finished epoch counted
    as the start of the next one, so two saves of the same state compare equal."""
    if trainer.epoch_finished:
        return (trainer.global_step, trainer.current_epoch + 1, 0)
    return (trainer.global_step, trainer.current_epoch, trainer.batch_in_epoch)


def capture(trainer: Trainer, weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint of `trainer`'s current state (tensors are live references: write before stepping)."""
    from .. import __version__

    model = trainer.model
    assert model is not None
    checkpoint: dict[str, Any] = {
        "resumable_version": __version__,
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "summary": {
            "run_dir": os.path.abspath(trainer.experiment.path),
            "position": list(position(trainer)),
            "weights_only": weights_only,
            "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        },
    }
    if not weights_only:
        checkpoint.update({
            "optimizer_states": [opt.state_dict() for opt in trainer.optimizers],
            "lr_schedulers": [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs],
            "callbacks": {cb.state_key: state for cb in trainer.callbacks if (state := cb.state_dict())},
            "trainer": trainer.state_dict(),
            "metrics": trainer.metrics.state_dict(),
            "steps": trainer._steps.state_dict() if trainer._steps else {"grads": {}, "trained_batches": 0},
            "data": trainer.train_loader.state_dict() if trainer.train_loader else None,
            "grad_scaler": trainer.precision.scaler.state_dict() if trainer.precision.scaler else None,
            "rng": capture_rng_state(),
        })
    model.on_save_checkpoint(checkpoint)
    return checkpoint


def restore(trainer: Trainer, checkpoint: dict[str, Any]) -> None:
    """Put `checkpoint` back into `trainer` and its model; raise on anything that does not fit."""
    model = trainer.model
    assert model is not None and trainer._steps is not None
    model.on_load_checkpoint(checkpoint)
    load_model_weights(model, checkpoint["state_dict"], strict=True, source="checkpoint")
    _load_each("optimizer", trainer.optimizers, checkpoint["optimizer_states"], _check_optimizer_fits)
    _load_each("LR scheduler", [c.scheduler for c in trainer.lr_scheduler_configs], checkpoint["lr_schedulers"])
    _restore_callbacks(trainer, checkpoint["callbacks"])
    trainer.load_state_dict(checkpoint["trainer"])
    trainer.metrics.load_state_dict(checkpoint["metrics"], device=trainer.device)
    trainer._steps.load_state_dict(checkpoint["steps"])
    if checkpoint["data"] is not None and trainer.train_loader is not None:
        trainer.train_loader.load_state_dict(checkpoint["data"])
    scaler_state = checkpoint.get("grad_scaler")
    if (scaler_state is None) != (trainer.precision.scaler is None):
        raise StateMismatchError(
            f"the checkpoint was written with{'out' if scaler_state is None else ''} a GradScaler and this run "
            f"uses precision={trainer.precision.name!r}; resume with the precision it was saved with"
        )
    if scaler_state is not None:
        trainer.precision.scaler.load_state_dict(scaler_state)
    restore_rng_state(checkpoint["rng"])  # last: nothing above may draw random numbers after it


def load_model_weights(model: Module | torch.nn.Module, state_dict: dict[str, torch.Tensor], *, strict: bool,
                       source: str) -> None:
    """Load weights, reporting every missing key, unexpected key and shape mismatch in one message.

    `strict=True`: any of them is a `StateMismatchError` and nothing is loaded. `strict=False`:
    the tensors that fit are loaded and the rest is reported in a warning.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {missing}")
    if unexpected:
        problems.append(f"in the checkpoint but not in the model: {unexpected}")
    if shapes:
        problems.append(f"shape mismatches: {shapes}")
    if problems and strict:
        raise StateMismatchError(
            f"the weights in {source} do not fit {type(model).__name__} (was the architecture changed?): "
            + "; ".join(problems) + ". Pass strict=False to load the tensors that fit"
        )
    fitting = {k: v for k, v in state_dict.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    model.load_state_dict(fitting, strict=not problems)
    if problems:
        warnings.warn(f"loaded {len(fitting)} of {len(own)} tensors from {source}; " + "; ".join(problems),
                      stacklevel=2)


def _load_each(kind: str, objects: list[Any], states: list[Any], check: Any = None) -> None:
    if len(objects) != len(states):
        raise StateMismatchError(
            f"the checkpoint has {len(states)} {kind}(s) but configure_optimizers returned {len(objects)}; "
            f"resume with the same {kind}s it was saved with"
        )
    for index, (obj, state) in enumerate(zip(objects, states)):
        if check is not None:
            check(index, obj, state)
        obj.load_state_dict(state)


def _check_optimizer_fits(index: int, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    saved_groups, groups = state["param_groups"], optimizer.param_groups
    saved_sizes = [len(g["params"]) for g in saved_groups]
    sizes = [len(g["params"]) for g in groups]
    if saved_sizes != sizes:
        raise StateMismatchError(
            f"optimizer {index} ({type(optimizer).__name__}) has param groups of sizes {sizes}, the checkpoint's "
            f"has {saved_sizes}: the optimizer or the model changed since the save"
        )
    params = [p for g in groups for p in g["params"]]
    ids = [i for g in saved_groups for i in g["params"]]
    for param, saved_id in zip(params, ids):
        for name, value in state["state"].get(saved_id, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                raise StateMismatchError(
                    f"optimizer {index} state {name!r} for parameter #{saved_id} has shape {tuple(value.shape)}, "
                    f"the parameter has {tuple(param.shape)}: the model changed since the save"
                )


def _restore_callbacks(trainer: Trainer, states: dict[str, Any]) -> None:
    unused = set(states)
    for callback in trainer.callbacks:
        key = callback.state_key
        if key in states:
            callback.load_state_dict(states[key])
            unused.discard(key)
    if unused:
        warnings.warn(f"the checkpoint has state for callbacks this trainer does not have: {sorted(unused)} "
                      "(ignored)", stacklevel=3)
