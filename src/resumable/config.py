"""`TrainerConfig`: the Trainer's keyword arguments, validated before anything runs."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["TrainerConfig", "limited_batches", "DEFAULT_MAX_EPOCHS", "DEFAULT_PREEMPTION_SIGNALS"]

DEFAULT_MAX_EPOCHS = 1000  # as Lightning: used when neither max_epochs nor max_steps is given

_PRECISIONS = {
    "32": "32", "32-true": "32", 32: "32",
    "bf16-mixed": "bf16-mixed", "bf16": "bf16-mixed",
    "16-mixed": "16-mixed", "16": "16-mixed", 16: "16-mixed",
}
_ACCELERATORS = ("cpu", "cuda", "gpu", "auto")
# SIGUSR1 is what SLURM and many schedulers send ahead of a time limit; it is absent on Windows.
DEFAULT_PREEMPTION_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT")
                                   if hasattr(signal, name))
_UNCATCHABLE = {getattr(signal, name) for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name)}


@dataclass
class TrainerConfig:
    """How long to train, what to run when, and on what. See `Trainer` for each field."""

    max_epochs: int | None = None
    max_steps: int | None = -1
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    check_val_every_n_epoch: int | None = 1
    val_check_interval: int | float | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str = "norm"
    precision: str | int = "32"
    accelerator: str = "auto"
    seed: int | None = None
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    log_every_n_steps: int = 50
    default_root_dir: str | os.PathLike[str] = "runs"
    preemption_signals: tuple[int, ...] = DEFAULT_PREEMPTION_SIGNALS
    emergency_checkpoint: bool = True
    on_save_error: str = "raise"

    def __post_init__(self) -> None:
        self.max_steps = -1 if self.max_steps is None else self.max_steps
        _int_at_least("max_steps", self.max_steps, -1)
        if self.max_epochs is None:
            self.max_epochs = DEFAULT_MAX_EPOCHS if self.max_steps == -1 else -1
        _int_at_least("max_epochs", self.max_epochs, -1)
        if self.max_epochs == -1 and self.max_steps == -1:
            raise ConfigurationError(
                "max_epochs=-1 and max_steps=-1 would train forever; set max_epochs or max_steps to a bound"
            )
        for name in ("limit_train_batches", "limit_val_batches"):
            _check_limit(name, getattr(self, name))
        if self.check_val_every_n_epoch is not None:
            _int_at_least("check_val_every_n_epoch", self.check_val_every_n_epoch, 1)
        if self.val_check_interval is not None:
            v = self.val_check_interval
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 or (isinstance(v, float) and v > 1):
                raise ConfigurationError(
                    f"val_check_interval must be an int >= 1 (every n training batches) or a float in (0, 1] "
                    f"(a fraction of the epoch), got {v!r}"
                )
        _int_at_least("accumulate_grad_batches", self.accumulate_grad_batches, 1)
        if self.gradient_clip_val is not None and (
            isinstance(self.gradient_clip_val, bool) or not isinstance(self.gradient_clip_val, (int, float))
            or self.gradient_clip_val < 0
        ):
            raise ConfigurationError(f"gradient_clip_val must be a number >= 0 or None, got {self.gradient_clip_val!r}")
        if self.gradient_clip_algorithm not in ("norm", "value"):
            raise ConfigurationError(
                f"gradient_clip_algorithm must be 'norm' or 'value', got {self.gradient_clip_algorithm!r}"
            )
        if self.precision not in _PRECISIONS:
            raise ConfigurationError(
                f"unknown precision {self.precision!r}; use '32', 'bf16-mixed' or '16-mixed'"
            )
        self.precision = _PRECISIONS[self.precision]
        if self.accelerator not in _ACCELERATORS:
            raise ConfigurationError(f"unknown accelerator {self.accelerator!r}; use one of {list(_ACCELERATORS)}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            raise ConfigurationError(f"seed must be an int in [0, 2**63), got {self.seed!r}")
        _int_at_least("log_every_n_steps", self.log_every_n_steps, 1)
        self.preemption_signals = _signals(self.preemption_signals)
        if not isinstance(self.emergency_checkpoint, bool):
            raise ConfigurationError(f"emergency_checkpoint must be True or False, got {self.emergency_checkpoint!r}")
        if self.on_save_error not in ("raise", "warn"):
            raise ConfigurationError(
                f"on_save_error must be 'raise' (stop training) or 'warn' (warn and keep training), "
                f"got {self.on_save_error!r}"
            )


def _int_at_least(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")


def _signals(value: object) -> tuple[signal.Signals, ...]:
    if not isinstance(value, (tuple, list)):
        raise ConfigurationError(f"preemption_signals must be a tuple of signals (() for none), got {value!r}")
    valid = signal.valid_signals()
    for sig in value:
        if isinstance(sig, bool) or not isinstance(sig, int) or sig not in valid or sig in _UNCATCHABLE:
            raise ConfigurationError(
                f"preemption_signals: {sig!r} is not a signal that can be caught; give signal.SIGTERM, "
                "signal.SIGUSR1, signal.SIGINT, ... (SIGKILL and SIGSTOP cannot be caught)"
            )
    return tuple(signal.Signals(sig) for sig in dict.fromkeys(value))


def _check_limit(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
        isinstance(value, float) and value > 1
    ):
        raise ConfigurationError(
            f"{name} must be an int >= 0 (a number of batches) or a float in [0, 1] (a fraction), got {value!r}"
        )


def limited_batches(available: int | None, limit: int | float) -> int | float:
    """Batches per epoch after a `limit_*_batches` (an int count or a float fraction); `inf` when
    the loader has no length and no int limit applies."""
    if isinstance(limit, float):
        if available is None:
            if limit == 1.0:
                return float("inf")
            raise ConfigurationError("a fractional limit_*_batches needs a loader with a length; give an int")
        return int(available * limit)
    return limit if available is None else min(available, limit)
