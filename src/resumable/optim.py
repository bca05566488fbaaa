"""What `configure_optimizers` may return, parsed into optimizers and scheduler configs.

Accepted forms:

* one optimizer;
* a list/tuple of optimizers;
* `(optimizers, schedulers)`: two lists (schedulers may be bare or dicts as below);
* a dict `{"optimizer": opt, "lr_scheduler": sched_or_config}`, or a list of such dicts;

where a scheduler config is `{"scheduler": sched, "interval": "epoch"|"step", "frequency": n,
"monitor": "val_loss", "strict": True}`. `ReduceLROnPlateau` needs a `monitor` (default `val_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from .errors import ConfigurationError

__all__ = ["SchedulerConfig", "parse_optimizers"]

_SCHEDULER_KEYS = {"scheduler", "interval", "frequency", "monitor", "strict", "name"}


@dataclass
class SchedulerConfig:
    """One learning-rate scheduler and when it steps."""

    scheduler: Any
    interval: str = "epoch"
    frequency: int = 1
    monitor: str | None = None
    strict: bool = True

    def __post_init__(self) -> None:
        if self.interval not in ("epoch", "step"):
            raise ConfigurationError(f"lr_scheduler interval must be 'epoch' or 'step', got {self.interval!r}")
        if not isinstance(self.frequency, int) or self.frequency < 1:
            raise ConfigurationError(f"lr_scheduler frequency must be an int >= 1, got {self.frequency!r}")
        if not (hasattr(self.scheduler, "step") and hasattr(self.scheduler, "state_dict")):
            raise ConfigurationError(
                f"lr_scheduler must be a torch.optim.lr_scheduler object (with step() and state_dict()), "
                f"got {type(self.scheduler).__name__}"
            )
        if self.is_plateau and self.monitor is None:
            self.monitor = "val_loss"

    @property
    def is_plateau(self) -> bool:
        """True for schedulers that step on a monitored value (`ReduceLROnPlateau`)."""
        return isinstance(self.scheduler, ReduceLROnPlateau)


_FORMS = (
    "configure_optimizers must return one of: an optimizer; a list of optimizers; "
    "(list_of_optimizers, list_of_schedulers); {'optimizer': opt, 'lr_scheduler': sched_or_config}; "
    "or a list of such dicts"
)


def parse_optimizers(returned: Any) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    """Turn what `configure_optimizers` returned into `(optimizers, scheduler_configs)`, in order.

    Raises `ConfigurationError` naming what was found when the value has none of the accepted forms.
    """
    if isinstance(returned, Optimizer):
        return [returned], []
    if isinstance(returned, Mapping):
        return _parse_dicts([returned])
    if isinstance(returned, (list, tuple)):
        items = list(returned)
        if len(items) == 2 and isinstance(items[0], (list, tuple)):
            optimizers, schedulers = list(items[0]), items[1]
            schedulers = list(schedulers) if isinstance(schedulers, (list, tuple)) else [schedulers]
            _check_optimizers(optimizers)
            configs = [_scheduler_config(s) for s in schedulers]
            _check_schedulers_match(optimizers, configs)
            return optimizers, configs
        if items and all(isinstance(o, Mapping) for o in items):
            return _parse_dicts(items)
        if any(isinstance(o, Optimizer) for o in items):
            _check_optimizers(items)
            return items, []
    raise ConfigurationError(f"{_FORMS}; got {_describe(returned)}")


def _parse_dicts(items: list[Mapping[str, Any]]) -> tuple[list[Optimizer], list[SchedulerConfig]]:
    optimizers, configs = [], []
    for item in items:
        unknown = set(item) - {"optimizer", "lr_scheduler", "frequency"}
        if "optimizer" not in item or unknown:
            raise ConfigurationError(
                f"an optimizer dict needs the key 'optimizer' and may have 'lr_scheduler'; got keys {sorted(item)}"
            )
        optimizers.append(item["optimizer"])
        if item.get("lr_scheduler") is not None:
            configs.append(_scheduler_config(item["lr_scheduler"]))
    _check_optimizers(optimizers)
    _check_schedulers_match(optimizers, configs)
    return optimizers, configs


def _scheduler_config(value: Any) -> SchedulerConfig:
    if isinstance(value, Mapping):
        unknown = set(value) - _SCHEDULER_KEYS
        if "scheduler" not in value or unknown:
            raise ConfigurationError(
                f"an lr_scheduler dict needs 'scheduler' and may have {sorted(_SCHEDULER_KEYS - {'scheduler'})}; "
                f"got keys {sorted(value)}"
            )
        return SchedulerConfig(**{k: v for k, v in value.items() if k != "name"})
    return SchedulerConfig(scheduler=value)


def _check_optimizers(optimizers: list[Any]) -> None:
    for i, opt in enumerate(optimizers):
        if not isinstance(opt, Optimizer):
            raise ConfigurationError(f"{_FORMS}; optimizer {i} is {_describe(opt)}, not a torch.optim.Optimizer")
    if not optimizers:
        raise ConfigurationError(f"{_FORMS}; got no optimizer at all")


def _check_schedulers_match(optimizers: list[Optimizer], configs: list[SchedulerConfig]) -> None:
    for config in configs:
        opt = getattr(config.scheduler, "optimizer", None)
        if opt is not None and not any(opt is o for o in optimizers):
            raise ConfigurationError(
                f"{type(config.scheduler).__name__} drives an optimizer that configure_optimizers did not return; "
                "build each scheduler on one of the returned optimizers"
            )


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        inner = ", ".join(type(v).__name__ for v in value[:4])
        return f"a {type(value).__name__} of [{inner}{', ...' if len(value) > 4 else ''}]"
    return f"{type(value).__name__} {value!r}"[:200]


def optimizer_parameters(optimizer: Optimizer) -> list[torch.nn.Parameter]:
    """Every parameter an optimizer updates, in param-group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]
